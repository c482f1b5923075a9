"""The pretraining step of ``train.pretrain``: Nexus against accumulation, tokens/s and MFU.

Builds the CLI's own jitted step (``train.build.build_training``) for ``adamw``
(gradient accumulation over K micro-batches), ``nexus`` (scan form) and
``nexus-multisteps`` on the same batch, and measures in one run:

  * step time, interleaved round by round so that machine noise hits all alike, and the
    Nexus / accumulation ratio (median of per-round ratios);
  * XLA's temporary memory of each compiled step (``memory_analysis()``) and its ratio;
  * tokens/s, and model FLOPs utilisation: the model's training FLOPs per step
    (``LlamaConfig.flops_per_token``, matmuls only) over step time, divided by the peak
    of a large matmul in the compute dtype, timed in the same run on the same device.

Run from the repository root:
  python -m benchmarks.train_step [--preset demo] [--rounds 10]
On a GPU, ``--preset 130m --micro-batch-size 16`` measures the paper's smallest size in
bf16. The last line printed is a JSON object with every figure; it is also written to
``benchmarks/out/train_step/train_step-<preset>-<backend>.json``.
"""

import argparse
import platform

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import (
  add_batch_flags,
  add_out_flag,
  batch_overrides,
  paired_ratio,
  print_rounds,
  summarize,
  time_calls,
  time_rounds,
  write_report,
)
from train import parallel
from train.build import build_training
from train.presets import get_run_preset

OPTIMIZERS = ("adamw", "nexus", "nexus-multisteps")


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--preset", default="demo")
  add_batch_flags(parser)
  parser.add_argument("--rounds", type=int, default=10)
  add_out_flag(parser, "train_step")
  parser.add_argument(
    "--matmul-size",
    type=int,
    default=None,
    help="side of the peak-measuring matmul (default 2048 on CPU, 8192 else)",
  )
  return parser.parse_args()


def matmul_peak_flops(size: int, dtype, repeats: int = 10) -> float:
  """Best FLOP/s of a jitted square matmul: the device's attainable peak for this dtype."""
  a = jax.random.normal(jax.random.key(0), (size, size), dtype)
  b = jax.random.normal(jax.random.key(1), (size, size), dtype)
  matmul = jax.jit(lambda x, y: x @ y)
  best = time_calls(lambda: jax.block_until_ready(matmul(a, b)), repeats).min
  return 2 * size**3 / best


def main():
  args = parse_args()
  overrides = batch_overrides(args)
  mesh = parallel.make_mesh(parallel.parse_mesh("data=1", jax.device_count()), False)
  configs = {name: get_run_preset(args.preset, optimizer=name, **overrides) for name in OPTIMIZERS}
  config = configs["adamw"]
  trainings = {name: build_training(c, mesh) for name, c in configs.items()}
  model_config = trainings["adamw"].model_config
  shape = (config.microbatches, config.micro_batch_size, config.seq_len + 1)
  tokens = jax.device_put(
    np.random.default_rng(0).integers(0, 257, shape).astype(np.int32),
    trainings["adamw"].batch_sharding,
  )
  backend = jax.default_backend()
  print(
    f"jax {jax.__version__} on {backend} ({jax.devices()[0].device_kind}, "
    f"{platform.processor() or 'cpu'}), {args.preset}: "
    f"{model_config.non_embedding_params() / 1e6:.2f}M non-embedding params, "
    f"{model_config.compute_dtype} compute, K={config.microbatches} x "
    f"{config.micro_batch_size} x {config.seq_len} = {config.tokens_per_step:,} tokens per step",
    flush=True,
  )

  states = {name: t.init() for name, t in trainings.items()}
  # One compile per step: the executable whose memory is read is the one that is timed.
  steps = {name: t.step.lower(states[name], tokens).compile() for name, t in trainings.items()}
  memory = {name: int(step.memory_analysis().temp_size_in_bytes) for name, step in steps.items()}

  def one_step(name):
    states[name], metrics = steps[name](states[name], tokens)
    jax.block_until_ready(metrics)

  # Two warm-up rounds compile and settle.
  times = time_rounds(one_step, OPTIMIZERS, args.rounds, log=print_rounds(args.rounds))

  dtype = jnp.dtype(model_config.compute_dtype)
  size = args.matmul_size or (2048 if backend == "cpu" else 8192)
  peak = matmul_peak_flops(size, dtype)
  flops_per_step = model_config.flops_per_token(config.seq_len) * config.tokens_per_step
  median = {name: summarize(values).median for name, values in times.items()}
  paired = {name: paired_ratio(times[name], times["adamw"]) for name in OPTIMIZERS}
  rows = {
    name: {
      "median_step_ms": round(median[name] * 1e3, 2),
      "time_over_accumulation": round(paired[name], 4),
      "temp_mib": round(memory[name] / 2**20, 3),
      "temp_over_accumulation": round(memory[name] / memory["adamw"], 4),
      "tokens_per_s": round(config.tokens_per_step / median[name], 1),
      "mfu": round(flops_per_step / median[name] / peak, 4),
    }
    for name in OPTIMIZERS
  }
  print(
    f"\nmatmul peak ({size}x{size} {dtype.name}): {peak / 1e9:.1f} GFLOP/s; model "
    f"{flops_per_step / 1e9:.2f} GFLOP per step"
  )
  print(
    "\n| optimizer | median step (ms) | time / accumulation | XLA temp (MiB) | "
    "temp / accumulation | tokens/s | MFU |"
  )
  print("|---|---|---|---|---|---|---|")
  for name, row in rows.items():
    print(
      f"| {name} | {row['median_step_ms']:.1f} | {row['time_over_accumulation']:.3f} | "
      f"{row['temp_mib']:.2f} | {row['temp_over_accumulation']:.3f} | "
      f"{row['tokens_per_s']:,.0f} | {row['mfu'] * 100:.1f} % |"
    )
  result = {
    "preset": args.preset,
    "backend": backend,
    "device": jax.devices()[0].device_kind,
    "jax": jax.__version__,
    "compute_dtype": model_config.compute_dtype,
    "non_embedding_params": model_config.non_embedding_params(),
    "params": sum(leaf.size for leaf in jax.tree.leaves(states["adamw"].params)),
    "microbatches": config.microbatches,
    "micro_batch_size": config.micro_batch_size,
    "seq_len": config.seq_len,
    "tokens_per_step": config.tokens_per_step,
    "rounds": args.rounds,
    "matmul_size": size,
    "matmul_peak_flops": peak,
    "model_flops_per_step": flops_per_step,
    "optimizers": rows,
  }
  write_report(args.out / f"train_step-{args.preset}-{backend}.json", result)


if __name__ == "__main__":
  main()
