"""Overhead of Nexus against plain gradient accumulation and optax.MultiSteps.

One outer step over the same K micro-batches, on a small plain-JAX transformer,
each followed by the same AdamW update:
  - nexus:        optax.chain(nexus(gamma), adamw), one jitted call (lax.scan inside);
  - accumulation: ``train.step.accumulated_gradient`` (a lax.scan summing float32
                  gradients, the training stack's own), then adamw, one jitted call;
  - multisteps:   optax.MultiSteps(adamw, K), K jitted calls of grad + update.
The three are timed interleaved, round after round, so machine noise hits them alike;
the report gives medians and the ratios against accumulation. Memory is XLA's
compiled temp allocation (``jit(...).lower(...).compile().memory_analysis()``).

Run from the repository root:
  python -m benchmarks.overhead                 # the size reported in RESULTS.md
  python -m benchmarks.overhead --quick         # a smoke run
The last line of output is one JSON object.
"""

import argparse
import platform

import jax
import jax.numpy as jnp
import optax

import nexus_optax as nx
from benchmarks.common import print_report, print_rounds, summarize, time_rounds
from models.tiny_transformer import TransformerConfig, count_params, init_params, next_byte_loss
from train.step import accumulated_gradient


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--d-model", type=int, default=256)
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--seq-len", type=int, default=128)
  parser.add_argument("--micro-batch", type=int, default=8, help="sequences per micro-batch")
  parser.add_argument("--k", type=int, default=4, help="micro-batches per outer step")
  parser.add_argument("--rounds", type=int, default=15, help="timed rounds per method")
  parser.add_argument("--quick", action="store_true", help="tiny sizes, 3 rounds")
  args = parser.parse_args()
  if args.quick:
    args.d_model, args.layers, args.seq_len, args.micro_batch, args.rounds = 64, 2, 32, 4, 3
  for name in ("d_model", "layers", "heads", "seq_len", "micro_batch", "k", "rounds"):
    if getattr(args, name) < 1:
      parser.error(f"--{name.replace('_', '-')} must be >= 1")
  if args.d_model % args.heads:
    parser.error("--d-model must be divisible by --heads")
  return args


def make_outer():
  return optax.adamw(1e-3, b1=0.9, b2=0.95, eps=1e-10, weight_decay=0.2)


def build_steps(loss_fn, k):
  nexus_tx = optax.chain(nx.nexus(0.01), make_outer())
  accumulation_tx = make_outer()
  multisteps_tx = optax.MultiSteps(make_outer(), every_k_schedule=k)

  def nexus_step(params, state, microbatches):
    updates, state = nexus_tx.update(
      None, state, params, loss_fn=loss_fn, microbatches=microbatches
    )
    return optax.apply_updates(params, updates), state

  def accumulation_step(params, state, microbatches):
    _, grads = accumulated_gradient(loss_fn, params, microbatches)
    updates, state = accumulation_tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  def multisteps_call(params, state, microbatch):
    grads = jax.grad(loss_fn)(params, microbatch)
    updates, state = multisteps_tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return {
    "nexus": (nexus_tx, jax.jit(nexus_step, donate_argnums=(0, 1))),
    "accumulation": (accumulation_tx, jax.jit(accumulation_step, donate_argnums=(0, 1))),
    "multisteps": (multisteps_tx, jax.jit(multisteps_call, donate_argnums=(0, 1))),
  }


def temp_bytes(jitted, *args) -> int:
  return int(jitted.lower(*args).compile().memory_analysis().temp_size_in_bytes)


def main():
  args = parse_args()
  config = TransformerConfig(
    d_model=args.d_model, num_layers=args.layers, num_heads=args.heads, seq_len=args.seq_len
  )
  params = init_params(config, jax.random.key(0))
  loss_fn = lambda p, tokens: next_byte_loss(p, tokens, config)
  tokens = jax.random.randint(
    jax.random.key(1), (args.k, args.micro_batch, args.seq_len + 1), 0, config.vocab_size
  )
  steps = build_steps(loss_fn, args.k)
  print(
    f"jax {jax.__version__} on {jax.devices()[0].platform} ({platform.processor() or 'cpu'}), "
    f"{count_params(params) / 1e6:.2f}M params, K={args.k} x {args.micro_batch} x "
    f"{args.seq_len} tokens per outer step",
    flush=True,
  )

  memory = {}
  for name, (tx, jitted) in steps.items():
    state = tx.init(params)
    batch = tokens if name != "multisteps" else tokens[0]
    memory[name] = temp_bytes(jitted, params, state, batch)

  carried = {
    name: (jax.tree.map(jnp.copy, params), tx.init(params)) for name, (tx, _) in steps.items()
  }

  def one_outer_step(name):
    _, jitted = steps[name]
    params, state = carried[name]
    if name == "multisteps":
      for m in range(args.k):
        params, state = jitted(params, state, tokens[m])
    else:
      params, state = jitted(params, state, tokens)
    carried[name] = jax.block_until_ready((params, state))

  # Two warm-up rounds compile and settle.
  times = time_rounds(one_outer_step, list(steps), args.rounds, log=print_rounds(args.rounds))
  median = {name: summarize(values).median for name, values in times.items()}
  # Per-round ratios pair each Nexus step with the accumulation step next to it in time.
  ratios = [n / a for n, a in zip(times["nexus"], times["accumulation"])]
  paired = summarize(ratios)
  print(
    "\n| method | median step (ms) | time / accumulation | XLA temp (MiB) | temp / accumulation |"
  )
  print("|---|---|---|---|---|")
  for name in steps:
    print(
      f"| {name} | {median[name] * 1e3:.1f} | {median[name] / median['accumulation']:.3f} | "
      f"{memory[name] / 2**20:.2f} | {memory[name] / memory['accumulation']:.3f} |"
    )
  print(
    f"\npaired per-round nexus/accumulation ratio: median {paired.median:.3f}, "
    f"min {paired.min:.3f}, max {max(ratios):.3f}"
  )
  result = {
    "time_ratio": round(median["nexus"] / median["accumulation"], 4),
    "paired_time_ratio": round(paired.median, 4),
    "memory_ratio": round(memory["nexus"] / memory["accumulation"], 4),
    "multisteps_time_ratio": round(median["multisteps"] / median["accumulation"], 4),
    "multisteps_memory_ratio": round(memory["multisteps"] / memory["accumulation"], 4),
    "median_ms": {name: round(v * 1e3, 2) for name, v in median.items()},
    "temp_bytes": memory,
    "params": count_params(params),
    "k": args.k,
    "micro_batch": args.micro_batch,
    "seq_len": args.seq_len,
    "rounds": args.rounds,
    "jax": jax.__version__,
    "backend": jax.default_backend(),
  }
  print_report(result)


if __name__ == "__main__":
  main()
