"""Memory and the inner point: ``loss_takes_displacement=True``.

By default ``nexus`` forms the inner point ``params - displacement`` whole before each
forward and backward pass: one parameter-sized temporary. With
``loss_takes_displacement=True`` the loss gets ``(params, microbatch, displacement)`` and
forms the inner point itself; a model that does so one layer at a time inside its layer
scan never holds the whole copy. The gradient is taken with respect to ``params`` at a
fixed displacement, which is the gradient at the inner point, so g_hat is the same.
Run: ``python -m examples.inner_point_memory``.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nexus_optax as nx

K, ROWS = 4, 8


def forward(layers, x):
  """A stack of residual tanh layers under lax.scan: layers["w"] is [depth, width, width]."""

  @jax.checkpoint  # rematerialised, as large models are: the backward pass keeps no weights
  def layer(h, w):
    return h + jnp.tanh(h @ w), None

  return jax.lax.scan(layer, x, layers["w"])[0]


def loss_fn(params, batch):
  return jnp.mean((forward(params, batch["x"]) - batch["y"]) ** 2)


def loss_at_inner_point(params, batch, displacement):
  """The same loss at ``params - displacement``, each layer's weight formed in the scan."""

  @jax.checkpoint
  def layer(h, weight_and_displacement):
    w, d = weight_and_displacement
    return h + jnp.tanh(h @ (w - d).astype(w.dtype)), None

  out = jax.lax.scan(layer, batch["x"], (params["w"], displacement["w"]))[0]
  return jnp.mean((out - batch["y"]) ** 2)


def temp_bytes(step, *args) -> int:
  """XLA's compiled temporary memory of ``step`` for abstract ``args``."""
  shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), args)
  return jax.jit(step).lower(*shapes).compile().memory_analysis().temp_size_in_bytes


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--depth", type=int, default=16)
  parser.add_argument("--width", type=int, default=256)
  args = parser.parse_args(argv)
  rng = np.random.default_rng(0)
  params = {
    "w": jnp.asarray(
      rng.normal(size=(args.depth, args.width, args.width)) / args.width**0.5, jnp.float32
    )
  }
  microbatches = {
    "x": jnp.asarray(rng.normal(size=(K, ROWS, args.width)), jnp.float32),
    "y": jnp.asarray(rng.normal(size=(K, ROWS, args.width)), jnp.float32),
  }
  default = nx.nexus(0.01)
  inside = nx.nexus(0.01, loss_takes_displacement=True)

  def pseudo_gradient(tx, loss):
    def step(params, state, microbatches):
      return tx.update(None, state, params, loss_fn=loss, microbatches=microbatches)[0]

    return step

  default_step = pseudo_gradient(default, loss_fn)
  inside_step = pseudo_gradient(inside, loss_at_inner_point)
  state = default.init(params)
  g_default = jax.jit(default_step)(params, state, microbatches)
  g_inside = jax.jit(inside_step)(params, state, microbatches)
  difference = float(optax.tree.norm(jax.tree.map(jnp.subtract, g_default, g_inside)))
  relative = difference / float(optax.tree.norm(g_default))
  memory = {
    "default": temp_bytes(default_step, params, state, microbatches),
    "loss_takes_displacement": temp_bytes(inside_step, params, state, microbatches),
  }
  parameter_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(params))
  print(f"g_hat with and without loss_takes_displacement differs by {relative:.1e} (relative)")
  for name, size in memory.items():
    print(
      f"{name:24s} temp memory {size / 2**20:6.2f} MiB "
      f"= {size / parameter_bytes:.2f} parameter copies"
    )
  return {"relative_difference": relative, "temp_bytes": memory, "parameter_bytes": parameter_bytes}


if __name__ == "__main__":
  main()
