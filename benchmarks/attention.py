"""The model's causal attention: full [T, T] mask against query blocks that skip masked keys.

Compiles ``jax.jit(jax.value_and_grad(next_token_loss))`` of the preset's model once with
``attention_block_size=None`` (:func:`models.llama.causal_attention`, the full scores, half
masked) and once per candidate block size (:func:`models.llama.block_causal_attention`,
query block ``i`` against keys ``[0, (i + 1) b)``), all on the same weights and one
micro-batch of random tokens below 257, and measures in one run:

  * forward + backward time, interleaved round by round, and each candidate's time over
    the full mask's (median of per-round ratios);
  * XLA's temporary memory of each compiled program;
  * the candidates' largest relative difference from the full mask in loss and gradients.

Run from the repository root:
  python -m benchmarks.attention [--preset demo] [--rounds 10] [--block-sizes 32,64,128]
The last line printed is a JSON object with every figure; it is also written to
``benchmarks/out/attention/attention-<preset>-<backend>.json``.
"""

import argparse
import dataclasses
import platform

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.common import (
  add_out_flag,
  paired_ratio,
  print_rounds,
  summarize,
  time_rounds,
  write_report,
)
from models import Llama, get_preset, next_token_loss

FULL = "full"


def block_sizes(text: str) -> list[int]:
  """``"32,64"`` -> [32, 64]; anything else is argparse's one-line error."""
  try:
    sizes = [int(part) for part in text.split(",") if part.strip()]
  except ValueError:
    sizes = []
  if not sizes or min(sizes) < 1:
    raise argparse.ArgumentTypeError(f"{text!r}: give positive integers, e.g. 32,64,128")
  return sizes


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--preset", default="demo")
  parser.add_argument("--rounds", type=int, default=10)
  parser.add_argument("--micro-batch-size", type=int, default=8)
  parser.add_argument("--seq-len", type=int, default=256)
  parser.add_argument(
    "--block-sizes",
    type=block_sizes,
    default="32,64,128,256",
    help="comma-separated query block sizes to compare with the full mask",
  )
  add_out_flag(parser, "attention")
  return parser.parse_args()


def variants(block_sizes) -> dict[str, dict]:
  """``{name: LlamaConfig overrides}``: the full mask first, then each block size."""
  out = {FULL: {"attention_block_size": None}}
  out.update({f"block-{block}": {"attention_block_size": block} for block in block_sizes})
  return out


def relative_difference(a, b) -> float:
  """``max over leaves of |a - b| / |b|`` (L2 norms), a tree's worst leaf."""
  return max(
    float(jnp.linalg.norm(x - y) / jnp.maximum(jnp.linalg.norm(y), 1e-30))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


def main():
  args = parse_args()
  base = get_preset(args.preset)
  overrides = variants(args.block_sizes)
  names = list(overrides)
  tokens = jnp.asarray(
    np.random.default_rng(0)
    .integers(0, 257, (args.micro_batch_size, args.seq_len + 1))
    .astype(np.int32)
  )
  backend = jax.default_backend()
  print(
    f"jax {jax.__version__} on {backend} ({jax.devices()[0].device_kind}, "
    f"{platform.processor() or 'cpu'}), {args.preset}: {base.num_heads} heads / "
    f"{base.num_kv_heads} kv, head_dim {base.resolved_head_dim}, {base.compute_dtype}; "
    f"one micro-batch of {args.micro_batch_size} x {args.seq_len} tokens",
    flush=True,
  )

  programs, params = {}, None
  for name in names:
    config = dataclasses.replace(base, **overrides[name])
    graphdef, state = nnx.split(Llama(config, rngs=nnx.Rngs(0)), nnx.Param)
    params = state if params is None else params  # the same weights for every variant
    loss = lambda p, graphdef=graphdef: next_token_loss(nnx.merge(graphdef, p), tokens)
    programs[name] = jax.jit(jax.value_and_grad(loss)).lower(params).compile()
  memory = {name: int(p.memory_analysis().temp_size_in_bytes) for name, p in programs.items()}
  results = {name: program(params) for name, program in programs.items()}
  error = {name: relative_difference(results[name], results[FULL]) for name in names}

  def one_call(name):
    jax.block_until_ready(programs[name](params))

  # Two warm-up rounds settle caches and thread pools.
  times = time_rounds(one_call, names, args.rounds, log=print_rounds(args.rounds))
  rows = {
    name: {
      **overrides[name],
      "median_ms": round(summarize(times[name]).median * 1e3, 2),
      "min_ms": round(summarize(times[name]).min * 1e3, 2),
      "time_over_full": round(paired_ratio(times[name], times[FULL]), 4),
      "temp_mib": round(memory[name] / 2**20, 3),
      "max_relative_difference": float(f"{error[name]:.3g}"),
    }
    for name in names
  }
  print(
    "\n| attention | median fwd+bwd (ms) | min (ms) | time / full mask | XLA temp (MiB) | "
    "max rel. diff. |"
  )
  print("|---|---:|---:|---:|---:|---:|")
  for name, row in rows.items():
    print(
      f"| {name} | {row['median_ms']:.1f} | {row['min_ms']:.1f} | "
      f"{row['time_over_full']:.3f} | {row['temp_mib']:.2f} | "
      f"{row['max_relative_difference']:.1e} |"
    )
  result = {
    "preset": args.preset,
    "backend": backend,
    "device": jax.devices()[0].device_kind,
    "jax": jax.__version__,
    "micro_batch_size": args.micro_batch_size,
    "seq_len": args.seq_len,
    "rounds": args.rounds,
    "variants": rows,
  }
  write_report(args.out / f"attention-{args.preset}-{backend}.json", result)


if __name__ == "__main__":
  main()
