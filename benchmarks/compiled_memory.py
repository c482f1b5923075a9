"""Compiled memory of the pretraining step at the paper's sizes, from abstract inputs only.

For each preset and optimizer the script builds ``train.pretrain``'s jitted step
(``train.build.build_training``) on a mesh of host devices, lowers it with
``jax.ShapeDtypeStruct`` inputs (``Training.abstract_state`` and the [K, B, T + 1] token
batch, each with its sharding) and compiles it. Nothing of model size is allocated; XLA's
``memory_analysis()`` of the compiled executable gives the per-device bytes of the
arguments (parameters, optimizer state, batch), the outputs and the temporaries
(activations, gradients, and for Nexus the inner point and the displacement). The step
donates its state, so outputs alias arguments.

The ratio that matters is Nexus over gradient accumulation (``adamw``) at the same size,
batch and mesh: the target is <= 1.00 in temporary memory. Absolute bytes are the CPU
backend's; a GPU or TPU schedules differently, so read them as orders of magnitude.

Run from the repository root (8 host devices are forced unless XLA_FLAGS sets a count):
  python -m benchmarks.compiled_memory [--presets 130m,520m] [--mesh fsdp=8]
      [--micro-batch-size 64] [--seq-len 4096] [--microbatches 4]
The last line printed is a JSON object; it is also written to
``benchmarks/out/compiled_memory/compiled_memory.json``.
"""

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  ).strip()

# pylint: disable=wrong-import-position
import argparse
import time

import jax
import jax.numpy as jnp

from benchmarks.common import add_batch_flags, add_out_flag, batch_overrides, write_report
from train import parallel
from train.build import build_training
from train.presets import get_run_preset

OPTIMIZERS = ("adamw", "nexus")
FIELDS = (
  "argument_size_in_bytes",
  "output_size_in_bytes",
  "alias_size_in_bytes",
  "temp_size_in_bytes",
)


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--presets", default="130m,520m")
  parser.add_argument("--mesh", default="fsdp=8")
  add_batch_flags(parser)
  add_out_flag(parser, "compiled_memory")
  return parser.parse_args()


def compile_step(preset: str, optimizer: str, mesh, overrides: dict):
  """``train.pretrain``'s jitted step, compiled from abstract inputs only.

  The state is ``Training.abstract_state`` and the [K, B, T + 1] token batch a
  ``jax.ShapeDtypeStruct``, both carrying their shardings, so nothing of model size is
  allocated at any preset.

  Returns:
    ``(config, training, compiled, compile_seconds)``; the seconds cover lowering and
    compiling, not building the abstract state.
  """
  config = get_run_preset(preset, optimizer=optimizer, **overrides)
  training = build_training(config, mesh)
  tokens = jax.ShapeDtypeStruct(
    (config.microbatches, config.micro_batch_size, config.seq_len + 1),
    jnp.int32,
    sharding=training.batch_sharding,
  )
  started = time.perf_counter()
  compiled = training.step.lower(training.abstract_state, tokens).compile()
  return config, training, compiled, time.perf_counter() - started


def compiled_memory(preset: str, optimizer: str, mesh, overrides: dict) -> dict:
  """Per-device bytes of the compiled step, from abstract inputs."""
  config, training, compiled, seconds = compile_step(preset, optimizer, mesh, overrides)
  analysis = compiled.memory_analysis()
  params = sum(leaf.size for leaf in jax.tree.leaves(training.abstract_state.params))
  return {
    "compile_seconds": round(seconds, 1),
    "params": int(params),
    "tokens_per_step": config.tokens_per_step,
    **{field: int(getattr(analysis, field)) for field in FIELDS},
  }


def main():
  args = parse_args()
  overrides = batch_overrides(args)
  presets = [name.strip() for name in args.presets.split(",") if name.strip()]
  try:
    mesh = parallel.make_mesh(parallel.parse_mesh(args.mesh, jax.device_count()), False)
    for preset in presets:
      get_run_preset(preset, **overrides)
  except ValueError as error:  # ConfigError included: its message names the fix
    raise SystemExit(f"error: {error}") from None
  print(
    f"jax {jax.__version__}, {jax.device_count()} {jax.default_backend()} devices, mesh "
    f"{dict(mesh.shape)}; abstract inputs only",
    flush=True,
  )
  results = {}
  for preset in presets:
    for optimizer in OPTIMIZERS:
      row = compiled_memory(preset, optimizer, mesh, overrides)
      results.setdefault(preset, {})[optimizer] = row
      print(
        f"{preset} {optimizer}: temp {row['temp_size_in_bytes'] / 2**30:.3f} GiB, arguments "
        f"{row['argument_size_in_bytes'] / 2**30:.3f} GiB per device "
        f"(compiled in {row['compile_seconds']:.0f} s)",
        flush=True,
      )
  print(
    "\n| preset | params | tokens / step | optimizer | arguments (GiB/device) | "
    "temp (GiB/device) | temp / accumulation | arguments / accumulation |"
  )
  print("|---|---:|---:|---|---:|---:|---:|---:|")
  for preset, rows in results.items():
    base = rows["adamw"]
    for optimizer, row in rows.items():
      row["temp_over_accumulation"] = round(
        row["temp_size_in_bytes"] / base["temp_size_in_bytes"], 4
      )
      row["arguments_over_accumulation"] = round(
        row["argument_size_in_bytes"] / base["argument_size_in_bytes"], 4
      )
      print(
        f"| {preset} | {row['params'] / 1e6:,.1f}M | {row['tokens_per_step']:,} | {optimizer} | "
        f"{row['argument_size_in_bytes'] / 2**30:.3f} | {row['temp_size_in_bytes'] / 2**30:.3f} | "
        f"{row['temp_over_accumulation']:.4f} | {row['arguments_over_accumulation']:.4f} |"
      )
  result = {
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "devices": jax.device_count(),
    "mesh": dict(mesh.shape),
    "overrides": overrides,
    "presets": results,
  }
  write_report(args.out / "compiled_memory.json", result)


if __name__ == "__main__":
  main()
