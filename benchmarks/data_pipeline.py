"""A token cache's size, the grain pipeline's throughput from it, and the demo model's speed.

Measures, in one run on this machine:
  * documents, bytes and tokens of every set of the cache (the built-in corpus's,
    byte-level, unless ``--data`` names another);
  * tokens/s that the grain mixture delivers from the memory-mapped cache (outer steps of
    K micro-batches, through ``to_iter_dataset`` exactly as training reads them);
  * the demo Llama's forward + backward time per token (one jitted value_and_grad on a
    micro-batch), and its full AdamW + Nexus outer step rate in tokens/s;
  * their ratio: the loader must outrun the model by a wide margin.

Run from the repository root:
  python -m benchmarks.data_pipeline [--steps 200] [--repeats 5]
The last line printed is a JSON object with every figure but the corpus table; all of
them are written to ``benchmarks/out/data_pipeline/data_pipeline.json``.
"""

import argparse
import pathlib
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import nexus_optax as nx
from benchmarks.common import add_out_flag, time_calls, write_report
from models import Llama, get_preset, next_token_loss
from train.data import LoaderConfig, TokenCache, ensure_default_cache, training_dataset


def cache_table(cache) -> list[dict]:
  return [
    {
      "set": key,
      "documents": stats["documents"],
      "bytes": stats["bytes"],
      "tokens": stats["tokens"],
    }
    for key, stats in cache.manifest["sets"].items()
  ]


def loader_tokens_per_second(dataset, steps: int, tokens_per_step: int) -> float:
  iterator = iter(dataset.to_iter_dataset())
  next(iterator)  # thread pool start-up is not throughput
  start = time.perf_counter()
  for _ in range(steps):
    next(iterator)
  return steps * tokens_per_step / (time.perf_counter() - start)


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="demo")
  parser.add_argument("--micro-batch-size", type=int, default=8)
  parser.add_argument("--microbatches", type=int, default=4)
  parser.add_argument("--steps", type=int, default=200, help="outer steps read from the loader")
  parser.add_argument("--repeats", type=int, default=5, help="timed model steps (median)")
  parser.add_argument(
    "--data",
    type=pathlib.Path,
    default=None,
    help="a prepared token cache (default: the built-in corpus's)",
  )
  add_out_flag(parser, "data_pipeline")
  return parser.parse_args(argv)


def measure(
  cache: TokenCache,
  preset: str = "demo",
  micro_batch_size: int = 8,
  microbatches: int = 4,
  steps: int = 200,
  repeats: int = 5,
) -> dict:
  """Every figure of the report (printed as it comes): the cache's table, the loader's
  tokens/s over ``steps`` outer steps, and the median of ``repeats`` model steps."""
  rows = cache_table(cache)
  print(f"cache: {cache.root} ({cache.tokenizer_info['kind']} tokenizer)")
  print("| set | documents | bytes | tokens |\n|---|---:|---:|---:|")
  for row in rows:
    print(f"| {row['set']} | {row['documents']:,} | {row['bytes']:,} | {row['tokens']:,} |")

  config = get_preset(preset, vocab_size=cache.padded_vocab_size)
  seq_len = config.max_seq_len
  loader = LoaderConfig(
    seq_len=seq_len, micro_batch_size=micro_batch_size, microbatches=microbatches
  )
  dataset, _ = training_dataset(cache, cache.default_mixture, loader)
  tokens_per_step = microbatches * micro_batch_size * seq_len
  loader_rate = loader_tokens_per_second(dataset, steps, tokens_per_step)

  model = Llama(config, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  loss_fn = lambda p, tokens: next_token_loss(nnx.merge(graphdef, p), tokens)
  batch = dataset[0]["tokens"]
  grad_fn = jax.jit(jax.value_and_grad(loss_fn))
  micro_batch = jnp.asarray(batch[0])
  # One untimed call compiles; the median of the timed ones is the figure.
  forward_backward = time_calls(
    lambda: jax.block_until_ready(grad_fn(params, micro_batch)), repeats
  ).median
  micro_batch_tokens = micro_batch_size * seq_len

  tx = optax.chain(
    nx.nexus(inner_lr=0.01),
    optax.clip_by_global_norm(1.0),
    optax.adamw(1e-3, b1=0.9, b2=0.95, eps=1e-10, weight_decay=0.2),
  )
  state = tx.init(params)

  @jax.jit
  def train_step(params, state, microbatches):
    updates, state = tx.update(None, state, params, loss_fn=loss_fn, microbatches=microbatches)
    return optax.apply_updates(params, updates), state

  outer_batch = jnp.asarray(batch)
  outer_step = time_calls(
    lambda: jax.block_until_ready(train_step(params, state, outer_batch)), repeats
  ).median
  model_rate = tokens_per_step / outer_step

  non_embedding = config.non_embedding_params()
  flops = config.flops_per_token(seq_len) * micro_batch_tokens / forward_backward
  report = {
    "preset": preset,
    "non_embedding_params": non_embedding,
    "seq_len": seq_len,
    "micro_batch_size": micro_batch_size,
    "microbatches": microbatches,
    "loader_tokens_per_s": round(loader_rate),
    "forward_backward_us_per_token": round(forward_backward / micro_batch_tokens * 1e6, 2),
    "forward_backward_gflops_per_s": round(flops / 1e9, 1),
    "nexus_adamw_step_s": round(outer_step, 3),
    "nexus_adamw_tokens_per_s": round(model_rate),
    "loader_over_model": round(loader_rate / model_rate, 1),
    "tokens_in_6_minutes": round(model_rate * 360),
    "backend": jax.default_backend(),
    "devices": jax.device_count(),
    "tokenizer": cache.tokenizer_info["kind"],
    "cache": str(cache.root),
    "corpus": rows,
    "jax": jax.__version__,
  }
  print(
    f"\n{preset}: {non_embedding / 1e6:.2f}M non-embedding parameters, "
    f"sequences of {seq_len}, K = {microbatches} x {micro_batch_size}"
  )
  print(
    f"forward + backward: {report['forward_backward_us_per_token']} us/token "
    f"({report['forward_backward_gflops_per_s']} GFLOP/s)"
  )
  print(f"AdamW + Nexus outer step: {outer_step:.3f} s = {model_rate:,.0f} tokens/s")
  print(f"grain loader: {loader_rate:,.0f} tokens/s = {report['loader_over_model']}x the model")
  return report


def main(argv=None) -> dict:
  args = parse_args(argv)
  cache = TokenCache(args.data) if args.data else ensure_default_cache()
  report = measure(
    cache, args.preset, args.micro_batch_size, args.microbatches, args.steps, args.repeats
  )
  write_report(args.out / "data_pipeline.json", report, print_without=("corpus",))
  return report


if __name__ == "__main__":
  main()
