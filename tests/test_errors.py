"""Every bad input gets a ValueError that names the fix; bad numbers never reach params."""

import chex
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nexus_optax as nx

PARAMS = {"w": jnp.ones(3)}
MICROBATCHES = jnp.ones((2, 3))


def loss_fn(params, x):
  return jnp.sum((params["w"] - x) ** 2)


def _update(tx, **kwargs):
  return tx.update(None, tx.init(PARAMS), PARAMS, **kwargs)


@pytest.mark.parametrize("every_k", [0, -1, 1.5, True])
def test_every_k_must_be_a_positive_integer(every_k):
  with pytest.raises(ValueError, match="every_k must be an integer >= 1"):
    nx.nexus_multisteps(optax.sgd(1.0), every_k=every_k)


@pytest.mark.parametrize("inner_lr", [0.0, -0.01, float("nan")])
@pytest.mark.parametrize(
  "factory", [nx.nexus, lambda lr: nx.nexus_multisteps(optax.sgd(1.0), 2, lr)]
)
def test_inner_lr_must_be_positive(factory, inner_lr):
  with pytest.raises(ValueError, match=r"inner_lr must be > 0 .*0\.01"):
    factory(inner_lr)


def test_inner_lr_must_be_a_number_or_schedule():
  with pytest.raises(ValueError, match="schedule"):
    nx.nexus("fast")


@pytest.mark.parametrize(
  "factory",
  [lambda n: nx.nexus(normalize=n), lambda n: nx.nexus_multisteps(optax.sgd(1.0), 2, normalize=n)],
)
def test_unknown_normalize(factory):
  with pytest.raises(ValueError, match="'global'.*'per_leaf'"):
    factory("layer")


def test_missing_loss_fn():
  with pytest.raises(ValueError, match="loss_fn=loss_fn"):
    _update(nx.nexus(), microbatches=MICROBATCHES)


def test_missing_microbatches():
  with pytest.raises(ValueError, match="microbatches="):
    _update(nx.nexus(), loss_fn=loss_fn)


def test_missing_microbatches_through_chain():
  tx = optax.chain(nx.nexus(), optax.adamw(1e-3))
  with pytest.raises(ValueError, match="microbatches="):
    tx.update(None, tx.init(PARAMS), PARAMS, loss_fn=loss_fn)


def test_missing_params():
  tx = nx.nexus()
  with pytest.raises(ValueError, match="needs params"):
    tx.update(None, tx.init(PARAMS), loss_fn=loss_fn, microbatches=MICROBATCHES)


def test_multisteps_needs_grads_and_params():
  tx = nx.nexus_multisteps(optax.sgd(1.0), every_k=2)
  with pytest.raises(ValueError, match="gradient taken at params"):
    tx.update(None, tx.init(PARAMS), PARAMS)
  with pytest.raises(ValueError, match="needs params"):
    tx.update(PARAMS, tx.init(PARAMS))


def test_microbatch_leaves_with_different_leading_sizes():
  two_leaf_loss = lambda p, b: loss_fn(p, b["x"]) + jnp.sum(b["y"])
  with pytest.raises(ValueError, match=r"different leading sizes \[2, 3\]"):
    _update(
      nx.nexus(), loss_fn=two_leaf_loss, microbatches={"x": jnp.ones((2, 3)), "y": jnp.ones((3,))}
    )


def test_scalar_microbatch_leaf():
  with pytest.raises(ValueError, match="leading micro-batch axis"):
    _update(
      nx.nexus(),
      loss_fn=lambda p, b: loss_fn(p, b["x"]),
      microbatches={"x": jnp.ones((2, 3)), "scale": jnp.float32(2.0)},
    )


def test_non_scalar_loss():
  with pytest.raises(ValueError, match=r"scalar loss, got shape \(3,\).*\.mean\(\)"):
    _update(nx.nexus(), loss_fn=lambda p, x: (p["w"] - x) ** 2, microbatches=MICROBATCHES)


def test_aux_mismatch_names_has_aux():
  with pytest.raises(ValueError, match="has_aux=True"):
    _update(nx.nexus(), loss_fn=lambda p, x: (loss_fn(p, x), x), microbatches=MICROBATCHES)
  with pytest.raises(ValueError, match="has_aux=False"):
    _update(nx.nexus(has_aux=True), loss_fn=loss_fn, microbatches=MICROBATCHES)


def test_has_aux_keeps_the_loss_and_inner_loop_returns_aux():
  aux_loss = lambda p, x: (loss_fn(p, x), {"first": x[0]})
  g_hat, _ = _update(nx.nexus(0.1, has_aux=True), loss_fn=aux_loss, microbatches=MICROBATCHES)
  g_plain, _ = _update(nx.nexus(0.1), loss_fn=loss_fn, microbatches=MICROBATCHES)
  chex.assert_trees_all_close(g_hat, g_plain)
  result = nx.inner_loop(aux_loss, PARAMS, jnp.arange(6.0).reshape(2, 3), 0.1, has_aux=True)
  np.testing.assert_array_equal(result.aux["first"], [0.0, 3.0])


def test_nexus_metrics_needs_a_nexus_state():
  with pytest.raises(ValueError, match="holds no Nexus metrics"):
    nx.nexus_metrics(optax.adam(1e-3).init(PARAMS))
  two = optax.chain(nx.nexus(), nx.nexus())
  with pytest.raises(ValueError, match="sub-state"):
    nx.nexus_metrics(two.init(PARAMS))


def test_nonfinite_microbatch_is_skipped_and_counted():
  microbatches = jnp.array([[0.0, 0.0, 0.0], [jnp.nan, 0.0, 0.0], [2.0, 1.0, 1.0]])
  tx = optax.chain(nx.nexus(0.1), optax.adamw(1e-2))
  state = tx.init(PARAMS)
  updates, state = tx.update(None, state, PARAMS, loss_fn=loss_fn, microbatches=microbatches)
  params = optax.apply_updates(PARAMS, updates)
  assert bool(jnp.all(jnp.isfinite(params["w"])))
  metrics = nx.nexus_metrics(state)
  assert int(metrics["skipped_steps"]) == 1
  # Hand-computed: step 1 at w = (1, 1, 1) toward 0 has loss 3 and moves w to w1 (each
  # entry 1 - 0.1/sqrt 3); step 2 is skipped; step 3 toward (2, 1, 1) is taken at w1.
  w1 = 1.0 - 0.1 / np.sqrt(3.0)
  np.testing.assert_allclose(
    metrics["inner_loss"], (3.0 + (2 - w1) ** 2 + 2 * (1 - w1) ** 2) / 2, rtol=1e-5
  )


def test_all_nonfinite_gives_zero_pseudo_gradient():
  g_hat, state = _update(nx.nexus(0.1), loss_fn=loss_fn, microbatches=jnp.full((2, 3), jnp.inf))
  chex.assert_trees_all_equal(g_hat, {"w": jnp.zeros(3)})
  assert int(state.metrics.skipped_steps) == 2


@pytest.mark.parametrize("normalize", ["global", "per_leaf"])
def test_zero_gradient_gives_zero_step(normalize):
  params = {"w": jnp.ones(3), "b": jnp.zeros(2)}
  flat_in_b = lambda p, x: jnp.sum((p["w"] - x) ** 2) + 0.0 * jnp.sum(p["b"])
  g_hat, state = nx.nexus(0.1, normalize=normalize).update(
    None, nx.nexus().init(params), params, loss_fn=flat_in_b, microbatches=jnp.ones((2, 3))
  )
  chex.assert_trees_all_equal(g_hat, {"w": jnp.zeros(3), "b": jnp.zeros(2)})
  assert int(state.metrics.skipped_steps) == 0
  chex.assert_tree_all_finite(state.metrics._replace(consensus=0.0))
