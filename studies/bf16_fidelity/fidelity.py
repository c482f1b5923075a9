"""How much of Nexus's second-order term survives bfloat16 numerics, as the model grows.

Nexus's pseudo-gradient is g_hat = F + s: F = gamma * sum_m u_m(theta_0), the unit
gradients at the start point (``nexus_optax.diagnostics.first_order_pseudo_gradient``),
and s, the Hessian-coupling term that the inner steps add. An inner step moves each of N
parameters by about gamma / sqrt(N), while bfloat16 resolves a weight of size |w| only to
|w| * 2^-8. For large N the inner steps fall below that resolution wherever a weight is
rounded to bfloat16, and s can drown in rounding.

For each model size the script takes one outer step's g_hat and F on the same weights and
the same K = 4 micro-batches (one per training domain of the default corpus) in float32
(the reference: g_ref, F_ref, s_ref = g_ref - F_ref) and under each precision mode
(g, F, s = g - F in that mode's numerics), and reports, in units of ||s_ref||:

  survival   <s, s_ref> / ||s_ref||^2  (1: the term survives; 0: it is erased)
  cosine     cos(s, s_ref)
  to_fp32    ||g - g_ref|| / ||s_ref||  (the bf16 g_hat against the float32 g_hat)
  to_first   ||g - F_ref|| / ||s_ref||  (... against the first-order-only sum: 1 if s is
             intact and nothing else moved; 0 if g_hat collapsed onto F)
  first_err  ||F - F_ref|| / ||s_ref||  (bf16 error of the first-order part alone)

Precision modes (``models.llama`` casts each weight to ``compute_dtype`` at its matmul):
  bf16-compute        float32 parameters, bfloat16 matmuls and activations (the paper
                      presets' setting, MaxText's default); reference at the same weights.
  bf16-params         parameters stored in bfloat16, so the inner point
                      ``params - delta`` is rounded to bfloat16 (``inner_rounding="nearest"``).
  bf16-params+fp32    the same bfloat16 weights, held in float32 so that the inner point is
                      float32: "fp32 inner params with bf16 matmuls".
  bf16-params+sr      bfloat16 parameters, inner point rounded stochastically
                      (``nexus(inner_rounding="stochastic")``).
The three bf16-params modes are compared with float32 at the bfloat16-rounded weights.
``bf16-compute`` is also run with gamma scaled up (``--gamma-scales``), each against
float32 at the same gamma.

Presets above ``demo`` run the full model on a slice of data (K micro-batches of
batch x seq-len tokens). The command is ``python -m studies.bf16_fidelity``
(``studies/bf16_fidelity/cli.py``), which writes ``results.json``, ``results.md`` and
``fidelity.png`` to ``studies/bf16_fidelity/results/``.
"""

import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import nexus_optax as nx
from models import Llama, get_preset, next_token_loss
from train.data import corpus as corpus_lib
from train.data.mixture import source_sequences

MODES = ("bf16-compute", "bf16-params", "bf16-params+fp32", "bf16-params+sr")


def domain_microbatches(batch: int, seq_len: int, seed: int) -> np.ndarray:
  """[K, batch, seq_len + 1] tokens: micro-batch k is drawn from training domain k."""
  cache = corpus_lib.ensure_default_cache()
  rng = np.random.default_rng(seed)
  stacks = []
  for domain in corpus_lib.DOMAINS:
    sequences = source_sequences(cache, domain, seq_len)
    stacks.append(
      np.stack([sequences[i] for i in rng.choice(len(sequences), batch, replace=False)])
    )
  return np.stack(stacks).astype(np.int32)


def pseudo_gradient_parts(
  graphdef, params, tokens, inner_lr, inner_rounding="nearest", rounding_key=None
):
  """(g_hat, F) of one outer step, both float32 trees."""

  def loss_fn(p, batch):
    return next_token_loss(nnx.merge(graphdef, p), batch)

  g_hat = nx.inner_loop(
    loss_fn, params, tokens, inner_lr, inner_rounding=inner_rounding, rounding_key=rounding_key
  ).displacement
  first = nx.diagnostics.first_order_pseudo_gradient(loss_fn, params, tokens, inner_lr)
  return g_hat, first


@jax.jit
def fidelity(g_hat, first, g_ref, first_ref) -> dict:
  """The figures of the module docstring, in units of ||s_ref||."""
  s_ref = jax.tree.map(jnp.subtract, g_ref, first_ref)
  s = jax.tree.map(jnp.subtract, g_hat, first)
  norm = lambda tree: optax.tree.norm(tree)  # noqa: E731
  ref_norm = norm(s_ref)
  return {
    "survival": optax.tree.vdot(s, s_ref) / ref_norm**2,
    "cosine": optax.tree.vdot(s, s_ref) / (norm(s) * ref_norm),
    "to_fp32": norm(jax.tree.map(jnp.subtract, g_hat, g_ref)) / ref_norm,
    "to_first": norm(jax.tree.map(jnp.subtract, g_hat, first_ref)) / ref_norm,
    "first_err": norm(jax.tree.map(jnp.subtract, first, first_ref)) / ref_norm,
    "second_over_g_hat": ref_norm / norm(g_ref),
  }


def bf16_spacing(params) -> float:
  """Median over all weights of the gap between neighbouring bfloat16 values at |w|."""
  values = np.concatenate(
    [np.abs(np.asarray(leaf, np.float32)).ravel() for leaf in jax.tree.leaves(params)]
  )
  exponent = np.floor(np.log2(np.maximum(values, np.finfo(np.float32).tiny)))
  return float(np.median(2.0 ** (exponent - 7)))


def measure_size(name: str, tokens: np.ndarray, args, gammas) -> dict:
  config = get_preset(name, param_dtype="float32", compute_dtype="float32")
  model = Llama(config, rngs=nnx.Rngs(args.seed))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  num_params = sum(leaf.size for leaf in jax.tree.leaves(params))
  graphdefs = {
    dtypes: nnx.graphdef(
      nnx.eval_shape(
        lambda dtypes=dtypes: Llama(
          get_preset(name, param_dtype=dtypes[0], compute_dtype=dtypes[1]), rngs=nnx.Rngs(0)
        )
      )
    )
    for dtypes in (("float32", "float32"), ("float32", "bfloat16"), ("bfloat16", "bfloat16"))
  }
  step = args.inner_lr / np.sqrt(num_params)
  spacing = bf16_spacing(params)
  parts = jax.jit(pseudo_gradient_parts, static_argnums=(0, 4))
  key = jax.random.key(args.seed, impl="rbg")  # as nexus() makes it
  rows = {}

  def record(label, gamma, result, reference, started):
    figures = {k: float(v) for k, v in fidelity(*result, *reference).items()}
    rows[label] = {"inner_lr": gamma, **figures, "seconds": round(time.perf_counter() - started, 1)}
    print(
      f"  {label:<24} survival {figures['survival']:+.3f}  cosine {figures['cosine']:+.3f}  "
      f"to_fp32 {figures['to_fp32']:.3f}  to_first {figures['to_first']:.3f}  "
      f"first_err {figures['first_err']:.3f}  ({rows[label]['seconds']:.0f} s)",
      flush=True,
    )

  fp32 = graphdefs["float32", "float32"]
  for gamma in gammas:
    started = time.perf_counter()
    reference = parts(fp32, params, tokens, gamma, "nearest")
    suffix = "" if gamma == gammas[0] else f" (gamma {gamma:g})"
    record(
      "bf16-compute" + suffix,
      gamma,
      parts(graphdefs["float32", "bfloat16"], params, tokens, gamma, "nearest"),
      reference,
      started,
    )
    del reference
  gamma = gammas[0]
  # One float32 copy of the weights at a time keeps the 300M preset within 16 GB.
  params_bf16 = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
  del params, model
  params_on_grid = jax.tree.map(lambda p: p.astype(jnp.float32), params_bf16)
  started = time.perf_counter()
  reference = parts(fp32, params_on_grid, tokens, gamma, "nearest")
  bf16 = graphdefs["bfloat16", "bfloat16"]
  record(
    "bf16-params", gamma, parts(bf16, params_bf16, tokens, gamma, "nearest"), reference, started
  )
  started = time.perf_counter()
  record(
    "bf16-params+fp32",
    gamma,
    parts(graphdefs["float32", "bfloat16"], params_on_grid, tokens, gamma, "nearest"),
    reference,
    started,
  )
  started = time.perf_counter()
  record(
    "bf16-params+sr",
    gamma,
    parts(bf16, params_bf16, tokens, gamma, "stochastic", key),
    reference,
    started,
  )
  return {
    "preset": name,
    "params": int(num_params),
    "non_embedding_params": config.non_embedding_params(),
    "per_element_step": float(step),
    "median_bf16_spacing": spacing,
    "step_over_spacing": float(step / spacing),
    "modes": rows,
  }


def markdown_table(sizes: list[dict]) -> str:
  lines = [
    "| preset | params | gamma/sqrt(N) / bf16 spacing | mode | gamma | survival | cosine | "
    "to_fp32 | to_first | first_err | s / g_hat (fp32) |",
    "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for size in sizes:
    for label, row in size["modes"].items():
      lines.append(
        f"| {size['preset']} | {size['params'] / 1e6:,.2f}M | {size['step_over_spacing']:.3f} | "
        f"{label.split(' (')[0]} | {row['inner_lr']:g} | {row['survival']:+.3f} | "
        f"{row['cosine']:+.3f} | {row['to_fp32']:.3f} | {row['to_first']:.3f} | "
        f"{row['first_err']:.3f} | {row['second_over_g_hat']:.4f} |"
      )
  return "\n".join(lines)


def plot(sizes: list[dict], path: pathlib.Path) -> None:
  # matplotlib (the bench extra) loads only where a study draws.
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  params = [size["params"] for size in sizes]
  labels = list(sizes[0]["modes"])
  figure, axes = plt.subplots(1, 2, figsize=(12, 4.6))
  for label in labels:
    style = "--" if "gamma" in label else "-"
    for axis, key in zip(axes, ("survival", "to_fp32")):
      axis.plot(
        params, [size["modes"][label][key] for size in sizes], style, marker="o", label=label
      )
  axes[0].axhline(1.0, color="grey", lw=0.8)
  axes[0].axhline(0.0, color="grey", lw=0.8)
  axes[0].set_ylabel("<s, s_fp32> / ||s_fp32||^2  (1 = second-order term intact)")
  axes[0].set_title("How much of the second-order term survives")
  axes[1].axhline(1.0, color="grey", lw=0.8)
  axes[1].set_yscale("log")
  axes[1].set_ylabel("||g_hat - g_hat_fp32|| / ||s_fp32||")
  axes[1].set_title("Error of g_hat, in units of the second-order term")
  for axis in axes:
    axis.set_xscale("log")
    axis.set_xlabel("parameters (tiny, mini, demo, ...)")
    axis.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


def write_results(out: pathlib.Path, result: dict) -> str:
  """Writes ``result`` (command, jax, backend, sizes) as ``results.json``, its table as
  ``results.md`` and its plot as ``fidelity.png``; returns the table."""
  table = markdown_table(result["sizes"])
  (out / "results.md").write_text(
    f"Command: `{result['command']}` (jax {result['jax']}, {result['backend']}).\n\n{table}\n"
  )
  (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
  plot(result["sizes"], out / "fidelity.png")
  return table
