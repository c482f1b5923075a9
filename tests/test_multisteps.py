"""nexus_multisteps (Algorithm 3, one micro-batch per call) against the scan form."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nexus_optax as nx

OUTER_OPTIMIZERS = {
  "adamw": lambda: optax.adamw(1e-2, b1=0.9, b2=0.95, eps=1e-10, weight_decay=0.2),
  "sgd_momentum": lambda: optax.sgd(0.1, momentum=0.9),
  "lion": lambda: optax.lion(1e-3, weight_decay=0.1),
  "muon": lambda: optax.contrib.muon(1e-2),
}


def mlp_loss(params, batch):
  hidden = jnp.tanh(batch["x"] @ params["w1"] + params["b1"])
  return jnp.mean((hidden @ params["w2"] - batch["y"]) ** 2)


def make_problem(num_outer=3, k=3, seed=0):
  rng = np.random.default_rng(seed)
  params = {
    "w1": jnp.asarray(rng.normal(size=(4, 8)) * 0.5),
    "b1": jnp.asarray(rng.normal(size=8) * 0.1),
    "w2": jnp.asarray(rng.normal(size=(8, 3)) * 0.5),
  }
  # Each micro-batch of an outer step comes from its own "source" (a shifted input law).
  microbatches = [
    {
      "x": jnp.asarray(rng.normal(size=(k, 6, 4)) + np.arange(k)[:, None, None]),
      "y": jnp.asarray(rng.normal(size=(k, 6, 3))),
    }
    for _ in range(num_outer)
  ]
  return params, microbatches


def run_scan_form(outer, params, microbatches, gamma):
  tx = optax.chain(nx.nexus(gamma), outer)
  state = tx.init(params)
  step = jax.jit(lambda p, s, m: tx.update(None, s, p, loss_fn=mlp_loss, microbatches=m))
  for batch in microbatches:
    updates, state = step(params, state, batch)
    params = optax.apply_updates(params, updates)
  return params, state


def run_multisteps(outer, params, microbatches, gamma, k):
  tx = nx.nexus_multisteps(outer, every_k=k, inner_lr=gamma)
  state = tx.init(params)

  @jax.jit
  def step(params, state, batch):
    loss, grads = jax.value_and_grad(mlp_loss)(params, batch)
    updates, state = tx.update(grads, state, params, value=loss)
    return optax.apply_updates(params, updates), state, updates

  history = []
  for stacked in microbatches:
    for m in range(k):
      batch = jax.tree.map(lambda x, m=m: x[m], stacked)
      params, state, updates = step(params, state, batch)
      history.append((params, state, updates, batch))
  return params, state, history


@pytest.mark.parametrize("name", sorted(OUTER_OPTIMIZERS))
def test_multisteps_equals_scan_form(x64, name):
  params, microbatches = make_problem()
  make_outer = OUTER_OPTIMIZERS[name]
  scan_params, scan_state = run_scan_form(make_outer(), params, microbatches, 0.05)
  multi_params, multi_state, _ = run_multisteps(make_outer(), params, microbatches, 0.05, k=3)
  chex.assert_trees_all_close(multi_params, scan_params, rtol=1e-10, atol=1e-12)
  chex.assert_trees_all_close(multi_state.outer_params, scan_params, rtol=1e-10, atol=1e-12)
  chex.assert_trees_all_close(multi_state.outer_state, scan_state[1], rtol=1e-10, atol=1e-12)
  scan_metrics, multi_metrics = nx.nexus_metrics(scan_state), nx.nexus_metrics(multi_state)
  for key in scan_metrics:
    np.testing.assert_allclose(multi_metrics[key], scan_metrics[key], rtol=1e-8, err_msg=key)


def test_outer_state_is_frozen_between_syncs_and_inner_steps_are_nsgd(x64):
  params, microbatches = make_problem(num_outer=2, k=4)
  outer = optax.adamw(1e-2, weight_decay=0.2)
  _, _, history = run_multisteps(outer, params, microbatches, 0.05, k=4)
  initial_outer_state = outer.init(params)
  for call, (new_params, state, updates, batch) in enumerate(history):
    previous_params = params if call == 0 else history[call - 1][0]
    if call % 4 != 3:
      frozen = initial_outer_state if call < 4 else history[3][1].outer_state
      chex.assert_trees_all_equal(state.outer_state, frozen)
      grads = jax.grad(mlp_loss)(previous_params, batch)
      flat = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads)])
      chex.assert_trees_all_close(
        updates,
        jax.tree.map(lambda g, flat=flat: -0.05 * np.asarray(g) / np.linalg.norm(flat), grads),
        rtol=1e-11,  # float64 (2e-12 seen): ~1e4 ulps, where a float32 slip would be 1e-7
      )
      assert int(state.mini_step) == call % 4 + 1
    else:
      assert int(state.outer_state[0].count) == call // 4 + 1  # AdamW counted one step
      chex.assert_trees_all_close(new_params, state.outer_params, rtol=1e-14)
      assert int(state.mini_step) == 0


def test_every_k_one_is_nexus_with_one_microbatch(x64):
  params, microbatches = make_problem(num_outer=1, k=1)
  scan_params, _ = run_scan_form(optax.adam(1e-2), params, microbatches, 0.1)
  multi_params, _, _ = run_multisteps(optax.adam(1e-2), params, microbatches, 0.1, k=1)
  chex.assert_trees_all_close(multi_params, scan_params, rtol=1e-12)


def test_nonfinite_gradient_is_skipped_and_counted():
  tx = nx.nexus_multisteps(optax.sgd(1.0), every_k=2, inner_lr=0.1)
  params = jnp.ones(3)
  state = tx.init(params)
  updates, state = tx.update(jnp.array([jnp.nan, 1.0, 1.0]), state, params)
  chex.assert_trees_all_equal(updates, jnp.zeros(3))
  updates, state = tx.update(jnp.array([0.0, 3.0, 4.0]), state, params)
  np.testing.assert_allclose(updates, [0.0, -0.06, -0.08], rtol=1e-6)
  assert int(nx.nexus_metrics(state)["skipped_steps"]) == 1
  assert np.isnan(nx.nexus_metrics(state)["inner_loss"])  # no value= was given
