"""The second-order expansion of g_hat, as docs/math.md states it (not the paper's Eq. 12).

The theory side (studies/second_order/theory.py, which the doc's numerical check also
uses) is built independently of the library from the unit-gradient map
u_i(theta) = grad L_i / ||grad L_i||: J_i v is a jax.jvp of u_i along v. It is checked
here against the hand-written NumPy gradients and central differences.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SoftmaxRegression
from jax.flatten_util import ravel_pytree

import nexus_optax as nx
from studies.second_order.theory import (
  SoftmaxSources,
  Theory,
  coefficient_errors,
  g_hat,
  pseudo_gradient,
)

GAMMAS = [0.04, 0.02, 0.01, 0.005]


@pytest.fixture(params=[3, 4], ids=["K=3", "K=4"])
def theory(x64, request):
  return Theory(SoftmaxRegression(num_sources=request.param, seed=1))


def _loglog_slope(xs, ys):
  return np.polyfit(np.log(xs), np.log(ys), 1)[0]


def test_fixed_order_residual_is_third_order(theory):
  order = list(range(theory.k))[::-1]
  units = {i: theory.unit(i) for i in range(theory.k)}
  first = sum(units[s] for s in order)
  second = sum(
    theory.jvp(s, sum((units[e] for e in order[:m]), jnp.zeros_like(theory.theta)))
    for m, s in enumerate(order)
  )
  residuals = [
    float(jnp.linalg.norm(g_hat(theory.problem, order, g) - (g * first - g**2 * second)))
    for g in GAMMAS
  ]
  assert abs(_loglog_slope(GAMMAS, residuals) - 3.0) < 0.3, residuals


def _coefficient_errors(theory, sequences, target):
  return coefficient_errors(theory, sequences, target, GAMMAS)


def test_permutation_average_couples_distinct_sources(theory):
  k = theory.k
  target = -0.5 * sum(theory.jvp(i, theory.unit(j)) for i in range(k) for j in range(k) if i != j)
  errors = _coefficient_errors(theory, list(itertools.permutations(range(k))), target)
  assert errors[-1] < 0.02, errors
  assert _loglog_slope(GAMMAS, errors) == pytest.approx(1.0, abs=0.2), errors


def test_iid_average_includes_self_terms(theory):
  k = theory.k
  target = (
    -(k - 1) / (2 * k) * sum(theory.jvp(i, theory.unit(j)) for i in range(k) for j in range(k))
  )
  errors = _coefficient_errors(theory, list(itertools.product(range(k), repeat=k)), target)
  assert errors[-1] < 0.02, errors
  assert _loglog_slope(GAMMAS, errors) == pytest.approx(1.0, abs=0.2), errors

  without_self = (
    -(k - 1)
    / (2 * k)
    * sum(theory.jvp(i, theory.unit(j)) for i in range(k) for j in range(k) if i != j)
  )
  misses = _coefficient_errors(theory, list(itertools.product(range(k), repeat=k)), without_self)
  assert misses[-1] > 0.1, "the self terms J_i u_i should matter"


def test_hessian_coupling_is_not_the_cosine_gradient(theory):
  k = theory.k
  coupling = sum(theory.jvp(i, theory.unit(j)) for i in range(k) for j in range(k) if i != j)
  autodiff = jax.grad(theory.cosine_sum)(theory.theta)

  # The autodiff gradient is itself checked against central differences.
  rng = np.random.default_rng(0)
  for _ in range(3):
    v = jnp.asarray(rng.normal(size=theory.theta.shape))
    h = 1e-6
    fd = (theory.cosine_sum(theory.theta + h * v) - theory.cosine_sum(theory.theta - h * v)) / (
      2 * h
    )
    assert float(autodiff @ v) == pytest.approx(float(fd), rel=1e-6, abs=1e-9)

  # Autodiff's gradient is sum_{i!=j} (J_i^T u_j + J_j^T u_i), with H_i P_i ...
  transposed = sum(theory.vjp(i, theory.unit(j)) for i in range(k) for j in range(k) if i != j)
  np.testing.assert_allclose(autodiff, 2 * transposed, rtol=1e-8, atol=1e-10)
  # ... while Eq. 9's expression, P_i H_i, gives 2 * coupling: a different direction here.
  gap = float(jnp.linalg.norm(2 * coupling - autodiff) / jnp.linalg.norm(autodiff))
  assert gap > 0.2, gap

  # So Eq. 12 read literally (-(K-1)/(4K) grad sum CosSim) does not describe g_hat.
  eq12 = -(k - 1) / (4 * k) * autodiff
  errors = _coefficient_errors(theory, list(itertools.product(range(k), repeat=k)), eq12)
  assert min(errors) > 0.3, errors


def test_consensus_estimate_tracks_exact_cosine(x64):
  problem = SoftmaxRegression(num_sources=3, seed=2)
  grads = [
    np.concatenate([v.ravel() for v in problem.numpy_grad(problem.params, i).values()])
    for i in range(3)
  ]
  units = [g / np.linalg.norm(g) for g in grads]
  exact = np.mean([units[i] @ units[j] for i in range(3) for j in range(3) if i != j])
  params = jax.tree.map(jnp.asarray, problem.params)
  errors = []
  for gamma in GAMMAS:
    _, state = pseudo_gradient(problem.loss, params, problem.microbatches([0, 1, 2]), gamma)
    errors.append(abs(float(nx.nexus_metrics(state)["consensus"]) - exact))
  assert errors[-1] < 0.01, errors
  assert _loglog_slope(GAMMAS, errors) == pytest.approx(1.0, abs=0.25), errors


def test_theory_matches_numpy_gradients_and_central_differences(theory):
  problem = theory.problem
  for i in range(theory.k):
    flat = ravel_pytree(problem.numpy_grad(problem.params, i))[0]
    np.testing.assert_allclose(theory.unit(i), flat / np.linalg.norm(flat), rtol=1e-12)
  v = np.random.default_rng(0).normal(size=theory.theta.shape)
  h = 1e-6
  for i in range(theory.k):
    fd = (theory.unit(i, theory.theta + h * v) - theory.unit(i, theory.theta - h * v)) / (2 * h)
    np.testing.assert_allclose(theory.jvp(i, jnp.asarray(v)), fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_the_checks_problem_is_the_tests_problem(x64, seed):
  ours = SoftmaxSources(num_sources=3, seed=seed)
  tests = SoftmaxRegression(num_sources=3, seed=seed)
  for key in ("w", "b"):
    np.testing.assert_array_equal(ours.params[key], tests.params[key])
  for a, b in zip(ours.xs + ours.ys, tests.xs + tests.ys):
    np.testing.assert_array_equal(a, b)
  batch = ours.microbatches([0, 1])
  assert float(ours.loss(ours.params, {k: v[0] for k, v in batch.items()})) == pytest.approx(
    tests.numpy_loss(tests.params, 0), rel=1e-12
  )
