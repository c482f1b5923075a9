"""Nexus in plain JAX with optax: a linear model fit to four data sources.

Each outer step takes K = 4 micro-batches, one per source, runs Nexus's four normalized
inner steps and hands the displacement to AdamW. Run: ``python -m examples.plain_jax``.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nexus_optax as nx

SOURCES, ROWS, FEATURES = 4, 32, 8


def make_microbatches(seed: int) -> dict:
  """One micro-batch per source; the sources share a target and differ in their inputs."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(SOURCES, ROWS, FEATURES)) + np.arange(SOURCES)[:, None, None]
  y = x @ np.linspace(-1.0, 1.0, FEATURES) + 0.1 * rng.normal(size=(SOURCES, ROWS))
  return {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y, jnp.float32)}


def loss_fn(params, batch):
  return jnp.mean((batch["x"] @ params["w"] + params["b"] - batch["y"]) ** 2)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=50)
  args = parser.parse_args(argv)

  params = {"w": jnp.zeros(FEATURES), "b": jnp.zeros([])}
  tx = optax.chain(
    nx.nexus(inner_lr=0.01),  # first in the chain: it computes its own gradients
    optax.clip_by_global_norm(1.0),
    optax.adamw(3e-2, b1=0.9, b2=0.95, eps=1e-10, weight_decay=0.0),
  )
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, opt_state, microbatches):  # every leaf: [K, ...]
    updates, opt_state = tx.update(
      None, opt_state, params, loss_fn=loss_fn, microbatches=microbatches
    )
    return optax.apply_updates(params, updates), opt_state

  # What Nexus alone hands to the outer optimizer at the first step: g_hat.
  nexus_alone = nx.nexus(inner_lr=0.01)
  first = make_microbatches(0)
  pseudo_gradient, _ = nexus_alone.update(
    None, nexus_alone.init(params), params, loss_fn=loss_fn, microbatches=first
  )

  losses = []
  for step in range(args.steps):
    microbatches = make_microbatches(step)
    params, opt_state = train_step(params, opt_state, microbatches)
    metrics = nx.nexus_metrics(opt_state)
    losses.append(float(metrics["inner_loss"]))
    if step % 10 == 0 or step == args.steps - 1:
      print(
        f"step {step:3d}  inner loss {losses[-1]:.4f}  "
        f"consensus {float(metrics['consensus']):+.3f}  "
        f"|g_hat| {float(metrics['pseudo_grad_norm']):.4f}"
      )
  return {
    "first_microbatches": first,
    "first_pseudo_gradient": pseudo_gradient,
    "initial_params": {"w": jnp.zeros(FEATURES), "b": jnp.zeros([])},
    "losses": losses,
    "params": params,
  }


if __name__ == "__main__":
  main()
