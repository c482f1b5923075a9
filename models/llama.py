"""A Llama decoder in Flax NNX: RMSNorm, RoPE, SwiGLU, grouped-query attention.

The architecture of Touvron et al. (2023) as used by the paper's experiments (which
follow Wen et al. 2025, "Fantastic Pretraining Optimizers and Where to Find Them"):

  h_0     = E[tokens]
  a_l     = h_{l-1} + Attn(RMSNorm(h_{l-1}))            causal, RoPE on q and k
  h_l     = a_l + W_down (silu(W_gate x) * (W_up x)),    x = RMSNorm(a_l)
  logits  = RMSNorm(h_L) W_out                           W_out = E^T when tied

Grouped-query attention shares each key/value head among ``num_heads / num_kv_heads``
query heads; ``num_kv_heads == num_heads`` is ordinary multi-head attention.

Engineering choices, all set in :class:`LlamaConfig`:
  * layers are stacked along a leading ``layers`` axis and run with ``nnx.scan``
    (one compiled block) or unrolled in Python; both read the same stacked
    parameters, so a checkpoint does not depend on the choice;
  * ``remat`` recomputes each block's activations in the backward pass;
  * ``param_dtype`` stores parameters, ``compute_dtype`` runs the matmuls; norms,
    RoPE, softmax and the logits stay in float32.
  * every parameter carries logical axis names (:mod:`models.sharding`), and so do the
    activations: inside ``models.sharding.activation_sharding(mesh)`` the residual
    stream, heads, MLP hidden layer and logits are pinned to the batch axes;
  * the model can run at a displaced point ``theta - delta`` without that point ever
    existing as a whole (``Llama.__call__``'s ``displacement``): each weight's
    ``(p - d).astype(p.dtype)`` is formed where it is consumed, inside the layer scan for
    the blocks. Nexus's inner loop needs nothing else
    (``nexus_optax.nexus(..., loss_takes_displacement=True)``).
"""

import dataclasses
import functools
from typing import Literal, get_args

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from models.sharding import (
  ACTIVATION_EMBED,
  ACTIVATION_HEADS,
  ACTIVATION_KV_HEADS,
  ACTIVATION_MLP,
  ACTIVATION_VOCAB,
  BATCH,
  EMBED,
  HEAD_DIM,
  HEADS,
  KV_HEADS,
  LAYERS,
  LENGTH,
  MLP,
  NORM,
  VOCAB,
  constrain,
)

RESIDUAL = (BATCH, LENGTH, ACTIVATION_EMBED)

RematPolicy = Literal["none", "full", "dots"]
_REMAT_POLICIES = {
  "full": jax.checkpoint_policies.nothing_saveable,
  "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
DType = Literal["float32", "bfloat16", "float16"]
_DTYPES = get_args(DType)


@dataclasses.dataclass(frozen=True)
class Llama3RopeScaling:
  """Llama 3.1's RoPE frequency scaling (transformers' ``rope_type: "llama3"``).

  With ``L`` = ``original_max_position_embeddings`` and wavelength ``w = 2 pi / f`` of each
  inverse frequency ``f``: long wavelengths (``w > L / low_freq_factor``) are slowed by
  ``factor``, short ones (``w < L / high_freq_factor``) kept, and those between blended,

    f' = (1 - s) f / factor + s f,
    s = (L / w - low_freq_factor) / (high_freq_factor - low_freq_factor).

  References:
    Llama Team, "The Llama 3 Herd of Models" (2024), https://arxiv.org/abs/2407.21783;
    transformers' ``modeling_rope_utils._compute_llama3_parameters``.
  """

  factor: float
  low_freq_factor: float
  high_freq_factor: float
  original_max_position_embeddings: int

  def __post_init__(self):
    if not (
      self.factor >= 1
      and 0 < self.low_freq_factor < self.high_freq_factor
      and self.original_max_position_embeddings >= 1
    ):
      raise ValueError(
        f"Llama3RopeScaling needs factor >= 1, 0 < low_freq_factor < "
        f"high_freq_factor and original_max_position_embeddings >= 1; got {self}."
      )

  def scale(self, inverse_frequency):
    """The scaled inverse frequencies, in float32."""
    context = self.original_max_position_embeddings
    wavelength = 2 * jnp.pi / inverse_frequency
    blend = (context / wavelength - self.low_freq_factor) / (
      self.high_freq_factor - self.low_freq_factor
    )
    blended = (1 - blend) * inverse_frequency / self.factor + blend * inverse_frequency
    return jnp.where(
      wavelength > context / self.low_freq_factor,
      inverse_frequency / self.factor,
      jnp.where(wavelength < context / self.high_freq_factor, inverse_frequency, blended),
    )


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Shape and numerics of a :class:`Llama`.

  Attributes:
    vocab_size: rows of the embedding table (the tokenizer's vocabulary, padded).
    hidden_dim: width of the residual stream.
    mlp_dim: width of the SwiGLU hidden layer.
    num_layers: decoder blocks.
    num_heads: query heads.
    num_kv_heads: key/value heads; must divide ``num_heads``.
    head_dim: width of one head; ``None`` means ``hidden_dim // num_heads``.
    max_seq_len: longest sequence the model is trained on (documentation and input
      checks; RoPE itself has no table to outgrow).
    rope_theta: RoPE base frequency.
    rope_scaling: ``None`` (plain RoPE) or a :class:`Llama3RopeScaling` (a dict of its
      fields is accepted, as a recorded config holds it).
    norm_eps: RMSNorm epsilon.
    tie_embeddings: read logits through the transposed embedding table.
    scan_layers: run the blocks with ``nnx.scan`` (else a Python loop).
    remat: ``"none"``, ``"full"`` (save nothing) or ``"dots"`` (save matmul outputs).
    param_dtype: storage dtype of the parameters.
    compute_dtype: dtype of activations and matmuls.
    init_std: standard deviation of the normal initialiser of every matrix.
    attention_impl: ``None`` for :func:`causal_attention` (``jax.nn.dot_product_attention``'s
      XLA path, heads first), else the ``implementation`` of
      ``jax.nn.dot_product_attention`` (``"cudnn"`` for flash attention on NVIDIA GPUs).
    attention_block_size: ``None`` for :func:`causal_attention` (the full [T, T] scores,
      half masked), else :func:`block_causal_attention` with query blocks of this many
      positions, which skips the fully masked key blocks (any T: the last block is
      shorter when the size does not divide it). Only the default path reads it: with an
      ``attention_impl`` the kernel does its own blocking.
  """

  vocab_size: int
  hidden_dim: int
  mlp_dim: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int | None = None
  max_seq_len: int = 4096
  rope_theta: float = 10_000.0
  rope_scaling: Llama3RopeScaling | None = None
  norm_eps: float = 1e-5
  tie_embeddings: bool = False
  scan_layers: bool = True
  remat: RematPolicy = "none"
  param_dtype: DType = "float32"
  compute_dtype: DType = "float32"
  init_std: float = 0.02
  attention_impl: str | None = None
  attention_block_size: int | None = None

  def __post_init__(self):
    if isinstance(self.rope_scaling, dict):
      object.__setattr__(self, "rope_scaling", Llama3RopeScaling(**self.rope_scaling))
    for name in (
      "vocab_size",
      "hidden_dim",
      "mlp_dim",
      "num_layers",
      "num_heads",
      "num_kv_heads",
      "max_seq_len",
    ):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"LlamaConfig.{name} must be a positive integer, got {value!r}.")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
        f"LlamaConfig.num_kv_heads ({self.num_kv_heads}) must divide num_heads "
        f"({self.num_heads}); pick a divisor for grouped-query attention."
      )
    if self.head_dim is None and self.hidden_dim % self.num_heads:
      raise ValueError(
        f"LlamaConfig.hidden_dim ({self.hidden_dim}) is not divisible by "
        f"num_heads ({self.num_heads}); set head_dim explicitly."
      )
    if self.resolved_head_dim < 2 or self.resolved_head_dim % 2:
      raise ValueError(f"LlamaConfig.head_dim must be even for RoPE, got {self.resolved_head_dim}.")
    if self.remat not in get_args(RematPolicy):
      raise ValueError(f"LlamaConfig.remat must be 'none', 'full' or 'dots', got {self.remat!r}.")
    for name in ("param_dtype", "compute_dtype"):
      if getattr(self, name) not in _DTYPES:
        raise ValueError(
          f"LlamaConfig.{name} must be one of {_DTYPES}, got {getattr(self, name)!r}."
        )
    block = self.attention_block_size
    if block is not None and (not isinstance(block, int) or block < 1):
      raise ValueError(
        f"LlamaConfig.attention_block_size must be None or a positive integer, got {block!r}."
      )
    if not (self.rope_theta > 0 and self.norm_eps > 0 and self.init_std > 0):
      raise ValueError("LlamaConfig.rope_theta, norm_eps and init_std must be > 0.")

  @property
  def resolved_head_dim(self) -> int:
    """``head_dim``, or ``hidden_dim // num_heads`` when that is left as ``None``."""
    return self.head_dim if self.head_dim is not None else self.hidden_dim // self.num_heads

  def non_embedding_params(self) -> int:
    """Weights outside the embedding and output tables: Wen et al.'s model size."""
    attention = (
      self.hidden_dim * self.resolved_head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
    )
    block = attention + 3 * self.hidden_dim * self.mlp_dim + 2 * self.hidden_dim
    return self.num_layers * block + self.hidden_dim

  def flops_per_token(self, seq_len: int) -> int:
    """Training FLOPs per token (forward + backward), matmuls only, causal attention.

    6 per weight of every matmul (the embedding lookup is free, the output
    projection is not) plus the attention scores and mixing: 12 * L * d_attn * T / 2
    with the causal half (Kaplan et al. 2020 style, as MaxText and nanoGPT count).
    """
    matmul_weights = self.non_embedding_params() - (2 * self.num_layers + 1) * self.hidden_dim
    matmul_weights += self.vocab_size * self.hidden_dim
    attention = 6 * self.num_layers * self.num_heads * self.resolved_head_dim * seq_len
    return 6 * matmul_weights + attention


def _param(value, axes) -> nnx.Param:
  # Placement is the training stack's job (jit out_shardings from models.sharding),
  # so the model is built the same way with or without a mesh in context.
  return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def _normal_param(rngs: nnx.Rngs, shape, axes, config: LlamaConfig) -> nnx.Param:
  init = jax.nn.initializers.normal(config.init_std)
  return _param(init(rngs.params(), shape, config.param_dtype), axes)


class RMSNorm(nnx.Module):
  """y = x / sqrt(mean(x^2) + eps) * scale, computed in float32."""

  def __init__(self, dim: int, config: LlamaConfig):
    self.eps = config.norm_eps
    self.scale = _param(jnp.ones((dim,), config.param_dtype), (NORM,))

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (normed * self.scale[...].astype(jnp.float32)).astype(x.dtype)


def rope_angles(positions, head_dim: int, theta: float, scaling: Llama3RopeScaling | None = None):
  """cos and sin of position * theta^(-2i/head_dim), i < head_dim / 2 (frequencies scaled by
  ``scaling`` when given); shape [..., T, head_dim/2]."""
  inverse_frequency = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  if scaling is not None:
    inverse_frequency = scaling.scale(inverse_frequency)
  angles = positions.astype(jnp.float32)[..., None] * inverse_frequency
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x, cos, sin, heads_first: bool = False):
  """Rotates pairs (x_i, x_{i + D/2}) of every head by the position's angles (x: [B, T, N, D],
  or [B, N, T, D] with ``heads_first``)."""
  first, second = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  if heads_first:
    cos, sin = cos[..., None, :, :], sin[..., None, :, :]
  else:
    cos, sin = cos[..., None, :], sin[..., None, :]
  rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
  return rotated.astype(x.dtype)


_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def _block_probs(q, k, start: int):
  """float32 softmax(mask(q k^T / sqrt(D))) of queries at positions ``start..`` over keys at
  ``0..``; q [B, K, G, b, D], k [B, K, S, D]."""
  scores = jnp.einsum("bkgtd,bksd->bkgts", q, k, preferred_element_type=jnp.float32)
  scores = scores * jnp.float32(q.shape[-1] ** -0.5)
  causal = jnp.arange(start, start + q.shape[3])[:, None] >= jnp.arange(k.shape[2])[None, :]
  return jax.nn.softmax(jnp.where(causal, scores, jnp.float32(_MASK_VALUE)), axis=-1)


def causal_attention(q, k, v):
  """Causal softmax attention of q [B, N, T, D] over k, v [B, K, T, D], K dividing N.

  ``jax.nn.dot_product_attention``'s XLA path, written for heads-first operands: that
  function takes [B, T, N, D] and transposes to [B, N, T, T] scores inside, and XLA:CPU
  pays for those transposes (and their transposes in the backward pass) as copies.
  The numerics are that path's: float32 scores, the same scale and mask value,
  probabilities cast to the value dtype.
  """
  batch, heads, length, head_dim = q.shape
  kv_heads = k.shape[1]
  q = q.reshape(batch, kv_heads, heads // kv_heads, length, head_dim)
  probs = _block_probs(q, k, 0).astype(v.dtype)
  mixed = jnp.einsum("bkgts,bksd->bkgtd", probs, v)
  return mixed.reshape(batch, heads, length, head_dim)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _attention_block(q, k, v, start: int):
  """One query block of :func:`block_causal_attention`: [B, K, G, b, D] out."""
  return _attention_block_forward(q, k, v, start)[0]


def _attention_block_forward(q, k, v, start):
  probs = _block_probs(q, k, start)
  mixed = jnp.einsum("bkgts,bksd->bkgtd", probs.astype(v.dtype), v)
  return mixed, (q, k, v, probs, mixed)


def _attention_block_backward(start, residuals, d_mixed):
  q, k, v, probs, mixed = residuals
  d_v = jnp.einsum("bkgts,bkgtd->bksd", probs.astype(v.dtype), d_mixed)
  d_probs = jnp.einsum("bkgtd,bksd->bkgts", d_mixed, v, preferred_element_type=jnp.float32)
  # sum_s P_ts dP_ts = sum_d dO_td O_td: a pass over [b, D] in place of one over [b, S].
  delta = jnp.sum(d_mixed.astype(jnp.float32) * mixed.astype(jnp.float32), -1, keepdims=True)
  d_scores = probs * (d_probs - delta) * jnp.float32(q.shape[-1] ** -0.5)
  d_scores = d_scores.astype(q.dtype)
  d_q = jnp.einsum("bkgts,bksd->bkgtd", d_scores, k)
  d_k = jnp.einsum("bkgts,bkgtd->bksd", d_scores, q)
  return d_q, d_k, d_v


_attention_block.defvjp(_attention_block_forward, _attention_block_backward)


def block_causal_attention(q, k, v, block_size: int):
  """:func:`causal_attention` computed in query blocks that skip the fully masked keys.

  With ``b = block_size``, query block ``i`` (positions ``[i b, (i + 1) b)``) attends keys
  ``[0, (i + 1) b)`` only:

    P_i = softmax(mask_i(q_i k_{<(i+1)b}^T / sqrt(D))),   o_i = P_i v_{<(i+1)b},

  where ``mask_i`` hides the keys after each query, all in the last (diagonal) key block.
  The keys after ``(i + 1) b`` are those the full mask sets to -0.7 * max(float32), whose
  probabilities are exactly 0, so this is the same function with the same numerics (float32
  scores, the same scale and mask value, probabilities in the value dtype) up to the order
  of float32 sums, for ``(n + 1) / (2 n)`` of the score, softmax and mixing work over
  ``n = T / b`` blocks. Each block's backward pass is written out (a ``jax.custom_vjp``):

    dV = P^T dO,   dP = dO V^T,   dS = P * (dP - rowsum(dO * O)) / sqrt(D),
    dQ = dS K,     dK = dS^T Q,

  using ``rowsum(P * dP) = rowsum(dO * O)``: one elementwise pass over the scores fewer
  than autodiff of the softmax, and no mask pass (``P`` is 0 where masked). Being a
  custom VJP, it has no forward-mode derivative (``jax.jvp``); use ``causal_attention``
  for that.

  The blocks are an unrolled Python loop, each with its own static shapes; when
  ``block_size`` does not divide T the last block is the ``T mod block_size`` positions
  left, and ``block_size >= T`` is one block. (A ``lax.scan`` pairing blocks ``i`` and
  ``n - 1 - i`` into equal-shape steps needs gathers of the key and query blocks and ran
  2.2-2.7x slower than the full mask on XLA:CPU; benchmarks/RESULTS.md.)

  Args:
    q: queries [B, N, T, D].
    k, v: keys and values [B, K, T, D], K dividing N (grouped-query heads).
    block_size: query positions per block.
  """
  batch, heads, length, head_dim = q.shape
  kv_heads = k.shape[1]
  q = q.reshape(batch, kv_heads, heads // kv_heads, length, head_dim)
  blocks = []
  for start in range(0, length, block_size):
    end = min(start + block_size, length)
    blocks.append(_attention_block(q[:, :, :, start:end], k[:, :, :end], v[:, :, :end], start))
  mixed = blocks[0] if len(blocks) == 1 else jnp.concatenate(blocks, axis=3)
  return mixed.reshape(batch, heads, length, head_dim)


class Attention(nnx.Module):
  """Causal grouped-query self-attention with RoPE."""

  def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
    d, n, kv, hd = (
      config.hidden_dim,
      config.num_heads,
      config.num_kv_heads,
      config.resolved_head_dim,
    )
    self.config = config
    self.query = _normal_param(rngs, (d, n, hd), (EMBED, HEADS, HEAD_DIM), config)
    self.key = _normal_param(rngs, (d, kv, hd), (EMBED, KV_HEADS, HEAD_DIM), config)
    self.value = _normal_param(rngs, (d, kv, hd), (EMBED, KV_HEADS, HEAD_DIM), config)
    self.output = _normal_param(rngs, (n, hd, d), (HEADS, HEAD_DIM, EMBED), config)

  def __call__(self, x, cos, sin):
    dtype = x.dtype
    weights = [w[...].astype(dtype) for w in (self.query, self.key, self.value, self.output)]
    if self.config.attention_impl is not None:  # a fused kernel (cuDNN) takes [B, T, N, H]
      heads = (BATCH, LENGTH, ACTIVATION_HEADS, None)
      kv_heads = (BATCH, LENGTH, ACTIVATION_KV_HEADS, None)
      q = constrain(jnp.einsum("btd,dnh->btnh", x, weights[0]), heads)
      k = constrain(jnp.einsum("btd,dnh->btnh", x, weights[1]), kv_heads)
      v = constrain(jnp.einsum("btd,dnh->btnh", x, weights[2]), kv_heads)
      q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
      mixed = jax.nn.dot_product_attention(
        q, k, v, is_causal=True, implementation=self.config.attention_impl
      )
      return jnp.einsum("btnh,nhd->btd", mixed, weights[3])
    # Heads before positions, the layout the score and mixing matmuls batch in: from
    # [B, T, N, H], XLA copies q, k, v, the mixed heads and all their cotangents into it
    # and back (17 % of the compiled temp at the paper's sizes).
    heads = (BATCH, ACTIVATION_HEADS, LENGTH, None)
    kv_heads = (BATCH, ACTIVATION_KV_HEADS, LENGTH, None)
    q = constrain(jnp.einsum("btd,dnh->bnth", x, weights[0]), heads)
    k = constrain(jnp.einsum("btd,dnh->bnth", x, weights[1]), kv_heads)
    v = constrain(jnp.einsum("btd,dnh->bnth", x, weights[2]), kv_heads)
    q = apply_rope(q, cos, sin, heads_first=True)
    k = apply_rope(k, cos, sin, heads_first=True)
    if self.config.attention_block_size is None:
      mixed = causal_attention(q, k, v)
    else:
      mixed = block_causal_attention(q, k, v, self.config.attention_block_size)
    return jnp.einsum("bnth,nhd->btd", mixed, weights[3])


class SwiGLU(nnx.Module):
  """W_down (silu(W_gate x) * W_up x)."""

  def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
    d, m = config.hidden_dim, config.mlp_dim
    self.gate = _normal_param(rngs, (d, m), (EMBED, MLP), config)
    self.up = _normal_param(rngs, (d, m), (EMBED, MLP), config)
    self.down = _normal_param(rngs, (m, d), (MLP, EMBED), config)

  def __call__(self, x):
    dtype = x.dtype
    # One matmul for gate and up: XLA:CPU transposes the backward's [tokens, mlp]
    # cotangent once instead of twice. Stacked rather than concatenated, so that a
    # sharded mlp axis stays where it is.
    gate_up = jnp.stack([self.gate[...], self.up[...]], axis=1).astype(dtype)
    both = jnp.einsum("btd,dcm->btcm", x, gate_up)
    hidden = jax.nn.silu(both[:, :, 0]) * both[:, :, 1]
    return constrain(hidden, (BATCH, LENGTH, ACTIVATION_MLP)) @ self.down[...].astype(dtype)


class Block(nnx.Module):
  """One pre-norm decoder block."""

  def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
    self.attention_norm = RMSNorm(config.hidden_dim, config)
    self.attention = Attention(config, rngs=rngs)
    self.mlp_norm = RMSNorm(config.hidden_dim, config)
    self.mlp = SwiGLU(config, rngs=rngs)

  def __call__(self, x, cos, sin):
    x = constrain(x + self.attention(self.attention_norm(x), cos, sin), RESIDUAL)
    return constrain(x + self.mlp(self.mlp_norm(x)), RESIDUAL)


def displaced(value, displacement):
  """``(value - displacement)`` in ``value``'s dtype; ``value`` itself for a None displacement.

  Rounded as ``nexus_optax.inner_loop`` rounds its inner point, so that the two agree bit
  for bit.
  """
  if displacement is None:
    return value
  return (value - displacement).astype(value.dtype)


def at_inner_point(module: nnx.Module, displacement) -> nnx.Module:
  """A copy of ``module`` whose every parameter ``p`` is ``displaced(p, d)``.

  Args:
    module: a module holding only parameters (a :class:`Block` or :class:`RMSNorm`).
    displacement: None (``module`` itself is returned), or a pure dict with the
      structure of ``nnx.to_pure_dict(nnx.state(module))``.
  """
  if displacement is None:
    return module
  graphdef, params = nnx.split(module)
  return nnx.merge(graphdef, jax.tree.map(displaced, nnx.to_pure_dict(params), displacement))


def _run_block(block: Block, displacement, x, cos, sin):
  # The inner point is formed here, inside the remat and the layer scan, so that one
  # layer's displaced weights exist at a time and the backward pass recomputes them
  # rather than keeping every layer's.
  return at_inner_point(block, displacement)(x, cos, sin)


class Llama(nnx.Module):
  """A Llama decoder returning float32 next-token logits.

  Example:
    >>> from flax import nnx
    >>> import jax.numpy as jnp
    >>> from models import PRESETS, Llama
    >>> model = Llama(PRESETS["tiny"], rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((2, 16), jnp.int32)).shape
    (2, 16, 384)
  """

  def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.embedding = _normal_param(
      rngs, (config.vocab_size, config.hidden_dim), (VOCAB, EMBED), config
    )

    @nnx.split_rngs(splits=config.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: LAYERS})
    def stacked_blocks(rngs):
      return Block(config, rngs=rngs)

    self.blocks = stacked_blocks(rngs)
    self.final_norm = RMSNorm(config.hidden_dim, config)
    if not config.tie_embeddings:
      self.unembedding = _normal_param(
        rngs, (config.hidden_dim, config.vocab_size), (EMBED, VOCAB), config
      )

  def __call__(self, tokens, positions=None, displacement=None):
    """Logits [B, T, vocab] for int tokens [B, T]; positions default to 0..T-1.

    With a ``displacement`` ``delta`` (a pure dict, or an ``nnx.State``, with the
    structure of ``nnx.state(model, nnx.Param)``) the logits are those of the model at
    ``theta - delta``, each weight taken as ``(p - d).astype(p.dtype)``. Every weight's
    displaced value is formed where it is consumed (a scanned block's inside the scan
    body), so that, unlike ``nnx.merge`` of precomputed ``theta - delta``, no
    parameter-sized copy is made; the gradient with respect to ``theta`` at fixed
    ``delta`` is the gradient at ``theta - delta``.
    """
    config = self.config
    if isinstance(displacement, nnx.State):
      displacement = nnx.to_pure_dict(displacement)
    if displacement is not None:
      expected = jax.tree.structure(nnx.to_pure_dict(nnx.state(self, nnx.Param)))
      # A missing subtree would silently leave those weights at theta.
      if jax.tree.structure(displacement) != expected:
        raise ValueError(
          "Llama's displacement must have the structure of its parameters, "
          f"nnx.to_pure_dict(nnx.state(model, nnx.Param)) ({expected}); got "
          f"{jax.tree.structure(displacement)}."
        )
    delta = displacement if displacement is not None else {}
    if positions is None:
      positions = jnp.arange(tokens.shape[-1])
    cos, sin = rope_angles(
      positions, config.resolved_head_dim, config.rope_theta, config.rope_scaling
    )
    embedding = displaced(self.embedding[...], delta.get("embedding"))
    x = constrain(jnp.take(embedding, tokens, axis=0).astype(config.compute_dtype), RESIDUAL)

    run_block = _run_block
    if config.remat != "none":
      run_block = nnx.remat(_run_block, policy=_REMAT_POLICIES[config.remat])
    block_delta = delta.get("blocks")
    if config.scan_layers:
      # The stacked displacement is scanned alongside the stacked blocks.
      scanned = nnx.scan(
        lambda block, d, h: run_block(block, d, h, cos, sin),
        in_axes=(0, 0, nnx.Carry),
        out_axes=nnx.Carry,
        transform_metadata={nnx.PARTITION_NAME: LAYERS},
      )
      x = scanned(self.blocks, block_delta, x)
    else:
      graphdef, stacked = nnx.split(self.blocks)
      for layer in range(config.num_layers):
        block = nnx.merge(graphdef, jax.tree.map(lambda leaf, layer=layer: leaf[layer], stacked))
        d = jax.tree.map(lambda leaf, layer=layer: leaf[layer], block_delta)
        x = run_block(block, d, x, cos, sin)

    x = at_inner_point(self.final_norm, delta.get("final_norm"))(x)
    if config.tie_embeddings:
      unembedding = embedding.T
    else:
      unembedding = displaced(self.unembedding[...], delta.get("unembedding"))
    logits = jnp.einsum(
      "btd,dv->btv", x, unembedding.astype(x.dtype), preferred_element_type=jnp.float32
    )
    return constrain(logits, (BATCH, LENGTH, ACTIVATION_VOCAB))


def next_token_loss(model: Llama, tokens, displacement=None):
  """Mean next-token cross-entropy (nats) of int tokens [B, T + 1], at ``theta -
  displacement`` when one is given (see :meth:`Llama.__call__`)."""
  logits = model(tokens[:, :-1], displacement=displacement)  # float32 (the unembedding's output)
  nats = optax.losses.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
  return jnp.mean(nats)
