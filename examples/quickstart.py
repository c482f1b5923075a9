"""Quickstart: train a small byte-level transformer with AdamW + Nexus on three real sources.

The sources ship with every CPython, so nothing is downloaded:
  code        the standard library's Python source (json and email held out);
  docs        the Python documentation topics of ``pydoc_data`` (every 10th held out);
  docstrings  the docstrings of the standard library's modules, classes and functions.
Each outer step draws one micro-batch per source (Algorithm 1's setting: K = 3
sources, in a random order), runs Nexus's three normalized inner steps and hands the
displacement to AdamW. Every ``--log-every`` steps it prints the mean inner loss,
the per-source validation loss in bits per byte, and Nexus's free consensus
estimate (mean pairwise cosine of the micro-batch gradients); at the end, the exact
cross-source gradient cosine matrix.

Run from the repository root: ``python -m examples.quickstart [--steps 300]``.
"""

import argparse
import ast
import collections
import gc
import math
import os
import pathlib
import sysconfig
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nexus_optax as nx
from models.tiny_transformer import TransformerConfig, count_params, init_params, next_byte_loss

HELD_OUT_PACKAGES = ("json", "email")
SKIPPED_DIRS = {
  "test",
  "tests",
  "idle_test",
  "lib2to3",
  "site-packages",
  "encodings",
  "pydoc_data",
  "__pycache__",
  "turtledemo",
}


def _stdlib_files():
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  files = []
  for folder, subfolders, names in os.walk(root):
    subfolders[:] = [name for name in subfolders if name not in SKIPPED_DIRS]  # never entered
    files.extend(pathlib.Path(folder, name) for name in names if name.endswith(".py"))
  return root, sorted(files)


# Every def and class sits in a statement block; no expression holds one, so the walk below
# never enters an expression (most of a module's nodes).
_BLOCK_FIELDS = ("body", "handlers", "orelse", "finalbody", "cases")
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _documented_nodes(tree: ast.Module) -> list[ast.AST]:
  """The module, then its functions and classes in ``ast.walk``'s breadth-first order."""
  nodes, queue = [tree], collections.deque(tree.body)
  while queue:
    node = queue.popleft()
    if isinstance(node, _DEFINITIONS):
      nodes.append(node)
    for field in _BLOCK_FIELDS:
      queue.extend(getattr(node, field, ()))
  return nodes


def load_sources(max_bytes: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Returns {source: (train_bytes, validation_bytes)} as uint8 arrays."""
  root, files = _stdlib_files()
  code = {"train": [], "validation": []}
  docstrings = {"train": [], "validation": []}
  # The parse allocates millions of acyclic nodes, each burst of which would start a
  # collection that rescans every object jax has loaded: collect once, after.
  gc.disable()
  try:
    for index, path in enumerate(files):
      text = path.read_text(encoding="utf-8", errors="replace")
      held_out = path.relative_to(root).parts[0] in HELD_OUT_PACKAGES
      code["validation" if held_out else "train"].append(text)
      try:
        tree = ast.parse(text)
      except SyntaxError:
        continue
      docs = [d for d in (ast.get_docstring(n) for n in _documented_nodes(tree)) if d]
      docstrings["validation" if index % 10 == 0 else "train"].extend(docs)
  finally:
    gc.enable()

  from pydoc_data.topics import topics  # the stdlib's own copy of the docs' topics

  names = sorted(topics)
  docs = {
    "train": [topics[n] for i, n in enumerate(names) if i % 10],
    "validation": [topics[n] for i, n in enumerate(names) if i % 10 == 0],
  }

  def encode(texts, limit):
    data = np.frombuffer("\n\n".join(texts).encode("utf-8"), np.uint8)
    return data[:limit]

  return {
    name: (encode(split["train"], max_bytes), encode(split["validation"], max_bytes // 8))
    for name, split in (("code", code), ("docs", docs), ("docstrings", docstrings))
  }


def sample_windows(data: np.ndarray, rng: np.random.Generator, count: int, length: int):
  starts = rng.integers(0, len(data) - length, size=count)
  return np.stack([data[s : s + length] for s in starts]).astype(np.int32)


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300, help="outer steps")
  parser.add_argument("--inner-lr", type=float, default=0.01, help="Nexus gamma")
  parser.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate")
  parser.add_argument("--micro-batch", type=int, default=8, help="sequences per micro-batch")
  parser.add_argument("--seq-len", type=int, default=128)
  parser.add_argument("--log-every", type=int, default=25)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  for name in ("steps", "micro_batch", "seq_len", "log_every"):
    if getattr(args, name) < 1:
      parser.error(f"--{name.replace('_', '-')} must be >= 1")
  for name in ("inner_lr", "lr"):
    if not getattr(args, name) > 0:
      parser.error(f"--{name.replace('_', '-')} must be > 0")
  return args


def main():
  args = parse_args()
  print("loading the standard library's code, docs and docstrings ...", flush=True)
  sources = load_sources(max_bytes=4_000_000)
  names = sorted(sources)
  for name in names:
    train, validation = sources[name]
    print(
      f"  {name:<10} {len(train) / 1e6:5.2f} MB train, {len(validation) / 1e6:5.2f} MB validation"
    )

  config = TransformerConfig(d_model=128, num_layers=2, num_heads=4, seq_len=args.seq_len)
  params = init_params(config, jax.random.key(args.seed))
  loss_fn = lambda p, tokens: next_byte_loss(p, tokens, config)
  schedule = optax.warmup_cosine_decay_schedule(
    0.0, args.lr, max(1, args.steps // 10), args.steps, end_value=args.lr / 10
  )
  tx = optax.chain(
    nx.nexus(inner_lr=args.inner_lr),
    optax.clip_by_global_norm(1.0),
    optax.adamw(schedule, b1=0.9, b2=0.95, eps=1e-10, weight_decay=0.2),
  )
  state = tx.init(params)

  @jax.jit
  def train_step(params, state, microbatches):
    updates, state = tx.update(None, state, params, loss_fn=loss_fn, microbatches=microbatches)
    return optax.apply_updates(params, updates), state

  validation_loss = jax.jit(jax.vmap(loss_fn, in_axes=(None, 0)))
  rng = np.random.default_rng(args.seed)
  validation = np.stack(
    [
      sample_windows(sources[n][1], np.random.default_rng(100 + i), 64, args.seq_len + 1).reshape(
        8, 8, -1
      )
      for i, n in enumerate(names)
    ]
  )
  bits = lambda nats: nats / math.log(2)

  print(
    f"model: {count_params(params) / 1e6:.2f}M params; K = {len(names)} micro-batches "
    f"of {args.micro_batch} x {args.seq_len} bytes per outer step; gamma = {args.inner_lr}"
  )
  print(
    f"{'step':>6} {'inner loss':>10} "
    + " ".join(f"{'val ' + n:>14}" for n in names)
    + f" {'consensus':>9} {'tok/s':>7} {'ETA':>6}"
  )
  start = time.perf_counter()
  tokens_per_step = len(names) * args.micro_batch * args.seq_len
  for step in range(1, args.steps + 1):
    order = rng.permutation(len(names))
    microbatches = np.stack(
      [sample_windows(sources[names[i]][0], rng, args.micro_batch, args.seq_len + 1) for i in order]
    )
    params, state = train_step(params, state, microbatches)
    if step % args.log_every == 0 or step == args.steps:
      metrics = nx.nexus_metrics(state)
      val = [float(jnp.mean(validation_loss(params, validation[i]))) for i in range(len(names))]
      elapsed = time.perf_counter() - start
      eta = elapsed / step * (args.steps - step)
      print(
        f"{step:>6} {bits(float(metrics['inner_loss'])):>10.3f} "
        + " ".join(f"{bits(v):>14.3f}" for v in val)
        + f" {float(metrics['consensus']):>9.3f} {tokens_per_step * step / elapsed:>7.0f}"
        + f" {eta:>5.0f}s",
        flush=True,
      )

  cosine_matrix = jax.jit(
    lambda p, batches: nx.diagnostics.gradient_cosine_matrix(loss_fn, p, batches)
  )
  cosines = cosine_matrix(
    params, [jnp.asarray(validation[i].reshape(-1, args.seq_len + 1)) for i in range(len(names))]
  )
  print("\nlosses in bits per byte; cross-source gradient cosine at the end (validation windows):")
  print(" " * 11 + " ".join(f"{n:>10}" for n in names))
  for name, row in zip(names, np.asarray(cosines)):
    print(f"{name:>10} " + " ".join(f"{c:>10.3f}" for c in row))
  print(f"skipped inner steps: {int(nx.nexus_metrics(state)['skipped_steps'])}")


if __name__ == "__main__":
  main()
