"""Frozen parameters (mask=), non-float leaves, optax.masked, and donation of the state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nexus_optax as nx

GAMMA = 0.05
ORDER = [0, 2, 1]


def numpy_masked_nexus(problem, params, order, gamma, trainable):
  """Algorithm 1 in float64 NumPy on the trainable leaves only; frozen leaves stay put."""
  theta = {k: np.array(v, np.float64) for k, v in params.items()}
  start = {k: v.copy() for k, v in theta.items()}
  for source in order:
    g = problem.numpy_grad(theta, source)
    norm = np.sqrt(sum(np.sum(g[k] ** 2) for k in trainable))
    for k in trainable:
      theta[k] = theta[k] - gamma * g[k] / norm
  return {k: start[k] - theta[k] for k in theta}


def as_jax(tree):
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


@pytest.mark.parametrize(
  "mask", [{"w": True, "b": False}, lambda p: {"w": True, "b": False}], ids=["pytree", "callable"]
)
def test_masked_nexus_matches_numpy_algorithm_1_over_the_trainable_leaves(problem, mask):
  params = as_jax(problem.params)
  want = numpy_masked_nexus(problem, problem.params, ORDER, GAMMA, trainable=["w"])
  tx = nx.nexus(GAMMA, mask=mask)
  g_hat, state = jax.jit(
    lambda p, s, m: tx.update(None, s, p, loss_fn=problem.loss, microbatches=m)
  )(params, tx.init(params), as_jax(problem.microbatches(ORDER)))
  np.testing.assert_allclose(g_hat["w"], want["w"], rtol=1e-5, atol=1e-7)
  assert np.all(np.asarray(g_hat["b"]) == 0.0)
  # The norm runs over w alone: the full-tree NumPy answer differs measurably.
  full = problem.numpy_nexus(problem.params, ORDER, GAMMA)
  assert np.max(np.abs(full["w"] - want["w"])) > 1e-4
  assert int(nx.nexus_metrics(state)["skipped_steps"]) == 0


def test_masked_multisteps_matches_numpy_algorithm_1_over_the_trainable_leaves(problem):
  params = as_jax(problem.params)
  want = numpy_masked_nexus(problem, problem.params, ORDER, GAMMA, trainable=["w"])
  tx = nx.nexus_multisteps(
    optax.sgd(1.0), every_k=len(ORDER), inner_lr=GAMMA, mask={"w": True, "b": False}
  )
  state = tx.init(params)
  current = params
  for source in ORDER:
    batch = as_jax({"x": problem.xs[source], "y": problem.ys[source]})
    grads = jax.grad(problem.loss)(current, batch)
    updates, state = tx.update(grads, state, current)
    current = optax.apply_updates(current, updates)
  np.testing.assert_allclose(params["w"] - current["w"], want["w"], rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(current["b"], params["b"])


def train_three_outer_steps(problem, tx, form):
  params = as_jax(problem.params)
  state = tx.init(params)
  for _ in range(3):
    if form == "scan":
      updates, state = tx.update(
        None, state, params, loss_fn=problem.loss, microbatches=as_jax(problem.microbatches(ORDER))
      )
      params = optax.apply_updates(params, updates)
    else:
      for source in ORDER:
        batch = as_jax({"x": problem.xs[source], "y": problem.ys[source]})
        updates, state = tx.update(jax.grad(problem.loss)(params, batch), state, params)
        params = optax.apply_updates(params, updates)
  return params


def test_frozen_leaves_are_bit_identical_after_training(problem):
  mask = {"w": True, "b": False}
  labels = {"w": "train", "b": "frozen"}
  adamw = lambda: optax.adamw(0.05, weight_decay=0.2)  # noqa: E731
  optimizers = {
    "scan, masked adamw": (
      optax.chain(nx.nexus(GAMMA, mask=mask), optax.masked(adamw(), mask)),
      "scan",
    ),
    "scan, multi_transform": (
      optax.chain(
        nx.nexus(GAMMA, mask=mask),
        optax.multi_transform({"train": adamw(), "frozen": optax.set_to_zero()}, labels),
      ),
      "scan",
    ),
    "multisteps": (
      nx.nexus_multisteps(adamw(), every_k=3, inner_lr=GAMMA, mask=mask),
      "multisteps",
    ),
  }
  start = as_jax(problem.params)
  for name, (tx, form) in optimizers.items():
    trained = train_three_outer_steps(problem, tx, form)
    assert np.asarray(trained["b"]).tobytes() == np.asarray(start["b"]).tobytes(), name
    assert np.max(np.abs(np.asarray(trained["w"]) - np.asarray(start["w"]))) > 1e-2, name
  # Without the outer mask, AdamW's weight decay moves the frozen leaf: the mask is needed.
  unmasked = train_three_outer_steps(
    problem, optax.chain(nx.nexus(GAMMA, mask=mask), adamw()), "scan"
  )
  assert not np.array_equal(unmasked["b"], start["b"])


def test_a_prefix_mask_freezes_a_whole_subtree():
  params = {"body": {"w": jnp.ones(3), "v": jnp.ones(2)}, "head": jnp.ones(2)}
  loss_fn = lambda p, x: jnp.sum(p["head"] * x) + jnp.sum(p["body"]["w"]) ** 2  # noqa: E731
  result = nx.inner_loop(loss_fn, params, jnp.ones((2, 2)), 0.1, mask={"body": False, "head": True})
  np.testing.assert_array_equal(result.displacement["body"]["w"], np.zeros(3))
  # Two unit steps along head's own gradient (1, 1) / sqrt(2).
  np.testing.assert_allclose(result.displacement["head"], 0.2 / np.sqrt(2) * np.ones(2), rtol=1e-6)


def test_a_non_float_leaf_is_refused_by_path_unless_masked():
  params = {"w": jnp.zeros(3), "stats": {"count": jnp.zeros([], jnp.int32)}}
  loss_fn = lambda p, x: jnp.sum((p["w"] - x) ** 2)  # noqa: E731
  microbatches = jnp.ones((2, 3))
  for tx in (nx.nexus(0.1), nx.nexus_multisteps(optax.sgd(0.1), every_k=2)):
    with pytest.raises(ValueError, match=r"\['stats'\]\['count'\] has dtype int32.*mask="):
      tx.init(params)
  with pytest.raises(ValueError, match=r"\['stats'\]\['count'\] has dtype int32.*mask="):
    nx.inner_loop(loss_fn, params, microbatches, 0.1)
  mask = lambda p: jax.tree.map(lambda x: jnp.issubdtype(x.dtype, jnp.floating), p)  # noqa: E731
  tx = optax.chain(nx.nexus(0.1, mask=mask), optax.masked(optax.sgd(1.0), mask))
  updates, _ = tx.update(None, tx.init(params), params, loss_fn=loss_fn, microbatches=microbatches)
  assert updates["stats"]["count"].dtype == jnp.int32 and int(updates["stats"]["count"]) == 0
  # SGD(1) steps by -g_hat: two unit steps of 0.1 towards x = (1, 1, 1).
  np.testing.assert_allclose(updates["w"], 0.2 / np.sqrt(3) * np.ones(3), rtol=1e-6)


def test_optax_masked_around_nexus_points_to_mask():
  params = {"w": jnp.ones(3), "b": jnp.ones(2)}
  wrapped = optax.masked(nx.nexus(0.1), {"w": True, "b": False})
  with pytest.raises(ValueError, match=r"optax.masked.*nexus\(\.\.\., mask=mask\)"):
    wrapped.init(params)


def test_bad_masks_are_refused_when_built_or_applied():
  with pytest.raises(ValueError, match="pytree of Python bools"):
    nx.nexus(0.1, mask={"w": "yes"})
  params = {"w": jnp.ones(3), "b": jnp.ones(2)}
  with pytest.raises(ValueError, match="does not fit the parameters"):
    nx.nexus(0.1, mask={"w": True, "c": False}).init(params)
  with pytest.raises(ValueError, match="freezes every parameter"):
    nx.nexus_multisteps(optax.sgd(0.1), every_k=2, mask={"w": False, "b": False}).init(params)


def test_multisteps_state_can_be_donated_with_the_params():
  tx = nx.nexus_multisteps(optax.adamw(0.1), every_k=2, inner_lr=0.1)
  loss_fn = lambda p, x: jnp.sum((p["w"] - x) ** 2)  # noqa: E731

  def step(params, state, x):
    updates, state = tx.update(jax.grad(loss_fn)(params, x), state, params)
    return optax.apply_updates(params, updates), state

  def train(step_fn):
    params = {"w": jnp.arange(4.0)}
    state = tx.init(params)  # eager: outer_params must not alias params
    for x in (jnp.ones(4), 2 * jnp.ones(4), jnp.ones(4), 3 * jnp.ones(4)):
      params, state = step_fn(params, state, x)
    return params

  kept = train(jax.jit(step))
  donated = train(jax.jit(step, donate_argnums=(0, 1)))
  np.testing.assert_array_equal(donated["w"], kept["w"])
  assert not np.array_equal(kept["w"], np.arange(4.0))


def test_a_masked_state_maps_through_optax_tree_map_params():
  params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
  mask = lambda p: {"w": True, "b": False}  # noqa: E731
  for tx in (
    optax.chain(nx.nexus(0.1, mask=mask), optax.masked(optax.adam(0.1), mask)),
    nx.nexus_multisteps(optax.adam(0.1), every_k=2, mask=mask),
  ):
    state = tx.init(params)
    # As train/build.py lays out the state's shardings: every parameter-shaped leaf mapped.
    doubled = optax.tree_map_params(tx, lambda p: 2 * p, state)
    assert jax.tree.structure(doubled) == jax.tree.structure(state)


def test_a_non_float_leaf_left_trainable_by_a_mask_is_named_with_the_fix():
  params = {"w": jnp.zeros(3), "step": jnp.zeros([], jnp.int32)}
  with pytest.raises(ValueError, match=r"\['step'\] has dtype int32.*mark it False in mask="):
    nx.nexus(0.1, mask={"w": True, "step": True}).init(params)
