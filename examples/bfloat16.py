"""bfloat16 parameters: what nearest rounding loses of Nexus's second-order term.

Nexus's pseudo-gradient is gamma times the sum of the K unit gradients at the start point
(first order, what ``nx.diagnostics.first_order_pseudo_gradient`` computes) plus a
second-order term from taking each gradient at the moved inner point. With parameters
*stored* in bfloat16, the inner point is rounded to bfloat16, and an inner step smaller
than half a bfloat16 spacing vanishes, and the second-order term with it.
``inner_rounding="stochastic"`` rounds up or down at random, exact in expectation.
Run: ``python -m examples.bfloat16``.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nexus_optax as nx

K, ROWS, FEATURES, CLASSES = 4, 32, 64, 8
GAMMA = 0.01


def loss_fn(params, batch):  # the forward pass in float32 whatever the parameters' dtype
  logits = batch["x"] @ params["w"].astype(jnp.float32)
  return optax.losses.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()


def make_problem(seed: int = 0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(K, ROWS, FEATURES)) + rng.normal(size=(K, 1, FEATURES))  # K sources
  labels = rng.integers(0, CLASSES, size=(K, ROWS))
  microbatches = {"x": jnp.asarray(x, jnp.float32), "labels": jnp.asarray(labels)}
  w = jnp.asarray(0.5 * rng.normal(size=(FEATURES, CLASSES)), jnp.bfloat16)
  return {"w": w}, microbatches


def second_order_term(params, microbatches, **nexus_options) -> jax.Array:
  """g_hat minus its first-order part: the term that couples the micro-batches."""
  tx = nx.nexus(GAMMA, **nexus_options)
  g_hat, _ = tx.update(None, tx.init(params), params, loss_fn=loss_fn, microbatches=microbatches)
  first = nx.diagnostics.first_order_pseudo_gradient(loss_fn, params, microbatches, GAMMA)
  return (g_hat["w"].astype(jnp.float32) - first["w"]).ravel()


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, default=32, help="stochastic-rounding seeds to average")
  args = parser.parse_args(argv)
  bf16_params, microbatches = make_problem()
  f32_params = jax.tree.map(lambda p: p.astype(jnp.float32), bf16_params)

  exact = second_order_term(f32_params, microbatches)  # float32 weights: nothing is rounded
  nearest = second_order_term(bf16_params, microbatches)
  stochastic = jax.jit(
    lambda seed: second_order_term(
      bf16_params, microbatches, inner_rounding="stochastic", rounding_seed=seed
    )
  )
  draws = jnp.stack([stochastic(seed) for seed in range(args.seeds)])
  relative = lambda s: float(jnp.linalg.norm(s - exact) / jnp.linalg.norm(exact))
  errors = {
    "nearest": relative(nearest),
    "stochastic, one seed": relative(draws[0]),
    f"stochastic, mean of {args.seeds} seeds": relative(draws.mean(0)),
  }
  print(f"second-order term |s| = {float(jnp.linalg.norm(exact)):.2e} with float32 weights")
  for name, error in errors.items():
    print(f"bfloat16 weights, {name:28s} |s - s_float32| / |s_float32| = {error:.3f}")
  return {"exact": exact, "nearest": nearest, "stochastic_draws": draws, "errors": errors}


if __name__ == "__main__":
  main()
