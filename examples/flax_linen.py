"""Nexus with Flax Linen and ``flax.training.train_state.TrainState``, in both forms.

- The scan form, ``optax.chain(nx.nexus(...), outer)``, needs ``loss_fn=`` and
  ``microbatches=`` at ``update``; ``TrainState.apply_gradients`` passes no keyword
  arguments, so the step calls ``state.tx.update`` itself and then ``state.replace``.
- The transparent form, ``nx.nexus_multisteps(outer, every_k=K)``, takes one micro-batch
  gradient per call, so ``apply_gradients`` works unchanged.

On the same micro-batches both give the same parameters. Run: ``python -m examples.flax_linen``.
"""

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

import nexus_optax as nx

K, ROWS, FEATURES = 4, 16, 6


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(1)(nn.gelu(nn.Dense(16)(x)))[..., 0]


def make_microbatches(seed: int) -> dict:
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(K, ROWS, FEATURES)) + np.arange(K)[:, None, None]  # one source each
  y = np.sin(x.sum(-1)) + 0.1 * rng.normal(size=(K, ROWS))
  return {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y, jnp.float32)}


def mse(model, params, batch):
  return jnp.mean((model.apply({"params": params}, batch["x"]) - batch["y"]) ** 2)


def outer_optimizer():
  return optax.adamw(1e-2, b1=0.9, b2=0.95, eps=1e-10, weight_decay=0.1)


@jax.jit
def scan_form_step(state: train_state.TrainState, microbatches):
  """One outer step of the scan form: K inner steps, then the outer update."""
  loss_fn = lambda params, batch: mse(MLP(), params, batch)
  updates, opt_state = state.tx.update(
    None, state.opt_state, state.params, loss_fn=loss_fn, microbatches=microbatches
  )
  params = optax.apply_updates(state.params, updates)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state)


@jax.jit
def transparent_form_step(state: train_state.TrainState, microbatch):
  """One micro-batch of the transparent form: its gradient at the (inner) parameters."""
  grads = jax.grad(lambda params: mse(MLP(), params, microbatch))(state.params)
  return state.apply_gradients(grads=grads)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=20)
  args = parser.parse_args(argv)

  model = MLP()
  params = model.init(jax.random.key(0), jnp.zeros((1, FEATURES)))["params"]
  scan_state = train_state.TrainState.create(
    apply_fn=model.apply, params=params, tx=optax.chain(nx.nexus(0.01), outer_optimizer())
  )
  transparent_state = train_state.TrainState.create(
    apply_fn=model.apply,
    params=params,
    tx=nx.nexus_multisteps(outer_optimizer(), every_k=K, inner_lr=0.01),
  )
  for step in range(args.steps):
    microbatches = make_microbatches(step)
    scan_state = scan_form_step(scan_state, microbatches)
    for m in range(K):
      transparent_state = transparent_form_step(
        transparent_state, jax.tree.map(lambda leaf, m=m: leaf[m], microbatches)
      )
  loss = float(mse(model, scan_state.params, make_microbatches(args.steps)))
  gap = max(
    float(jnp.max(jnp.abs(a - b)))
    for a, b in zip(jax.tree.leaves(scan_state.params), jax.tree.leaves(transparent_state.params))
  )
  print(f"after {args.steps} outer steps: loss {loss:.4f}; the two forms differ by {gap:.1e}")
  return {
    "initial_params": params,
    "scan_params": scan_state.params,
    "transparent_params": transparent_state.params,
    "loss": loss,
    "max_form_difference": gap,
    "model": model,
  }


if __name__ == "__main__":
  main()
