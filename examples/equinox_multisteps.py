"""Nexus with Equinox, in both forms.

- The scan form: ``eqx.partition`` splits the model into its arrays (what Nexus updates)
  and the rest, and the loss ``eqx.combine``-s them back at every inner point.
- The transparent form: ``eqx.filter_grad`` gives each micro-batch's gradient at the
  current model, which ``nx.nexus_multisteps`` takes one call at a time.

On the same micro-batches both give the same model. Run: ``python -m examples.equinox_multisteps``.
"""

import argparse

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import nexus_optax as nx

K, ROWS, FEATURES = 4, 16, 6


def make_microbatches(seed: int) -> dict:
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(K, ROWS, FEATURES)) + np.arange(K)[:, None, None]  # one source each
  y = np.cos(x.sum(-1, keepdims=True)) + 0.1 * rng.normal(size=(K, ROWS, 1))
  return {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y, jnp.float32)}


def model_loss(model: eqx.nn.MLP, batch) -> jax.Array:
  return jnp.mean((jax.vmap(model)(batch["x"]) - batch["y"]) ** 2)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=20)
  args = parser.parse_args(argv)

  model = eqx.nn.MLP(FEATURES, 1, width_size=16, depth=2, key=jax.random.key(0))
  params, static = eqx.partition(model, eqx.is_inexact_array)

  # The scan form: the loss takes the arrays and rebuilds the model from them.
  def loss_fn(params, batch):
    return model_loss(eqx.combine(params, static), batch)

  scan_tx = optax.chain(nx.nexus(0.01), optax.sgd(0.5, momentum=0.9))
  scan_state = scan_tx.init(params)

  @jax.jit
  def scan_step(params, opt_state, microbatches):
    updates, opt_state = scan_tx.update(
      None, opt_state, params, loss_fn=loss_fn, microbatches=microbatches
    )
    return optax.apply_updates(params, updates), opt_state

  # The transparent form: one filtered gradient per call, at the current model.
  transparent_tx = nx.nexus_multisteps(optax.sgd(0.5, momentum=0.9), every_k=K, inner_lr=0.01)
  transparent_model = model
  transparent_state = transparent_tx.init(eqx.filter(model, eqx.is_inexact_array))

  @eqx.filter_jit
  def transparent_step(model, opt_state, microbatch):
    loss, grads = eqx.filter_value_and_grad(model_loss)(model, microbatch)
    updates, opt_state = transparent_tx.update(
      grads, opt_state, eqx.filter(model, eqx.is_inexact_array), value=loss
    )
    return eqx.apply_updates(model, updates), opt_state

  for step in range(args.steps):
    microbatches = make_microbatches(step)
    params, scan_state = scan_step(params, scan_state, microbatches)
    for m in range(K):
      transparent_model, transparent_state = transparent_step(
        transparent_model, transparent_state, jax.tree.map(lambda leaf, m=m: leaf[m], microbatches)
      )
  scan_model = eqx.combine(params, static)
  held_out = jax.tree.map(lambda leaf: leaf.reshape(K * ROWS, -1), make_microbatches(args.steps))
  loss = float(model_loss(scan_model, held_out))
  gap = max(
    float(jnp.max(jnp.abs(a - b)))
    for a, b in zip(
      jax.tree.leaves(eqx.filter(scan_model, eqx.is_inexact_array)),
      jax.tree.leaves(eqx.filter(transparent_model, eqx.is_inexact_array)),
    )
  )
  print(f"after {args.steps} outer steps: loss {loss:.4f}; the two forms differ by {gap:.1e}")
  return {
    "initial_model": model,
    "scan_model": scan_model,
    "transparent_model": transparent_model,
    "loss": loss,
    "max_form_difference": gap,
    "inner_loss": float(nx.nexus_metrics(transparent_state)["inner_loss"]),
  }


if __name__ == "__main__":
  main()
