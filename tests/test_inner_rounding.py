"""Stochastic rounding of the inner point: what nearest rounding of bfloat16 parameters loses
of the second-order term, and what stochastic rounding keeps, against float64 NumPy.

With |theta| ~ 1 and N = 528 weights, an inner step of gamma = 0.01 moves each weight
by about gamma / sqrt(N) = 4e-4, a twentieth of bfloat16's spacing (2^-7) there.
"""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from conftest import SoftmaxRegression, numpy_global_norm

import nexus_optax as nx
from nexus_optax._inner_step import stochastic_round

# Rounding is where a device's bf16 arithmetic could differ from the CPU's.
pytestmark = pytest.mark.accelerator

SEQUENCE = [0, 1, 2, 1]
GAMMA = 0.01


def _flat(tree):
  return np.concatenate([np.asarray(tree[k], np.float64).ravel() for k in sorted(tree)])


def _problem():
  problem = SoftmaxRegression(num_sources=3, n=64, d=32, c=16, seed=3)
  params = {k: jnp.asarray(v + 1.0, jnp.bfloat16) for k, v in problem.params.items()}
  start = {k: np.asarray(v, np.float64) for k, v in params.items()}
  return problem, params, start


def _numpy_first_order(problem, start):
  total = {k: np.zeros_like(v) for k, v in start.items()}
  for source in SEQUENCE:
    g = problem.numpy_grad(start, source)
    norm = numpy_global_norm(g)
    total = {k: total[k] + GAMMA * g[k] / norm for k in total}
  return _flat(total)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_stochastic_round_is_unbiased_between_the_two_neighbours(dtype):
  values = np.array([1.0 + 2**-10, -0.3, 0.02 + 1e-6, 1.5, 3e-3], np.float32)
  keys = jax.random.split(jax.random.key(0), 4000)
  rounded = jax.vmap(lambda key: stochastic_round(jnp.asarray(values), dtype, key))(keys)
  rounded = np.asarray(rounded.astype(jnp.float32), np.float64)
  np_dtype = {jnp.bfloat16: ml_dtypes.bfloat16, jnp.float16: np.float16}[dtype]
  for column, x in enumerate(values.astype(np.float64)):
    below = float(np.asarray(x, np_dtype).astype(np.float64))
    below = (
      below
      if below <= x
      else float(np.nextafter(np.asarray(below, np_dtype), np.asarray(-np.inf, np_dtype)))
    )
    above = (
      below
      if below == x
      else float(np.nextafter(np.asarray(below, np_dtype), np.asarray(np.inf, np_dtype)))
    )
    assert set(np.unique(rounded[:, column])) <= {below, above}, x
    p_above = 0.0 if above == below else (x - below) / (above - below)
    # Mean within 4 binomial standard deviations of x.
    tolerance = 4 * (above - below) * np.sqrt(p_above * (1 - p_above) / len(keys)) + 1e-12
    assert abs(rounded[:, column].mean() - x) <= tolerance, x


def test_bfloat16_bit_rounding_takes_the_far_neighbour_with_exactly_its_probability(monkeypatch):
  """Every one of the 65,536 noise values, for each x: the count that lands on the far
  bfloat16 neighbour is |x - below| / spacing * 2^16, the law of the float formula."""
  every_noise = np.arange(2**16, dtype=np.uint16)
  monkeypatch.setattr(
    jax.random,
    "bits",
    lambda key, shape, dtype, out_sharding=None: jnp.broadcast_to(every_noise, shape),
  )
  rng = np.random.default_rng(0)
  bf16 = ml_dtypes.bfloat16
  values = np.concatenate(
    [
      np.array(
        [0.0, -0.0, 1 + 2**-10, -0.3, 3e-39, -(2**-130), 1.9921875 + 2**-9, 3.3e38], np.float32
      ),
      (rng.standard_normal(24) * np.exp(rng.uniform(-30, 30, 24))).astype(np.float32),
    ]
  )
  rounded = stochastic_round(
    jnp.asarray(np.broadcast_to(values[:, None], (len(values), 2**16))),
    jnp.bfloat16,
    jax.random.key(0, impl="rbg"),
  )
  rounded = np.asarray(rounded.astype(jnp.float32), np.float64)
  for x, row in zip(values.astype(np.float64), rounded):
    # The neighbours from ml_dtypes, the probability in float64: nothing of the library's.
    toward_zero = float(
      np.asarray(np.float32(x).view(np.uint32) & 0xFFFF0000, np.uint32).view(np.float32)
    )
    away = float(
      np.nextafter(np.asarray(toward_zero, bf16), np.asarray(np.copysign(np.inf, x), bf16))
    )
    far_count = int(np.sum(row == away)) if toward_zero != x else 0
    assert set(np.unique(row)) <= {toward_zero, away}, x
    assert far_count == round(abs(x - toward_zero) / abs(away - toward_zero) * 2**16), x
    assert row.mean() == pytest.approx(x, rel=1e-12, abs=1e-45)  # unbiased, exactly


def test_bfloat16_bit_rounding_leaves_non_finite_and_overflowing_values_to_nearest():
  specials = np.array([np.inf, -np.inf, np.nan, 3.3990e38, -3.4e38], np.float32)
  nan_payload_low = np.array([0x7F800001], np.uint32).view(np.float32)  # inf if truncated
  values = jnp.asarray(np.concatenate([specials, nan_payload_low]))
  keys = jax.random.split(jax.random.key(3, impl="rbg"), 256)
  rounded = jax.vmap(lambda key: stochastic_round(values, jnp.bfloat16, key))(keys)
  nearest = np.asarray(values.astype(jnp.bfloat16).astype(jnp.float32))
  rounded = np.asarray(rounded.astype(jnp.float32))
  np.testing.assert_array_equal(rounded, np.broadcast_to(nearest, rounded.shape))
  assert np.isnan(rounded[:, 2]).all() and np.isnan(rounded[:, 5]).all()


def test_nearest_rounding_erases_the_second_order_term_and_stochastic_rounding_keeps_it():
  problem, params, start = _problem()
  microbatches = problem.microbatches(SEQUENCE, np.float32)
  first_order = _numpy_first_order(problem, start)
  second_order = _flat(problem.numpy_nexus(start, SEQUENCE, GAMMA)) - first_order
  assert np.linalg.norm(second_order) > 1e-3 * np.linalg.norm(first_order)

  def survival(g_hat):
    s = g_hat - first_order
    return float(s @ second_order / (second_order @ second_order))

  nearest = nx.inner_loop(problem.loss, params, microbatches, GAMMA).displacement
  assert survival(_flat(nearest)) < 0.4  # the steps that cross half a spacing survive

  keys = jax.random.split(jax.random.key(1), 256)
  stochastic = jax.jit(
    jax.vmap(
      lambda key: (
        nx.inner_loop(
          problem.loss, params, microbatches, GAMMA, inner_rounding="stochastic", rounding_key=key
        ).displacement
      )
    )
  )(keys)
  mean = _flat(jax.tree.map(lambda x: np.asarray(x, np.float64).mean(axis=0), stochastic))
  assert survival(mean) == pytest.approx(1.0, abs=0.15)
  # Float32 parameters are never rounded: stochastic and nearest agree bit for bit.
  params32 = jax.tree.map(lambda x: x.astype(jnp.float32), params)
  exact = nx.inner_loop(problem.loss, params32, microbatches, GAMMA).displacement
  also_exact = nx.inner_loop(
    problem.loss, params32, microbatches, GAMMA, inner_rounding="stochastic", rounding_key=keys[0]
  ).displacement
  jax.tree.map(np.testing.assert_array_equal, exact, also_exact)


def test_nexus_rounds_each_outer_step_with_its_own_reproducible_key():
  problem, params, _ = _problem()
  microbatches = problem.microbatches(SEQUENCE, np.float32)
  tx = nx.nexus(GAMMA, inner_rounding="stochastic", rounding_seed=7)
  state = tx.init(params)
  update = jax.jit(
    lambda s: tx.update(None, s, params, loss_fn=problem.loss, microbatches=microbatches)
  )
  first, next_state = update(state)
  again, _ = update(state)  # a resumed run at the same step count rounds the same way
  later, _ = update(next_state)
  jax.tree.map(np.testing.assert_array_equal, first, again)
  assert not all(
    np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(later))
  )
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(first))


def test_bad_inner_rounding_and_missing_key_are_one_line_errors():
  problem, params, _ = _problem()
  microbatches = problem.microbatches(SEQUENCE, np.float32)
  with pytest.raises(ValueError, match="'nearest'.*'stochastic'"):
    nx.nexus(GAMMA, inner_rounding="round")
  with pytest.raises(ValueError, match="needs rounding_key"):
    nx.inner_loop(problem.loss, params, microbatches, GAMMA, inner_rounding="stochastic")


def test_an_rbg_key_draws_the_rounding_noise_without_parameter_sized_temporaries():
  # A Llama's shape of tree in bfloat16 (a table, layer-stacked matrices under a scan, a
  # norm), with a loss small enough that the three compiles take seconds, not tens of them.
  shapes = {"embedding": (512, 64), "blocks": {"up": (4, 64, 256), "down": (4, 256, 64)}}
  shapes["norm"] = (64,)
  params = jax.tree.map(
    lambda shape: jax.ShapeDtypeStruct(shape, jnp.bfloat16),
    shapes,
    is_leaf=lambda node: isinstance(node, tuple),
  )
  tokens = jax.ShapeDtypeStruct((4, 2, 33), jnp.int32)
  param_bytes = 4 * sum(leaf.size for leaf in jax.tree.leaves(params))

  def loss_fn(p, batch):
    def layer(h, weights):
      return h + jax.nn.silu(h @ weights["up"]) @ weights["down"], None

    h, _ = jax.lax.scan(layer, p["embedding"][batch], p["blocks"])
    return jnp.mean((h * p["norm"]).astype(jnp.float32) ** 2)

  def temp_bytes(**rounding):
    def displacement(p, t):
      return nx.inner_loop(loss_fn, p, t, GAMMA, **rounding).displacement

    compiled = jax.jit(displacement).lower(params, tokens).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  nearest = temp_bytes()
  rbg = temp_bytes(inner_rounding="stochastic", rounding_key=jax.random.key(0, impl="rbg"))
  threefry = temp_bytes(inner_rounding="stochastic", rounding_key=jax.random.key(0))
  assert rbg - nearest < 0.1 * param_bytes
  assert threefry - nearest > param_bytes
