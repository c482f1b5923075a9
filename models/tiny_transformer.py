"""A small decoder-only byte-level transformer in plain JAX, for examples and benchmarks.

Pre-norm blocks (RMSNorm, causal multi-head attention, GELU MLP) with tied input and
output embeddings. The Flax NNX Llama of ``models/`` is the full-size model; this one
is written in JAX alone, so the quickstart (``examples/quickstart.py``) and the overhead
benchmark (``benchmarks/overhead.py``) time the optimizer on a model with no framework
around it.
"""

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  vocab_size: int = 256
  d_model: int = 128
  num_layers: int = 2
  num_heads: int = 4
  seq_len: int = 128

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads


def init_params(config: TransformerConfig, key: jax.Array) -> dict:
  keys = iter(jax.random.split(key, 2 + 4 * config.num_layers))
  normal = lambda shape, scale: scale * jax.random.normal(next(keys), shape, jnp.float32)
  d = config.d_model
  layers = []
  for _ in range(config.num_layers):
    layers.append(
      {
        "attn_norm": jnp.ones(d),
        "qkv": normal((d, 3 * d), d**-0.5),
        "attn_out": normal((d, d), (2 * d * config.num_layers) ** -0.5),
        "mlp_norm": jnp.ones(d),
        "mlp_in": normal((d, 4 * d), d**-0.5),
        "mlp_out": normal((4 * d, d), (8 * d * config.num_layers) ** -0.5),
      }
    )
  return {
    "embed": normal((config.vocab_size, d), d**-0.5),
    "position": normal((config.seq_len, d), 0.02),
    "final_norm": jnp.ones(d),
    "layers": layers,
  }


def _rms_norm(x, scale):
  return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6) * scale


def _attention(x, layer, config):
  batch, length, _ = x.shape
  qkv = x @ layer["qkv"]
  q, k, v = jnp.split(qkv.reshape(batch, length, 3 * config.num_heads, config.head_dim), 3, axis=2)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(config.head_dim)
  causal = jnp.tril(jnp.ones((length, length), bool))
  weights = jax.nn.softmax(jnp.where(causal, logits, -1e30), axis=-1)
  out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, -1)
  return out @ layer["attn_out"]


def logits_fn(params: dict, tokens: jax.Array, config: TransformerConfig) -> jax.Array:
  x = params["embed"][tokens] + params["position"][: tokens.shape[1]]
  for layer in params["layers"]:
    x = x + _attention(_rms_norm(x, layer["attn_norm"]), layer, config)
    x = x + jax.nn.gelu(_rms_norm(x, layer["mlp_norm"]) @ layer["mlp_in"]) @ layer["mlp_out"]
  return _rms_norm(x, params["final_norm"]) @ params["embed"].T


def next_byte_loss(params: dict, tokens: jax.Array, config: TransformerConfig) -> jax.Array:
  """Mean next-token cross-entropy in nats over a [batch, seq_len + 1] token block."""
  logits = logits_fn(params, tokens[:, :-1], config)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
  targets = tokens[:, 1:]
  return -jnp.mean(jnp.take_along_axis(log_probs, targets[..., None], axis=-1))


def count_params(params: dict) -> int:
  return sum(x.size for x in jax.tree.leaves(params))
