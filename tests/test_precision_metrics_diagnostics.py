"""bf16 parameters, the metrics in any wrapper, and the gradient cosine matrix."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import SoftmaxRegression, numpy_global_norm

import nexus_optax as nx


def _flat(tree):
  return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


@pytest.mark.accelerator
@pytest.mark.parametrize("gamma", [0.01, 0.001])
def test_bf16_params_keep_dtype_and_avoid_the_cancellation_of_differencing(gamma):
  problem = SoftmaxRegression(num_sources=3, n=64, d=32, c=16, seed=3)
  sequence = [0, 1, 2, 1]
  # |theta| ~ 1, so the per-element inner steps (~ gamma / sqrt(N)) sit below bf16 spacing.
  params_bf16 = jax.tree.map(lambda v: jnp.asarray(v + 1.0, jnp.bfloat16), problem.params)
  exact_start = jax.tree.map(lambda v: np.asarray(v, np.float64), params_bf16)
  expected = _flat(problem.numpy_nexus(exact_start, sequence, gamma))

  tx = nx.nexus(gamma)
  g_hat, _ = jax.jit(
    lambda p, m: tx.update(None, tx.init(p), p, loss_fn=problem.loss, microbatches=m)
  )(params_bf16, problem.microbatches(sequence, np.float32))
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(g_hat))
  error = np.linalg.norm(_flat(g_hat) - expected) / np.linalg.norm(expected)
  assert error < 1e-2, error

  # What carrying a bf16 inner model and differencing (theta_0 - theta_K) would give.
  theta = exact_start
  for source in sequence:
    g = problem.numpy_grad(theta, source)
    norm = numpy_global_norm(g)
    theta = {
      k: np.asarray(jnp.asarray(theta[k] - gamma * g[k] / norm, jnp.bfloat16), np.float64)
      for k in theta
    }
  naive = _flat({k: exact_start[k] - theta[k] for k in theta})
  assert np.linalg.norm(naive - expected) / np.linalg.norm(expected) > 0.5


def test_metrics_match_numpy_inside_any_wrapper(x64):
  problem = SoftmaxRegression(num_sources=3, seed=4)
  sequence = [0, 1, 2]
  gamma = 0.02
  params = jax.tree.map(jnp.asarray, problem.params)

  theta = {k: v.copy() for k, v in problem.params.items()}
  losses, norms = [], []
  for source in sequence:
    g = problem.numpy_grad(theta, source)
    losses.append(problem.numpy_loss(theta, source))
    norms.append(numpy_global_norm(g))
    theta = {k: theta[k] - gamma * g[k] / norms[-1] for k in theta}
  g_hat = _flat(problem.numpy_nexus(problem.params, sequence, gamma))
  expected_consensus = (g_hat @ g_hat / gamma**2 - 3) / 6

  wrappers = {
    "chain": optax.chain(nx.nexus(gamma), optax.clip_by_global_norm(1.0), optax.adamw(1e-3)),
    "inject_hyperparams": optax.inject_hyperparams(nx.nexus)(inner_lr=gamma),
    "multisteps_of_chain": optax.MultiSteps(optax.chain(nx.nexus(gamma), optax.sgd(1.0)), 1),
  }
  ignored = optax.tree.zeros_like(params)  # MultiSteps needs an updates tree; Nexus ignores it
  for name, tx in wrappers.items():
    _, state = tx.update(
      ignored,
      tx.init(params),
      params,
      loss_fn=problem.loss,
      microbatches=problem.microbatches(sequence),
    )
    metrics = nx.nexus_metrics(state)
    np.testing.assert_allclose(metrics["inner_loss"], np.mean(losses), rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(metrics["inner_grad_norm"], np.mean(norms), rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(
      metrics["pseudo_grad_norm"], np.linalg.norm(g_hat), rtol=1e-6, err_msg=name
    )
    np.testing.assert_allclose(metrics["consensus"], expected_consensus, rtol=1e-4, err_msg=name)
    assert int(metrics["skipped_steps"]) == 0
    assert all(v.dtype in (jnp.float32, jnp.int32) for v in metrics.values())


def test_single_step_consensus_is_undefined():
  tx = nx.nexus(0.1)
  params = jnp.ones(2)
  _, state = tx.update(
    None,
    tx.init(params),
    params,
    loss_fn=lambda p, x: jnp.sum((p - x) ** 2),
    microbatches=jnp.zeros((1, 2)),
  )
  assert np.isnan(nx.nexus_metrics(state)["consensus"])


def _numpy_cosines(problem):
  grads = [_flat(problem.numpy_grad(problem.params, i)) for i in range(len(problem.xs))]
  return np.array([[a @ b / np.linalg.norm(a) / np.linalg.norm(b) for b in grads] for a in grads])


def test_gradient_cosine_matrix_matches_numpy_for_lists_and_stacks():
  problem = SoftmaxRegression(num_sources=4, seed=5)
  expected = _numpy_cosines(problem)
  assert np.ptp(expected[~np.eye(4, dtype=bool)]) > 0.05  # the sources do disagree
  params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), problem.params)
  batches = [
    {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y, jnp.float32)}
    for x, y in zip(problem.xs, problem.ys)
  ]
  from_list = nx.diagnostics.gradient_cosine_matrix(problem.loss, params, batches)
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *batches)
  from_stack = jax.jit(lambda p, b: nx.diagnostics.gradient_cosine_matrix(problem.loss, p, b))(
    params, stacked
  )
  np.testing.assert_allclose(from_list, expected, atol=2e-6)
  np.testing.assert_allclose(from_stack, expected, atol=2e-6)


def test_gradient_cosine_matrix_with_aux_and_zero_gradient():
  loss_fn = lambda w, t: (jnp.sum(jnp.where(t[0] > 0, (w - t) ** 2, 0.0)), t)
  targets = jnp.array([[1.0, 2.0], [-1.0, 0.0]])  # the second source has no gradient
  cosines = nx.diagnostics.gradient_cosine_matrix(loss_fn, jnp.zeros(2), targets, has_aux=True)
  np.testing.assert_array_equal(cosines, [[1.0, 0.0], [0.0, 0.0]])
  with pytest.raises(ValueError, match="one batch per data source"):
    nx.diagnostics.gradient_cosine_matrix(loss_fn, jnp.zeros(2), [], has_aux=True)
