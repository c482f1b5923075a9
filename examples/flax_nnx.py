"""Nexus with Flax NNX and ``nnx.Optimizer``, in both forms.

``nnx.Optimizer.update(model, grads, **kwargs)`` forwards keyword arguments to the
transformation and hands it the pure parameter state, so in the scan form the loss rebuilds
the model from that state with ``nnx.merge``; Nexus computes its own gradients, and the
``grads`` argument is a placeholder. The transparent form takes ``nnx.grad``'s gradient of
each micro-batch as any optimizer does. Run: ``python -m examples.flax_nnx``.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import nexus_optax as nx

K, ROWS, FEATURES = 4, 16, 6


class MLP(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(FEATURES, 16, rngs=rngs)
    self.out = nnx.Linear(16, 1, rngs=rngs)

  def __call__(self, x):
    return self.out(jax.nn.gelu(self.hidden(x)))[..., 0]


def make_microbatches(seed: int) -> dict:
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(K, ROWS, FEATURES)) + np.arange(K)[:, None, None]  # one source each
  y = np.tanh(x.sum(-1)) + 0.1 * rng.normal(size=(K, ROWS))
  return {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y, jnp.float32)}


def mse(model: MLP, batch) -> jax.Array:
  return jnp.mean((model(batch["x"]) - batch["y"]) ** 2)


def outer_optimizer():
  return optax.adamw(1e-2, b1=0.9, b2=0.95, eps=1e-10, weight_decay=0.1)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=20)
  args = parser.parse_args(argv)

  scan_model, transparent_model = MLP(nnx.Rngs(0)), MLP(nnx.Rngs(0))
  graphdef, initial = nnx.split(scan_model, nnx.Param)
  initial_params = nnx.to_pure_dict(initial)  # a snapshot: the state's variables are live

  def loss_fn(params, batch):  # the pure parameter state -> the model -> its loss
    return mse(nnx.merge(graphdef, params), batch)

  scan_optimizer = nnx.Optimizer(
    scan_model, optax.chain(nx.nexus(0.01), outer_optimizer()), wrt=nnx.Param
  )
  transparent_optimizer = nnx.Optimizer(
    transparent_model, nx.nexus_multisteps(outer_optimizer(), every_k=K), wrt=nnx.Param
  )

  @nnx.jit
  def scan_step(model, optimizer, microbatches):
    placeholder = nnx.state(model, nnx.Param)  # Nexus computes its own gradients
    optimizer.update(model, placeholder, loss_fn=loss_fn, microbatches=microbatches)

  @nnx.jit
  def transparent_step(model, optimizer, microbatch):
    loss, grads = nnx.value_and_grad(mse)(model, microbatch)
    optimizer.update(model, grads, value=loss)

  for step in range(args.steps):
    microbatches = make_microbatches(step)
    scan_step(scan_model, scan_optimizer, microbatches)
    for m in range(K):
      transparent_step(
        transparent_model,
        transparent_optimizer,
        jax.tree.map(lambda leaf, m=m: leaf[m], microbatches),
      )
  held_out = jax.tree.map(lambda leaf: leaf.reshape(K * ROWS, -1), make_microbatches(args.steps))
  held_out["y"] = held_out["y"][:, 0]
  loss = float(mse(scan_model, held_out))
  scan_params = nnx.to_pure_dict(nnx.state(scan_model, nnx.Param))
  transparent_params = nnx.to_pure_dict(nnx.state(transparent_model, nnx.Param))
  gap = max(
    float(jnp.max(jnp.abs(a - b)))
    for a, b in zip(jax.tree.leaves(scan_params), jax.tree.leaves(transparent_params))
  )
  print(f"after {args.steps} outer steps: loss {loss:.4f}; the two forms differ by {gap:.1e}")
  return {
    "initial_params": initial_params,
    "scan_params": scan_params,
    "transparent_params": transparent_params,
    "loss": loss,
    "max_form_difference": gap,
  }


if __name__ == "__main__":
  main()
