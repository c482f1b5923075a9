"""Nexus inside flax.nnx.Optimizer, which forwards update() keyword arguments (flax >= 0.11)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nexus_optax as nx

nnx = pytest.importorskip("flax.nnx")


class MLP(nnx.Module):
  def __init__(self, rngs):
    self.hidden = nnx.Linear(4, 16, rngs=rngs)
    self.out = nnx.Linear(16, 2, rngs=rngs)

  def __call__(self, x):
    return self.out(jax.nn.gelu(self.hidden(x)))


def _microbatches(seed, k=3):
  rng = np.random.default_rng(seed)
  return {
    "x": jnp.asarray(rng.normal(size=(k, 8, 4)) + np.arange(k)[:, None, None], jnp.float32),
    "y": jnp.asarray(rng.normal(size=(k, 8, 2)), jnp.float32),
  }


def _make_tx():
  return optax.chain(
    nx.nexus(0.05),
    optax.clip_by_global_norm(1.0),
    optax.adamw(1e-2, b1=0.9, b2=0.95, eps=1e-10, weight_decay=0.2),
  )


def test_nnx_optimizer_matches_pure_optax():
  model = MLP(nnx.Rngs(0))
  graphdef, initial_params = nnx.split(model, nnx.Param)
  pure_params = nnx.to_pure_dict(initial_params)

  def loss_fn(params, batch):
    merged = nnx.merge(graphdef, params)
    return jnp.mean((merged(batch["x"]) - batch["y"]) ** 2)

  optimizer = nnx.Optimizer(model, _make_tx(), wrt=nnx.Param)

  @nnx.jit
  def nnx_step(model, optimizer, microbatches):
    placeholder = nnx.state(model, nnx.Param)  # Nexus computes its own gradients
    optimizer.update(model, placeholder, loss_fn=loss_fn, microbatches=microbatches)

  def pure_loss(p, batch):  # the same MLP written out in plain JAX
    hidden = jax.nn.gelu(batch["x"] @ p["hidden"]["kernel"] + p["hidden"]["bias"])
    return jnp.mean((hidden @ p["out"]["kernel"] + p["out"]["bias"] - batch["y"]) ** 2)

  tx = _make_tx()
  state = tx.init(pure_params)

  @jax.jit
  def pure_step(params, state, microbatches):
    updates, state = tx.update(None, state, params, loss_fn=pure_loss, microbatches=microbatches)
    return optax.apply_updates(params, updates), state

  params = pure_params
  for seed in range(3):
    microbatches = _microbatches(seed)
    nnx_step(model, optimizer, microbatches)
    params, state = pure_step(params, state, microbatches)

  trained = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  chex.assert_trees_all_close(trained, params, rtol=1e-6, atol=1e-7)
  assert np.abs(trained["out"]["kernel"] - pure_params["out"]["kernel"]).max() > 1e-3
  assert int(nx.nexus_metrics(optimizer.opt_state)["skipped_steps"]) == 0
