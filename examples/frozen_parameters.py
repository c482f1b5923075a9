"""Frozen parameters with ``mask=``: a frozen embedding table and a trained head.

``mask=`` takes what ``optax.masked`` takes: a pytree of bools (or a prefix of one) or a
callable of the parameters. Masked-out leaves take no inner step, stay out of the norm,
are not differentiated and get a zero pseudo-gradient. Mask the outer optimizer as well,
or its weight decay still moves them. Run: ``python -m examples.frozen_parameters``.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nexus_optax as nx

K, ROWS, VOCAB, WIDTH = 4, 16, 12, 6


def loss_fn(params, batch):
  features = params["embedding"][batch["tokens"]]  # [rows, width]
  logits = features @ params["head"]["w"] + params["head"]["b"]
  return optax.losses.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()


def make_microbatches(seed: int) -> dict:
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, VOCAB, size=(K, ROWS))
  return {
    "tokens": jnp.asarray(tokens),
    "labels": jnp.asarray((tokens + np.arange(K)[:, None]) % 3),
  }


def initial_params() -> dict:
  keys = jax.random.split(jax.random.key(0), 2)
  return {
    "embedding": jax.random.normal(keys[0], (VOCAB, WIDTH)),
    "head": {"w": 0.1 * jax.random.normal(keys[1], (WIDTH, 3)), "b": jnp.zeros(3)},
  }


def trainable(params):  # a callable of params, as optax.masked takes
  return {"embedding": False, "head": jax.tree.map(lambda _: True, params["head"])}


def transformations() -> dict:
  labels = lambda params: {"embedding": "frozen", "head": {"w": "train", "b": "train"}}
  return {
    # Nexus first, then the outer optimizer masked the same way.
    "masked": optax.chain(
      nx.nexus(0.01, mask=trainable),
      optax.masked(optax.adamw(1e-2, weight_decay=0.1), trainable),
    ),
    # Or multi_transform after Nexus, with a zero update for the frozen label.
    "multi_transform": optax.chain(
      nx.nexus(0.01, mask=trainable),
      optax.multi_transform(
        {"train": optax.adamw(1e-2, weight_decay=0.1), "frozen": optax.set_to_zero()}, labels
      ),
    ),
  }


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=3)
  args = parser.parse_args(argv)
  results = {}
  for name, tx in transformations().items():
    params, state = initial_params(), None
    state = tx.init(params)

    @jax.jit
    def step(params, state, microbatches, tx=tx):
      updates, state = tx.update(None, state, params, loss_fn=loss_fn, microbatches=microbatches)
      return optax.apply_updates(params, updates), state

    for seed in range(args.steps):
      params, state = step(params, state, make_microbatches(seed))
    results[name] = params
  # The transparent form wraps its outer optimizer in optax.masked itself.
  transparent = nx.nexus_multisteps(optax.adamw(1e-2, weight_decay=0.1), every_k=K, mask=trainable)
  params = initial_params()
  state = transparent.init(params)
  for seed in range(args.steps):
    microbatches = make_microbatches(seed)
    for m in range(K):
      batch = jax.tree.map(lambda leaf, m=m: leaf[m], microbatches)
      grads = jax.grad(loss_fn)(params, batch)
      updates, state = transparent.update(grads, state, params)
      params = optax.apply_updates(params, updates)
  results["nexus_multisteps"] = params
  frozen = initial_params()["embedding"]
  for name, params in results.items():
    kept = bool(jnp.array_equal(params["embedding"], frozen))
    moved = float(jnp.max(jnp.abs(params["head"]["w"] - initial_params()["head"]["w"])))
    print(f"{name:17s} embedding unchanged: {kept}; head moved by up to {moved:.4f}")
  return results


if __name__ == "__main__":
  main()
