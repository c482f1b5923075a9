"""What Nexus costs on a pod: the all-reduces of one outer step, counted.

Each normalized inner step needs the *global* micro-batch gradient (the norm of a mean is
not the mean of norms), so under data parallelism Nexus all-reduces the gradient K times
per outer step, where an accumulation written to reduce once (a ``pmean`` after the
micro-batch loop) does it once. This example counts the all-reduced bytes of both in the
traced program (``jax.make_jaxpr``, each loop body weighted by its trip count) on a
``data`` mesh of host devices. Run: ``python -m examples.pod_collectives [--devices 4]``.
"""

import argparse
import os
import sys

if __name__ == "__main__":  # before jax is imported: XLA reads its flags once
  devices = sys.argv[sys.argv.index("--devices") + 1] if "--devices" in sys.argv else "4"
  flags = os.environ.get("XLA_FLAGS", "")
  os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}"

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import nexus_optax as nx

K, ROWS, WIDTH = 4, 8, 64


def loss_fn(params, batch):
  hidden = jnp.tanh(batch["x"] @ params["w1"])
  return jnp.mean((hidden @ params["w2"] - batch["y"]) ** 2)


def all_reduced_bytes(jaxpr, trips: int = 1) -> int:
  """Bytes entering all-reduces (psum and its variants), loops weighted by trip count."""
  total = 0
  for equation in jaxpr.eqns:
    if equation.primitive.name.startswith("psum"):
      total += trips * sum(v.aval.size * v.aval.dtype.itemsize for v in equation.invars)
    repeat = equation.params.get("length", 1) if equation.primitive.name == "scan" else 1
    for value in equation.params.values():
      for inner in value if isinstance(value, (list, tuple)) else (value,):
        if isinstance(inner, jax.extend.core.ClosedJaxpr):
          total += all_reduced_bytes(inner.jaxpr, trips * repeat)
        elif isinstance(inner, jax.extend.core.Jaxpr):
          total += all_reduced_bytes(inner, trips * repeat)
  return total


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", type=int, default=4, help="forced CPU devices (script only)")
  parser.parse_args(argv)
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  rng = np.random.default_rng(0)
  params = {
    "w1": jnp.asarray(rng.normal(size=(WIDTH, WIDTH)) / WIDTH**0.5, jnp.float32),
    "w2": jnp.asarray(rng.normal(size=(WIDTH, 1)) / WIDTH**0.5, jnp.float32),
  }
  rows = ROWS * jax.device_count()
  microbatches = {
    "x": jnp.asarray(rng.normal(size=(K, rows, WIDTH)), jnp.float32),
    "y": jnp.asarray(rng.normal(size=(K, rows, 1)), jnp.float32),
  }
  microbatches = jax.device_put(microbatches, NamedSharding(mesh, P(None, "data")))
  nexus = nx.nexus(0.01, batch_axis_name="data")
  nexus_state = nexus.init(params)

  def nexus_step(params, microbatches):
    return nexus.update(None, nexus_state, params, loss_fn=loss_fn, microbatches=microbatches)[0]

  def accumulation_step(params, microbatches):
    def add(total, batch):
      return jax.tree.map(jnp.add, total, jax.grad(loss_fn)(params, batch)), None

    total = jax.lax.scan(add, jax.tree.map(jnp.zeros_like, params), microbatches)[0]
    return jax.lax.pmean(jax.tree.map(lambda g: g / K, total), "data")  # one all-reduce

  measured = {}
  for name, step in (("accumulation", accumulation_step), ("nexus", nexus_step)):
    mapped = jax.shard_map(
      step, mesh=mesh, in_specs=(P(), P(None, "data")), out_specs=P(), check_vma=False
    )
    measured[name] = all_reduced_bytes(jax.make_jaxpr(mapped)(params, microbatches).jaxpr)
  parameter_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(params))
  for name, size in measured.items():
    print(
      f"{name:12s} all-reduces {size:7d} bytes per outer step "
      f"= {size / parameter_bytes:.2f} x the parameters"
    )
  return {"all_reduced_bytes": measured, "parameter_bytes": parameter_bytes, "k": K}


if __name__ == "__main__":
  main()
