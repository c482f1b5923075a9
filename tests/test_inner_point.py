"""Nexus with a loss that forms the inner point itself (``loss_takes_displacement=True``).

The Llama then builds each layer's ``theta - delta`` inside its layer scan instead of
Nexus materialising the whole inner point (benchmarks/RESULTS.md, "At the paper's
sizes"). By the chain rule, grad_theta L(theta - delta) = (grad L)(theta - delta), so
g_hat and the outer step must be those of the materialised inner point.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import SoftmaxRegression
from flax import nnx

import nexus_optax as nx
from models import Llama, get_preset, next_token_loss
from train.optimizers import build_optimizer
from train.presets import get_run_preset

GAMMA = 0.05


def _frozen_embedding_and_norms(params):
  def trains(path, _):
    names = [str(getattr(key, "key", "")) for key in path]
    return names[0] != "embedding" and not any("norm" in name for name in names)

  return jax.tree_util.tree_map_with_path(trains, params)


def _tiny(**overrides):
  config = get_preset("tiny", **overrides)
  build = lambda: Llama(config, rngs=nnx.Rngs(0))  # noqa: E731
  # One compiled initialiser: eagerly, each initialiser op compiles on its own.
  params = jax.jit(lambda: nnx.to_pure_dict(nnx.state(build(), nnx.Param)))()
  tokens = np.random.default_rng(1).integers(0, config.vocab_size, (3, 2, 17))
  return nnx.graphdef(nnx.eval_shape(build)), params, jnp.asarray(tokens, jnp.int32)


@functools.cache
def _outer_step(overrides: tuple, masked: bool, loss: str):
  """g_hat and the parameters after chain(nexus, adamw) on the tiny Llama, in one jit.

  ``loss`` is ``"displaced"`` (the model forms the inner point), ``"materialised"``
  (nexus forms it) or ``"outer_point"`` (a wrong loss that ignores the displacement).
  """
  graphdef, params, tokens = _tiny(**dict(overrides))
  mask = _frozen_embedding_and_norms(params) if masked else None
  loss_fn = {
    "displaced": lambda p, batch, d: next_token_loss(nnx.merge(graphdef, p), batch, d),
    "materialised": lambda p, batch: next_token_loss(nnx.merge(graphdef, p), batch),
    "outer_point": lambda p, batch, d: next_token_loss(nnx.merge(graphdef, p), batch),
  }[loss]
  nexus = nx.nexus(GAMMA, mask=mask, loss_takes_displacement=loss != "materialised")
  outer = optax.adamw(1e-3, weight_decay=0.1)
  if mask is not None:
    outer = optax.masked(outer, mask)

  @jax.jit
  def step(params, tokens):
    g_hat, _ = nexus.update(None, nexus.init(params), params, loss_fn=loss_fn, microbatches=tokens)
    updates, _ = outer.update(g_hat, outer.init(params), params)
    return g_hat, optax.apply_updates(params, updates)

  return step(params, tokens)


def _assert_trees_close(got, expected, rtol):
  flat_expected = jax.tree.leaves(expected)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), flat_expected, strict=True):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    atol = rtol * float(np.max(np.abs(b)))
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


SCAN_REMAT = (("remat", "full"),)


@pytest.mark.parametrize(
  "overrides, masked",
  [
    (SCAN_REMAT, False),
    ((("scan_layers", False),), False),
    (SCAN_REMAT, True),
    ((("scan_layers", False), ("tie_embeddings", True)), True),
  ],
  ids=["scan-remat", "unrolled", "scan-masked", "unrolled-tied-masked"],
)
def test_the_loss_forming_the_inner_point_gives_the_same_step(overrides, masked):
  g_hat, stepped = _outer_step(overrides, masked, "displaced")
  expected_g_hat, expected = _outer_step(overrides, masked, "materialised")
  _assert_trees_close(g_hat, expected_g_hat, rtol=1e-5)
  _assert_trees_close(stepped, expected, rtol=1e-5)
  if masked:
    assert float(jnp.max(jnp.abs(g_hat["embedding"]))) == 0.0
    assert float(jnp.max(jnp.abs(g_hat["blocks"]["mlp"]["up"]))) > 0.0


def test_a_loss_that_ignores_the_displacement_is_caught():
  # The check above would pass vacuously if the inner steps changed no gradient: a loss
  # evaluated at the outer point instead gives a g_hat far outside its tolerance.
  wrong, _ = _outer_step(SCAN_REMAT, False, "outer_point")
  right, _ = _outer_step(SCAN_REMAT, False, "displaced")
  relative = optax.tree.norm(jax.tree.map(jnp.subtract, wrong, right)) / optax.tree.norm(right)
  assert relative > 1e-3, relative


def test_the_bfloat16_model_at_a_displacement_is_the_model_at_the_displaced_point():
  graphdef, params, tokens = _tiny(param_dtype="bfloat16", compute_dtype="bfloat16")
  rng = np.random.default_rng(3)
  delta = jax.tree.map(
    lambda p: np.float32(0.01) * rng.standard_normal(p.shape, np.float32), params
  )

  def at_displaced_point(p, d):
    moved = jax.tree.map(lambda leaf, step: (leaf - step).astype(leaf.dtype), p, d)
    return next_token_loss(nnx.merge(graphdef, moved), tokens[0])

  def with_displacement(p, d):
    return next_token_loss(nnx.merge(graphdef, p), tokens[0], d)

  expected = jax.jit(jax.value_and_grad(at_displaced_point))(params, delta)
  got = jax.jit(jax.value_and_grad(with_displacement))(params, delta)
  # Each weight is rounded to bfloat16 the same way, but XLA may keep excess precision
  # across bfloat16 converts differently in the two programs: hold it to bfloat16's spacing.
  _assert_trees_close(got, expected, rtol=1e-2)


def test_float64_inner_loop_matches_numpy_algorithm_1(x64):
  problem = SoftmaxRegression(num_sources=3)
  sequence = [2, 0, 1, 1]

  def displaced_loss(params, batch, displacement):
    return problem.loss(jax.tree.map(jnp.subtract, params, displacement), batch)

  params = jax.tree.map(jnp.asarray, problem.params)
  result = jax.jit(
    lambda p, b: nx.inner_loop(displaced_loss, p, b, 0.3, loss_takes_displacement=True)
  )(params, problem.microbatches(sequence))
  chex.assert_trees_all_close(
    result.displacement, problem.numpy_nexus(problem.params, sequence, 0.3), rtol=1e-10
  )
  # The losses are reported in float32.
  np.testing.assert_allclose(
    result.losses[0], problem.numpy_loss(problem.params, sequence[0]), rtol=1e-7
  )


def test_the_displacement_is_float32_and_zero_on_frozen_leaves():
  params = {"w": jnp.ones(3, jnp.bfloat16), "frozen": jnp.ones(2, jnp.bfloat16)}
  seen = []

  def loss_fn(p, x, d):
    seen.append(jax.tree.map(lambda leaf: leaf.dtype, d))
    return jnp.sum(((p["w"] - d["w"]).astype(p["w"].dtype) * x) ** 2) + jnp.sum(d["frozen"])

  result = nx.inner_loop(
    loss_fn,
    params,
    jnp.ones((2, 3)),
    0.1,
    mask={"w": True, "frozen": False},
    loss_takes_displacement=True,
  )
  assert all(dtypes == {"w": jnp.float32, "frozen": jnp.float32} for dtypes in seen)
  np.testing.assert_allclose(result.displacement["w"], np.full(3, 0.2 / np.sqrt(3)), rtol=1e-2)
  assert not np.any(result.displacement["frozen"])


def test_the_training_optimizer_hands_nexus_a_displacement():
  # train.build's loss then forms the inner point inside the model's layer scan.
  config = get_run_preset("tiny", optimizer="nexus")
  tx = build_optimizer(config)
  params = {"w": jnp.ones(3)}
  displacements = []

  def loss_fn(p, x, displacement=None):
    displacements.append(displacement)
    return jnp.sum((p["w"] - displacement["w"] - x) ** 2)

  tx.update(None, tx.init(params), params, loss_fn=loss_fn, microbatches=jnp.zeros((2, 3)))
  assert displacements and all(d is not None for d in displacements)


@pytest.mark.parametrize(
  "build",
  [
    lambda: nx.nexus(0.01, inner_rounding="stochastic", loss_takes_displacement=True),
    lambda: nx.inner_loop(
      lambda p, x, d: jnp.sum((p - d - x) ** 2),
      jnp.zeros(2, jnp.bfloat16),
      jnp.ones((2, 2)),
      0.1,
      inner_rounding="stochastic",
      rounding_key=jax.random.key(0),
      loss_takes_displacement=True,
    ),
  ],
  ids=["nexus", "inner_loop"],
)
def test_stochastic_rounding_with_a_displacement_taking_loss_is_refused(build):
  with pytest.raises(ValueError, match="use inner_rounding='nearest'"):
    build()


def test_a_two_argument_loss_with_the_flag_is_refused():
  with pytest.raises(ValueError, match=r"loss_fn\(params, microbatch, displacement\)"):
    nx.inner_loop(
      lambda p, x: jnp.sum((p - x) ** 2),
      jnp.zeros(2),
      jnp.ones((2, 2)),
      0.1,
      loss_takes_displacement=True,
    )


def test_a_displacement_missing_part_of_the_model_is_refused():
  config = get_preset("tiny")
  abstract = nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0)))
  displacement = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
  del displacement["blocks"]
  with pytest.raises(ValueError, match="structure of its parameters"):
    jax.eval_shape(
      lambda d: next_token_loss(abstract, jnp.zeros((1, 9), jnp.int32), d), displacement
    )
