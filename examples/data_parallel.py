"""Nexus under ``jax.shard_map`` with each micro-batch's rows split over devices.

With ``batch_axis_name="data"`` every inner gradient (and loss) is averaged over the axis
*before* it is normalized, so every replica takes the same inner steps and returns the
same g_hat as one device would. Without it each replica would normalize its own rows'
gradient; with ``check_vma=True`` (``shard_map``'s default) that is an error naming the
fix. Run: ``python -m examples.data_parallel [--devices 4]``; it forces that many CPU
devices when run as a script.
"""

import argparse
import os
import sys

if __name__ == "__main__":  # before jax is imported: XLA reads its flags once
  devices = sys.argv[sys.argv.index("--devices") + 1] if "--devices" in sys.argv else "4"
  flags = os.environ.get("XLA_FLAGS", "")
  os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}"

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import nexus_optax as nx

K, ROWS, FEATURES = 4, 16, 5


def loss_fn(params, batch):  # the mean over this replica's rows
  return jnp.mean((batch["x"] @ params["w"] + params["b"] - batch["y"]) ** 2)


def make_microbatches(seed: int) -> dict:
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(K, ROWS, FEATURES)) * np.arange(1, K + 1)[:, None, None]
  y = x @ np.arange(FEATURES) + rng.normal(size=(K, ROWS))
  return {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y, jnp.float32)}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", type=int, default=4, help="forced CPU devices (script only)")
  parser.add_argument("--steps", type=int, default=3)
  args = parser.parse_args(argv)
  mesh = jax.make_mesh((jax.device_count(),), ("data",))

  def make_step(tx):
    def step(params, opt_state, microbatches):
      updates, opt_state = tx.update(
        None, opt_state, params, loss_fn=loss_fn, microbatches=microbatches
      )
      return optax.apply_updates(params, updates), opt_state

    return step

  outer = optax.adamw(1e-2, weight_decay=0.1)
  one_device_tx = optax.chain(nx.nexus(0.01), outer)
  replicated_tx = optax.chain(nx.nexus(0.01, batch_axis_name="data"), outer)
  # Parameters and optimizer state replicated, each micro-batch's rows split over "data".
  sharded_step = jax.jit(
    jax.shard_map(
      make_step(replicated_tx),
      mesh=mesh,
      in_specs=(P(), P(), P(None, "data")),
      out_specs=(P(), P()),
    )
  )
  one_device_step = jax.jit(make_step(one_device_tx))

  params = {"w": jnp.zeros(FEATURES), "b": jnp.zeros([])}
  sharded, sharded_state = params, replicated_tx.init(params)
  single, single_state = params, one_device_tx.init(params)
  rows_split = NamedSharding(mesh, P(None, "data"))
  for step in range(args.steps):
    microbatches = make_microbatches(step)
    sharded, sharded_state = sharded_step(
      sharded, sharded_state, jax.device_put(microbatches, rows_split)
    )
    single, single_state = one_device_step(single, single_state, microbatches)
  difference = max(
    float(jnp.max(jnp.abs(a - b)))
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single))
  )

  missing_axis = jax.jit(
    jax.shard_map(
      make_step(one_device_tx),
      mesh=mesh,
      in_specs=(P(), P(), P(None, "data")),
      out_specs=(P(), P()),
    )
  )
  try:
    missing_axis(
      params, one_device_tx.init(params), jax.device_put(make_microbatches(0), rows_split)
    )
    error = None
  except ValueError as caught:
    error = str(caught)
  print(
    f"{jax.device_count()} devices: after {args.steps} outer steps the parameters differ from "
    f"one device's by {difference:.1e}\nwithout batch_axis_name: {error}"
  )
  return {"devices": jax.device_count(), "max_difference": difference, "error": error}


if __name__ == "__main__":
  main()
