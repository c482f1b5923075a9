"""nexus-optax against what a PyTorch user would write: the paper's Algorithm 3, eager.

``TorchLlama`` is ``models.llama.Llama`` written again in PyTorch (RMSNorm, RoPE on
split halves, causal grouped-query attention, SwiGLU, untied or tied output), loaded
with the JAX model's initial weights. ``TorchNexus`` is Algorithm 3 of the paper as a
PyTorch user writes it:

  inner_model <- model.clone()
  for each of the K micro-batches:  loss(inner_model).backward(); NSGD step on inner_model
  g_hat = model - inner_model;  clip_grad_norm_(g_hat);  AdamW.step(grad=g_hat)

This script measures, in one process on the same weights and tokens:

  * agreement: one outer step's pseudo-gradient from ``nexus_optax.inner_loop`` and from
    ``TorchNexus``, as a relative L2 error (target <= 1e-4 in float32) and as a fraction
    of the second-order part of g_hat (g_hat minus gamma * sum of unit gradients at
    theta_start), which the agreement must resolve to mean anything;
  * speed: tokens/s of ``train.pretrain``'s jitted Nexus step (``train.build``: Nexus,
    clip, AdamW, one ``jax.jit``) against ``TorchNexus`` eager and with the loss under
    ``torch.compile``, interleaved round by round; the ratio is the median of per-round
    ratios (target nexus-optax / eager >= 1.5);
  * where the time goes: one micro-batch's forward and forward + backward in each
    framework, and each framework's float32 matmul throughput, best of 5.

Run from the repository root (PyTorch comes with the ``bench`` extra):
  python -m benchmarks.torch_reference [--preset demo] [--rounds 8] [--no-compile]
The last line printed is a JSON object with every figure; it is also written to
``benchmarks/out/torch_reference/torch_reference-<preset>.json``.
"""

import argparse
import copy
import platform

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from flax import nnx

import nexus_optax as nx
from benchmarks.common import (
  add_out_flag,
  paired_ratio,
  print_rounds,
  summarize,
  time_calls,
  time_rounds,
  write_report,
)
from models import LlamaConfig, next_token_loss
from train import parallel
from train.build import build_training
from train.config import TrainConfig
from train.presets import get_run_preset


def torch_layout(params: dict, config: LlamaConfig) -> dict[str, np.ndarray]:
  """The Llama's parameters (an ``nnx`` pure dict, stacked over layers) keyed by the
  names of :class:`TorchLlama`'s parameters, one layer per entry, heads flattened.

  The same map serves the weights and any parameter-shaped tree (a pseudo-gradient).
  """
  blocks = params["blocks"]
  n, kv, hd = config.num_heads, config.num_kv_heads, config.resolved_head_dim
  d = config.hidden_dim
  named = {
    "embedding": np.asarray(params["embedding"]),
    "final_norm": np.asarray(params["final_norm"]["scale"]),
  }
  if not config.tie_embeddings:
    named["unembedding"] = np.asarray(params["unembedding"])
  shapes = {
    ("attention_norm", "scale"): (d,),
    ("attention", "query"): (d, n * hd),
    ("attention", "key"): (d, kv * hd),
    ("attention", "value"): (d, kv * hd),
    ("attention", "output"): (n * hd, d),
    ("mlp_norm", "scale"): (d,),
    ("mlp", "gate"): (d, config.mlp_dim),
    ("mlp", "up"): (d, config.mlp_dim),
    ("mlp", "down"): (config.mlp_dim, d),
  }
  for layer in range(config.num_layers):
    for (group, name), shape in shapes.items():
      stacked = np.asarray(blocks[group][name])
      named[f"layers.{layer}.{group}_{name}"] = stacked[layer].reshape(shape)
  return named


def _at_least_fp32(x):
  # The JAX model keeps norms, RoPE and logits in float32; a float64 reference keeps float64.
  return x.to(torch.promote_types(x.dtype, torch.float32))


def _rms_norm(x, scale, eps):
  x32 = _at_least_fp32(x)
  normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
  return (normed * scale.to(x32.dtype)).to(x.dtype)


def _rope(x, cos, sin):
  first, second = _at_least_fp32(x).chunk(2, dim=-1)
  cos, sin = cos[:, None, :], sin[:, None, :]
  return torch.cat([first * cos - second * sin, second * cos + first * sin], -1).to(x.dtype)


class TorchBlock(torch.nn.Module):
  """One pre-norm decoder block, parameter for parameter as ``models.llama.Block``."""

  def __init__(self, config: LlamaConfig):
    super().__init__()
    d, m = config.hidden_dim, config.mlp_dim
    n, kv, hd = config.num_heads, config.num_kv_heads, config.resolved_head_dim
    self.config = config
    empty = lambda *shape: torch.nn.Parameter(torch.empty(*shape))  # noqa: E731
    self.attention_norm_scale, self.mlp_norm_scale = empty(d), empty(d)
    self.attention_query, self.attention_output = empty(d, n * hd), empty(n * hd, d)
    self.attention_key, self.attention_value = empty(d, kv * hd), empty(d, kv * hd)
    self.mlp_gate, self.mlp_up, self.mlp_down = empty(d, m), empty(d, m), empty(m, d)

  def forward(self, x, cos, sin):
    config, dtype = self.config, x.dtype
    batch, length, _ = x.shape
    heads, kv_heads, head_dim = config.num_heads, config.num_kv_heads, config.resolved_head_dim
    h = _rms_norm(x, self.attention_norm_scale, config.norm_eps)
    q = (h @ self.attention_query.to(dtype)).view(batch, length, heads, head_dim)
    k = (h @ self.attention_key.to(dtype)).view(batch, length, kv_heads, head_dim)
    v = (h @ self.attention_value.to(dtype)).view(batch, length, kv_heads, head_dim)
    q, k = _rope(q, cos, sin), _rope(k, cos, sin)
    mixed = F.scaled_dot_product_attention(
      q.transpose(1, 2),
      k.transpose(1, 2),
      v.transpose(1, 2),
      is_causal=True,
      enable_gqa=kv_heads != heads,
    )
    mixed = mixed.transpose(1, 2).reshape(batch, length, heads * head_dim)
    x = x + mixed @ self.attention_output.to(dtype)
    h = _rms_norm(x, self.mlp_norm_scale, config.norm_eps)
    hidden = F.silu(h @ self.mlp_gate.to(dtype)) * (h @ self.mlp_up.to(dtype))
    return x + hidden @ self.mlp_down.to(dtype)


class TorchLlama(torch.nn.Module):
  """``models.llama.Llama`` in PyTorch, built from the JAX model's parameters.

  ``dtype=torch.float64`` gives a float64 reference of the float32 model (parameters,
  activations, norms and logits all in float64); otherwise parameters are float32 and
  the matmuls run in ``config.compute_dtype``.

  Example:
    >>> from flax import nnx
    >>> from models import PRESETS, Llama
    >>> jax_model = Llama(PRESETS["tiny"], rngs=nnx.Rngs(0))
    >>> params = nnx.to_pure_dict(nnx.state(jax_model, nnx.Param))
    >>> model = TorchLlama(PRESETS["tiny"], params)
    >>> tokens = np.arange(32).reshape(2, 16) % 257
    >>> logits = model(torch.from_numpy(tokens)).detach().numpy()
    >>> bool(np.allclose(logits, jax_model(tokens), atol=1e-5))
    True
  """

  def __init__(self, config: LlamaConfig, params: dict, dtype=torch.float32):
    super().__init__()
    self.config = config
    self.compute_dtype = dtype if dtype == torch.float64 else getattr(torch, config.compute_dtype)
    named = torch_layout(params, config)
    self.embedding = torch.nn.Parameter(torch.empty(config.vocab_size, config.hidden_dim))
    self.layers = torch.nn.ModuleList(TorchBlock(config) for _ in range(config.num_layers))
    self.final_norm = torch.nn.Parameter(torch.empty(config.hidden_dim))
    if not config.tie_embeddings:
      self.unembedding = torch.nn.Parameter(torch.empty(config.hidden_dim, config.vocab_size))
    self.to(dtype)
    self.load_state_dict(
      {name: torch.from_numpy(np.array(value)).to(dtype) for name, value in named.items()}
    )
    head_dim = config.resolved_head_dim
    self.register_buffer(
      "inverse_frequency",
      config.rope_theta ** (-torch.arange(0, head_dim, 2, dtype=dtype) / head_dim),
      persistent=False,
    )

  def forward(self, tokens):
    """Float32 (float64) logits [B, T, vocab] of int tokens [B, T]."""
    frequency = self.inverse_frequency
    angles = (
      torch.arange(tokens.shape[-1], device=tokens.device, dtype=frequency.dtype)[:, None]
      * frequency
    )
    cos, sin = angles.cos(), angles.sin()
    x = self.embedding[tokens].to(self.compute_dtype)
    for layer in self.layers:
      x = layer(x, cos, sin)
    x = _rms_norm(x, self.final_norm, self.config.norm_eps)
    unembedding = self.embedding.T if self.config.tie_embeddings else self.unembedding
    return _at_least_fp32(x @ unembedding.to(x.dtype))


def next_token_loss_torch(model: TorchLlama, tokens):
  """Mean next-token cross-entropy of int tokens [B, T + 1], as ``models.next_token_loss``."""
  logits = model(tokens[:, :-1])
  return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


class TorchNexus:
  """Algorithm 3 (the paper's engineering form) with ``torch.optim.AdamW``.

  Holds ``model`` (the outer parameters) and ``inner_model`` (its clone for the inner
  steps). Clipping, AdamW's betas, eps, weight decay and its mask (no decay on norm
  scales) follow ``train.optimizers.outer_optimizer`` for ``config``; the learning rate
  is held at ``config.lr``.

  Example:
    >>> from flax import nnx
    >>> from models import PRESETS, Llama
    >>> params = nnx.to_pure_dict(nnx.state(Llama(PRESETS["tiny"], rngs=nnx.Rngs(0)), nnx.Param))
    >>> nexus = TorchNexus(TorchLlama(PRESETS["tiny"], params), get_run_preset("tiny"))
    >>> one_batch = np.arange(2 * 17).reshape(1, 2, 17)
    >>> tokens = torch.from_numpy(np.repeat(one_batch, 4, axis=0))  # K = 4 copies of it
    >>> g_hat = nexus.pseudo_gradient(tokens)  # four near-parallel unit steps of gamma = 0.01
    >>> round(float(torch.linalg.vector_norm(torch.cat([g.ravel() for g in g_hat]))), 2)
    0.04
  """

  def __init__(self, model: TorchLlama, config: TrainConfig, loss_fn=next_token_loss_torch):
    self.model, self.loss_fn = model, loss_fn
    self.inner_model = copy.deepcopy(model)
    self.gamma, self.clip = config.inner_lr, config.clip_norm
    self.params = list(model.parameters())
    self.inner_params = list(self.inner_model.parameters())
    decay = [p for name, p in model.named_parameters() if "norm" not in name]
    no_decay = [p for name, p in model.named_parameters() if "norm" in name]
    self.optimizer = torch.optim.AdamW(
      [
        {"params": decay, "weight_decay": config.resolved_weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
      ],
      lr=config.lr,
      betas=(config.b1, config.b2),
      eps=config.eps,
      fused=True,
    )

  def pseudo_gradient(self, microbatches) -> list[torch.Tensor]:
    """g_hat = model - inner_model after K NSGD steps, one per ``microbatches[m]``."""
    with torch.no_grad():
      torch._foreach_copy_(self.inner_params, self.params)
    for tokens in microbatches:
      loss = self.loss_fn(self.inner_model, tokens)
      grads = torch.autograd.grad(loss, self.inner_params)
      with torch.no_grad():
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        torch._foreach_mul_(grads, self.gamma / norm)
        torch._foreach_sub_(self.inner_params, grads)
    with torch.no_grad():
      return torch._foreach_sub(self.params, self.inner_params)

  def step(self, microbatches) -> None:
    """One outer step: the pseudo-gradient, clipped, through AdamW."""
    for param, g_hat in zip(self.params, self.pseudo_gradient(microbatches)):
      param.grad = g_hat
    torch.nn.utils.clip_grad_norm_(self.params, self.clip)
    self.optimizer.step()
    self.optimizer.zero_grad(set_to_none=True)


def distance(tree: dict, other: dict | None = None) -> float:
  """||tree - other|| (or ||tree||) over dicts of arrays, summed in float64."""
  return float(
    np.sqrt(
      sum(
        np.sum(
          np.square(
            np.asarray(value, np.float64)
            - (0.0 if other is None else np.asarray(other[name], np.float64))
          )
        )
        for name, value in tree.items()
      )
    )
  )


def agreement(torch_g_hat: dict, jax_g_hat: dict, first_order: dict) -> dict:
  """How far the PyTorch pseudo-gradient is from nexus-optax's.

  ``relative_error`` = ||g_torch - g_jax|| / ||g_jax||; ``error_over_second_order`` divides
  the same difference by ||g_jax - first_order||, the second-order part it must resolve.
  """
  difference = distance(torch_g_hat, jax_g_hat)
  size, second_order = distance(jax_g_hat), distance(jax_g_hat, first_order)
  return {
    "relative_error": difference / size,
    "error_over_second_order": difference / second_order,
    "second_order_over_g_hat": second_order / size,
    "g_hat_norm": size,
  }


def compare_pseudo_gradients(
  config: TrainConfig, model_config: LlamaConfig, graphdef, params: dict, tokens: np.ndarray
) -> dict:
  """One outer step's g_hat from ``nexus_optax.inner_loop`` and from :class:`TorchNexus`
  on the same weights and micro-batches ``tokens`` [K, B, T + 1]: :func:`agreement`, plus
  each float32 result's relative distance to :class:`TorchNexus` in float64."""

  def jax_loss(p, batch):
    return next_token_loss(nnx.merge(graphdef, p), batch)

  gamma = config.inner_lr
  jax_g_hat = jax.jit(lambda p, b: nx.inner_loop(jax_loss, p, b, gamma).displacement)(
    params, tokens
  )
  first = jax.jit(lambda p, b: nx.diagnostics.first_order_pseudo_gradient(jax_loss, p, b, gamma))(
    params, tokens
  )
  torch_tokens = torch.from_numpy(np.asarray(tokens, np.int64))
  torch_g_hat = {}
  for dtype in (torch.float32, torch.float64):
    nexus = TorchNexus(TorchLlama(model_config, params, dtype), config)
    torch_g_hat[dtype] = {
      name: g.numpy()
      for (name, _), g in zip(nexus.model.named_parameters(), nexus.pseudo_gradient(torch_tokens))
    }
  jax_named = torch_layout(jax.device_get(jax_g_hat), model_config)
  reference = torch_g_hat[torch.float64]
  result = agreement(
    torch_g_hat[torch.float32], jax_named, torch_layout(jax.device_get(first), model_config)
  )
  result["jax_vs_float64"] = distance(jax_named, reference) / distance(reference)
  result["torch_vs_float64"] = distance(torch_g_hat[torch.float32], reference) / distance(reference)
  return result


def time_breakdown(
  model_config: LlamaConfig, graphdef, params: dict, microbatch: np.ndarray, repeats: int = 5
) -> dict:
  """Milliseconds of one micro-batch's forward and forward + backward in each framework,
  and GFLOP/s of a 2048 x 768 x 768 float32 matmul (the demo MLP's shape at 2048 tokens)."""

  def jax_loss(p, batch):
    return next_token_loss(nnx.merge(graphdef, p), batch)

  forward = jax.jit(jax_loss)
  forward_backward = jax.jit(jax.value_and_grad(jax_loss))
  model = TorchLlama(model_config, params)
  weights = list(model.parameters())
  tokens = torch.from_numpy(np.asarray(microbatch, np.int64))

  def torch_forward():
    with torch.no_grad():
      next_token_loss_torch(model, tokens)

  a, b = jnp.ones((2048, 768)), jnp.ones((768, 768))
  matmul = jax.jit(jnp.matmul)
  torch_a, torch_b = torch.ones(2048, 768), torch.ones(768, 768)
  flops = 2 * 2048 * 768 * 768
  # Each figure is the best of its timed calls, after one untimed call.
  calls = {
    "jax_forward_ms": lambda: jax.block_until_ready(forward(params, microbatch)),
    "jax_forward_backward_ms": lambda: jax.block_until_ready(forward_backward(params, microbatch)),
    "torch_forward_ms": torch_forward,
    "torch_forward_backward_ms": lambda: torch.autograd.grad(
      next_token_loss_torch(model, tokens), weights
    ),
  }
  result = {name: round(time_calls(fn, repeats).min * 1e3, 1) for name, fn in calls.items()}
  jax_matmul = time_calls(lambda: jax.block_until_ready(matmul(a, b)), 10).min
  result["jax_matmul_gflops"] = round(flops / jax_matmul / 1e9, 1)
  result["torch_matmul_gflops"] = round(
    flops / time_calls(lambda: torch_a @ torch_b, 10).min / 1e9, 1
  )
  return result


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--preset", default="demo")
  parser.add_argument("--rounds", type=int, default=8)
  parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
  add_out_flag(parser, "torch_reference")
  return parser.parse_args()


def main():
  args = parse_args()
  torch.manual_seed(0)
  try:
    config = get_run_preset(args.preset, optimizer="nexus")
  except ValueError as error:  # ConfigError: its message names the presets
    raise SystemExit(f"error: {error}") from None
  if config.microbatches < 2:
    raise SystemExit("--preset needs K >= 2 micro-batches for a second-order term to compare.")
  mesh = parallel.make_mesh(parallel.parse_mesh("data=1", jax.device_count()), False)
  training = build_training(config, mesh)
  model_config = training.model_config
  if model_config.compute_dtype != "float32":
    raise SystemExit(
      f"--preset {args.preset} computes in {model_config.compute_dtype}; the "
      "agreement check is float32: pick tiny or demo."
    )
  state = training.init()
  params = jax.device_get(state.params)
  shape = (config.microbatches, config.micro_batch_size, config.seq_len + 1)
  tokens = np.random.default_rng(0).integers(0, 257, shape).astype(np.int32)
  print(
    f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
    f"({torch.get_num_threads()} threads), {platform.processor() or 'cpu'}; {args.preset}: "
    f"{model_config.non_embedding_params() / 1e6:.2f}M non-embedding params, K="
    f"{config.microbatches} x {config.micro_batch_size} x {config.seq_len} = "
    f"{config.tokens_per_step:,} tokens per step",
    flush=True,
  )

  agreed = compare_pseudo_gradients(config, model_config, training.graphdef, params, tokens)
  print(
    f"pseudo-gradient, one outer step: ||g_torch - g_jax|| / ||g_jax|| = "
    f"{agreed['relative_error']:.2e} (target <= 1e-4), = {agreed['error_over_second_order']:.2e} "
    f"of the second-order part (itself {agreed['second_order_over_g_hat']:.2e} of g_hat); "
    f"against float64 PyTorch: nexus-optax {agreed['jax_vs_float64']:.2e}, PyTorch float32 "
    f"{agreed['torch_vs_float64']:.2e}",
    flush=True,
  )

  breakdown = time_breakdown(model_config, training.graphdef, params, tokens[0])
  print(
    "one micro-batch, best of 5: " + ", ".join(f"{k} {v}" for k, v in breakdown.items()), flush=True
  )

  steppers = {
    "nexus-optax": None,
    "torch-eager": TorchNexus(TorchLlama(model_config, params), config),
  }
  if not args.no_compile:
    steppers["torch-compile"] = TorchNexus(
      TorchLlama(model_config, params), config, torch.compile(next_token_loss_torch)
    )
  jax_tokens = jax.device_put(tokens, training.batch_sharding)
  torch_tokens = torch.from_numpy(tokens.astype(np.int64))

  def run(name):
    nonlocal state
    if name == "nexus-optax":
      state, metrics = training.step(state, jax_tokens)
      jax.block_until_ready(metrics)
    else:
      steppers[name].step(torch_tokens)

  print_timed_round = print_rounds(args.rounds, digits=0)

  def log(number, elapsed):
    if number == -1:  # the first warm-up round compiles
      for name, seconds in elapsed.items():
        print(f"warm-up {name}: {seconds:.1f} s", flush=True)
    print_timed_round(number, elapsed)

  # Two warm-up rounds compile and settle.
  times = time_rounds(run, list(steppers), args.rounds, log=log)
  rows = {}
  for name, values in times.items():
    median = summarize(values).median
    rows[name] = {
      "median_step_ms": round(median * 1e3, 1),
      "tokens_per_s": round(config.tokens_per_step / median, 1),
      "nexus_optax_speedup": round(paired_ratio(values, times["nexus-optax"]), 3),
    }
  print("\n| implementation | median outer step (ms) | tokens/s | nexus-optax speed-up |")
  print("|---|---:|---:|---:|")
  for name, row in rows.items():
    print(
      f"| {name} | {row['median_step_ms']:.1f} | {row['tokens_per_s']:,.0f} | "
      f"{row['nexus_optax_speedup']:.2f}x |"
    )
  result = {
    "preset": args.preset,
    "jax": jax.__version__,
    "torch": torch.__version__,
    "torch_threads": torch.get_num_threads(),
    "backend": jax.default_backend(),
    "microbatches": config.microbatches,
    "micro_batch_size": config.micro_batch_size,
    "seq_len": config.seq_len,
    "tokens_per_step": config.tokens_per_step,
    "inner_lr": config.inner_lr,
    "rounds": args.rounds,
    "agreement": agreed,
    "breakdown": breakdown,
    "implementations": rows,
  }
  write_report(args.out / f"torch_reference-{args.preset}.json", result)


if __name__ == "__main__":
  main()
