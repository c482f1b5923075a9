"""The scan form against an independent float64 NumPy Algorithm 1."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import parameterized
from conftest import SoftmaxRegression, numpy_global_norm

import nexus_optax as nx


def _pseudo_gradient(problem, sequence, inner_lr, normalize="global", variant=lambda f: f):
  tx = nx.nexus(inner_lr, normalize=normalize)
  params = jax.tree.map(jnp.asarray, problem.params)

  @variant
  def update(params, microbatches):
    return tx.update(None, tx.init(params), params, loss_fn=problem.loss, microbatches=microbatches)

  return update(params, problem.microbatches(sequence))


class NexusReferenceTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(inner_lr=[0.01, 0.3], normalize=["global", "per_leaf"])
  def test_matches_numpy_algorithm_1(self, inner_lr, normalize):
    problem = SoftmaxRegression(num_sources=3)
    sequence = [2, 0, 1, 1, 0]  # a draw of Algorithm 1's s_m, K = 5
    with jax.enable_x64(True):
      g_hat, state = _pseudo_gradient(problem, sequence, inner_lr, normalize, self.variant)
      expected = problem.numpy_nexus(problem.params, sequence, inner_lr, normalize)
      chex.assert_trees_all_close(g_hat, expected, rtol=1e-10, atol=1e-13)
      chex.assert_trees_all_equal_dtypes(g_hat, problem.params)
      np.testing.assert_allclose(
        state.metrics.inner_loss,
        np.mean(
          [
            problem.numpy_loss(
              {
                k: problem.params[k]
                - problem.numpy_nexus(problem.params, sequence[:m], inner_lr, normalize)[k]
                for k in problem.params
              },
              s,
            )
            for m, s in enumerate(sequence)
          ]
        ),
        rtol=1e-6,
      )

  @chex.variants(with_jit=True, without_jit=True)
  def test_single_microbatch_is_normalized_gradient(self):
    problem = SoftmaxRegression(num_sources=1)
    with jax.enable_x64(True):
      g_hat, _ = _pseudo_gradient(problem, [0], 0.05, variant=self.variant)
      g = problem.numpy_grad(problem.params, 0)
      norm = numpy_global_norm(g)
      chex.assert_trees_all_close(g_hat, {k: 0.05 * v / norm for k, v in g.items()}, rtol=1e-12)

  @chex.variants(with_jit=True, without_jit=True)
  def test_chain_with_unit_sgd_follows_plain_nsgd(self):
    problem = SoftmaxRegression(num_sources=3)
    sequences = [[0, 1, 2], [2, 2, 0], [1, 0, 1], [0, 2, 1]]
    gamma = 0.1
    with jax.enable_x64(True):
      tx = optax.chain(nx.nexus(gamma), optax.sgd(1.0))
      params = jax.tree.map(jnp.asarray, problem.params)
      state = tx.init(params)

      @self.variant
      def step(params, state, microbatches):
        updates, state = tx.update(
          None, state, params, loss_fn=problem.loss, microbatches=microbatches
        )
        return optax.apply_updates(params, updates), state

      for sequence in sequences:
        params, state = step(params, state, problem.microbatches(sequence))

      theta = {k: v.copy() for k, v in problem.params.items()}
      for source in itertools.chain(*sequences):  # NSGD over the concatenated stream
        g = problem.numpy_grad(theta, source)
        norm = numpy_global_norm(g)
        theta = {k: theta[k] - gamma * g[k] / norm for k in theta}
      chex.assert_trees_all_close(params, theta, rtol=1e-10, atol=1e-12)


def test_inner_lr_schedule_is_indexed_by_outer_step(x64):
  problem = SoftmaxRegression(num_sources=2)
  schedule = lambda count: 0.1 / (1.0 + count)
  tx = optax.chain(nx.nexus(schedule), optax.sgd(1.0))
  params = jax.tree.map(jnp.asarray, problem.params)
  state = tx.init(params)
  expected = {k: v.copy() for k, v in problem.params.items()}
  for step in range(3):
    updates, state = tx.update(
      None, state, params, loss_fn=problem.loss, microbatches=problem.microbatches([0, 1])
    )
    params = optax.apply_updates(params, updates)
    g_hat = problem.numpy_nexus(expected, [0, 1], 0.1 / (1.0 + step))
    expected = {k: expected[k] - g_hat[k] for k in expected}
  chex.assert_trees_all_close(params, expected, rtol=1e-10)


def test_inject_hyperparams_controls_inner_lr(x64):
  problem = SoftmaxRegression(num_sources=2)
  params = jax.tree.map(jnp.asarray, problem.params)
  tx = optax.inject_hyperparams(nx.nexus)(inner_lr=0.05)
  state = tx.init(params)
  state.hyperparams["inner_lr"] = jnp.asarray(0.2)
  g_hat, state = jax.jit(
    lambda p, s, m: tx.update(None, s, p, loss_fn=problem.loss, microbatches=m)
  )(params, state, problem.microbatches([1, 0]))
  chex.assert_trees_all_close(g_hat, problem.numpy_nexus(problem.params, [1, 0], 0.2), rtol=1e-10)
  assert int(nx.nexus_metrics(state)["skipped_steps"]) == 0


def test_scan_carry_is_a_float32_displacement_for_bf16_params():
  params = {"w": jnp.ones((7, 3), jnp.bfloat16), "b": jnp.ones((3,), jnp.bfloat16)}
  loss_fn = lambda p, x: jnp.sum((x @ p["w"] + p["b"]).astype(jnp.float32) ** 2)
  microbatches = jnp.ones((4, 2, 7), jnp.bfloat16)
  tx = nx.nexus(0.01)
  jaxpr = jax.make_jaxpr(
    lambda p: tx.update(None, tx.init(p), p, loss_fn=loss_fn, microbatches=microbatches)
  )(params)
  (scan,) = [eqn for eqn in jaxpr.jaxpr.eqns if eqn.primitive.name == "scan"]
  # Outputs are the final carry, then the stacked per-step scalars [K] (loss, gradient
  # norm, unit norm, finite flag). jax 0.11 renamed scan's parameters, so read shapes only.
  outputs = [v.aval for v in scan.outvars]
  carry = [a for a in outputs if a.shape != (4,)]
  assert len(outputs) == len(carry) + 4
  assert sorted(a.shape for a in carry) == [(3,), (7, 3)]  # one buffer per leaf, no copy
  assert all(a.dtype == jnp.float32 for a in carry)
