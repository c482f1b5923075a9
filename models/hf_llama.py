"""The :class:`models.llama.Llama` in Hugging Face ``transformers``' ``LlamaForCausalLM`` layout.

Both compute the same function, so conversion is a renaming and a transposition:

  ours (``nnx`` pure dict)                         transformers (``state_dict``)
  embedding               [V, D]                   model.embed_tokens.weight         [V, D]
  blocks/attention_norm/scale [L, D]               model.layers.{l}.input_layernorm.weight
  blocks/attention/query  [L, D, N, H]             model.layers.{l}.self_attn.q_proj.weight [N*H, D]
  blocks/attention/key    [L, D, KV, H]            ...self_attn.k_proj.weight        [KV*H, D]
  blocks/attention/value  [L, D, KV, H]            ...self_attn.v_proj.weight        [KV*H, D]
  blocks/attention/output [L, N, H, D]             ...self_attn.o_proj.weight        [D, N*H]
  blocks/mlp_norm/scale   [L, D]                   ...post_attention_layernorm.weight
  blocks/mlp/gate, up     [L, D, M]                ...mlp.gate_proj / up_proj.weight [M, D]
  blocks/mlp/down         [L, M, D]                ...mlp.down_proj.weight           [D, M]
  final_norm/scale        [D]                      model.norm.weight
  unembedding             [D, V]                   lm_head.weight                    [V, D]

A torch ``Linear`` stores ``[out, in]`` and computes ``x W^T``; ours store ``[in, out]``
and compute ``x W``, hence the transposes. The rest needs no permutation:

  * RoPE: ours rotates the pairs ``(x_i, x_{i + H/2})`` by ``position * theta^(-2i/H)``,
    which is transformers' ``rotate_half`` convention with the same frequencies (Meta's
    original checkpoints pair neighbours instead, which is why their converter permutes
    q and k; checkpoints in transformers' layout are already permuted);
  * heads: flattened head-major (row ``n * H + h`` of ``q_proj`` is head n's component h),
    as ``view(B, T, N, H)`` reads them;
  * grouped-query attention: query head n reads key/value head ``n // (N / KV)`` in both
    (``repeat_kv`` and ``models.llama.causal_attention``, as ``jax.nn.dot_product_attention``);
  * RMSNorm: ``x / sqrt(mean(x^2) + eps) * weight``, normalized in float32 in both
    (transformers rounds to the activations' dtype before the weight, ours after: the
    same in float32, one rounding apart in bfloat16);
  * tied embeddings: ``lm_head`` is ``embed_tokens`` and the file has no ``lm_head.weight``;
  * the vocabulary is the embedding's rows, which may exceed the tokenizer's (padding):
    ``vocab_size`` is the rows, the tokenizer keeps its own size.

This module needs no torch and no transformers, and reads and writes no files: it maps
configs and NumPy tensors, and raises :class:`HFCheckpointError` with the fix when a
checkpoint does not fit. ``train.hf`` reads and writes the folders. Reading a folder
meets this module's functions in its order: :func:`from_hf_config` (config.json), then
:func:`check_hf_tensors` (the tensors' names and shapes), then :func:`lazy_hf_params` or
:func:`from_hf_tensors` (the weights); writing one calls :func:`to_hf` (config.json and
the tensors, through :func:`to_hf_config` and :func:`to_hf_tensors`).
"""

import dataclasses
from collections.abc import Callable

import jax
import ml_dtypes
import numpy as np

from models.llama import Llama3RopeScaling, LlamaConfig

# RoPE variants this model computes ("default": plain rotary embeddings).
SUPPORTED_ROPE_TYPES = ("default", "llama3")
# Tensors some checkpoints carry that hold no weights (RoPE's frequency buffer).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class HFCheckpointError(ValueError):
  """A Hugging Face checkpoint that cannot be read as a Llama; the message names the fix."""


def numpy_dtype(name: str) -> np.dtype:
  """The NumPy dtype of a dtype name, bfloat16 included (``ml_dtypes``, as JAX's)."""
  return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


# config.json


def from_hf_config(hf: dict, base: LlamaConfig, where: str = "config.json") -> LlamaConfig:
  """Our config of a transformers Llama ``config.json`` dict.

  The shape (vocabulary, widths, heads, layers, RoPE base, RMSNorm epsilon, tying, maximum
  positions, initialiser scale) comes from ``hf``; how it is computed (``scan_layers``,
  ``remat``, dtypes, attention implementation) from ``base``, a preset.
  """
  if not isinstance(hf, dict):
    raise HFCheckpointError(f"{where} is not a JSON object; write the checkpoint's config again.")
  model_type = hf.get("model_type")
  architectures = hf.get("architectures") or []
  if model_type != "llama" or any(a != "LlamaForCausalLM" for a in architectures):
    named = f"model_type {model_type!r}" + (
      f" ({', '.join(architectures)})" if architectures else ""
    )
    raise HFCheckpointError(
      f"{where}: {named} is not a Llama; nexus-optax reads "
      "LlamaForCausalLM checkpoints (model_type 'llama')."
    )
  # transformers 5 reads rope_scaling first when both are there.
  rope = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
  if not isinstance(rope, dict):
    raise HFCheckpointError(
      f"{where}: rope_scaling / rope_parameters is not an object; write "
      "the checkpoint's config again."
    )
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  partial = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
  unsupported = {
    "partial_rotary_factor": (float(partial or 1.0), 1.0),
    "hidden_act": (hf.get("hidden_act", "silu"), "silu"),
    "attention_bias": (bool(hf.get("attention_bias", False)), False),
    "mlp_bias": (bool(hf.get("mlp_bias", False)), False),
  }
  for name, (value, wanted) in unsupported.items():
    if value != wanted:
      raise HFCheckpointError(
        f"{where}: {name} {value!r} is not supported (this Llama has "
        f"{name} {wanted!r}); use a checkpoint without it."
      )
  if rope_type not in SUPPORTED_ROPE_TYPES:
    raise HFCheckpointError(
      f"{where}: rope type {rope_type!r} is not supported (this Llama "
      f"computes {' and '.join(SUPPORTED_ROPE_TYPES)}); use a checkpoint "
      "with one of those."
    )
  try:
    heads = int(hf["num_attention_heads"])
    hidden = int(hf["hidden_size"])
    return dataclasses.replace(
      base,
      vocab_size=int(hf["vocab_size"]),
      hidden_dim=hidden,
      mlp_dim=int(hf["intermediate_size"]),
      num_layers=int(hf["num_hidden_layers"]),
      num_heads=heads,
      num_kv_heads=int(hf.get("num_key_value_heads") or heads),
      head_dim=int(hf.get("head_dim") or hidden // heads),
      max_seq_len=int(hf.get("max_position_embeddings", 2048)),
      rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0))),
      rope_scaling=None
      if rope_type == "default"
      else Llama3RopeScaling(
        factor=float(rope["factor"]),
        low_freq_factor=float(rope["low_freq_factor"]),
        high_freq_factor=float(rope["high_freq_factor"]),
        original_max_position_embeddings=int(
          rope.get("original_max_position_embeddings", hf.get("max_position_embeddings", 2048))
        ),
      ),
      norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      init_std=float(hf.get("initializer_range", 0.02)),
    )
  except KeyError as error:
    raise HFCheckpointError(
      f"{where} has no {error.args[0]!r}, which a Llama config.json of "
      "this kind needs; write the checkpoint's config again."
    ) from None
  except (TypeError, AttributeError) as error:  # a null or non-numeric field
    raise HFCheckpointError(
      f"{where}: a size or RoPE field is not a number ({error}); write "
      "the checkpoint's config again."
    ) from None
  except ValueError as error:  # LlamaConfig's own checks (a head count that does not divide)
    raise HFCheckpointError(f"{where}: {error}") from None


def to_hf_config(config: LlamaConfig, eod_id: int, dtype: str = "float32") -> dict:
  """transformers' ``LlamaConfig`` of ``config``, as the ``config.json`` dict.

  RoPE is written both ways transformers has read it (``rope_theta`` and ``rope_scaling``
  up to 4.x, ``rope_parameters`` from 5.0), so either major version loads the file. The
  end-of-document token is the begin and end token: training puts one before every
  document.
  """
  rope = {"rope_type": "default", "rope_theta": config.rope_theta}
  if config.rope_scaling is not None:
    rope = {**rope, "rope_type": "llama3", **dataclasses.asdict(config.rope_scaling)}
  return {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": config.vocab_size,
    "hidden_size": config.hidden_dim,
    "intermediate_size": config.mlp_dim,
    "num_hidden_layers": config.num_layers,
    "num_attention_heads": config.num_heads,
    "num_key_value_heads": config.num_kv_heads,
    "head_dim": config.resolved_head_dim,
    "hidden_act": "silu",
    "max_position_embeddings": config.max_seq_len,
    "rms_norm_eps": config.norm_eps,
    "rope_theta": config.rope_theta,
    "rope_parameters": rope,
    "rope_scaling": rope if config.rope_scaling is not None else None,
    "tie_word_embeddings": config.tie_embeddings,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "mlp_bias": False,
    "initializer_range": config.init_std,
    "bos_token_id": eod_id,
    "eos_token_id": eod_id,
    "pretraining_tp": 1,
    "use_cache": True,
    "torch_dtype": dtype,
  }


# The tensors


@dataclasses.dataclass(frozen=True)
class _Tensor:
  """One parameter: its path in our tree, its transformers name, and the two layouts.

  ``to_hf`` maps one layer's array of ours to transformers' layout, given the config;
  ``from_hf`` is its inverse. Per-layer tensors have ``{layer}`` in ``name``.
  """

  path: tuple[str, ...]
  name: str
  to_hf: Callable
  from_hf: Callable

  @property
  def per_layer(self) -> bool:
    return "{layer}" in self.name


def _same(array, config):
  del config
  return array


def _transpose(array, config):
  del config
  return array.T


def _heads_in_to_hf(array, config):  # [D, N, H] -> [N*H, D]
  del config
  return array.reshape(array.shape[0], -1).T


def _query_from_hf(array, config):
  return array.T.reshape(config.hidden_dim, config.num_heads, config.resolved_head_dim)


def _kv_from_hf(array, config):
  return array.T.reshape(config.hidden_dim, config.num_kv_heads, config.resolved_head_dim)


def _output_to_hf(array, config):  # [N, H, D] -> [D, N*H]
  del config
  return array.reshape(-1, array.shape[-1]).T


def _output_from_hf(array, config):
  return array.T.reshape(config.num_heads, config.resolved_head_dim, config.hidden_dim)


_LAYER = "model.layers.{layer}."
_TENSORS = (
  _Tensor(("embedding",), "model.embed_tokens.weight", _same, _same),
  _Tensor(("blocks", "attention_norm", "scale"), _LAYER + "input_layernorm.weight", _same, _same),
  _Tensor(
    ("blocks", "attention", "query"),
    _LAYER + "self_attn.q_proj.weight",
    _heads_in_to_hf,
    _query_from_hf,
  ),
  _Tensor(
    ("blocks", "attention", "key"), _LAYER + "self_attn.k_proj.weight", _heads_in_to_hf, _kv_from_hf
  ),
  _Tensor(
    ("blocks", "attention", "value"),
    _LAYER + "self_attn.v_proj.weight",
    _heads_in_to_hf,
    _kv_from_hf,
  ),
  _Tensor(
    ("blocks", "attention", "output"),
    _LAYER + "self_attn.o_proj.weight",
    _output_to_hf,
    _output_from_hf,
  ),
  _Tensor(
    ("blocks", "mlp_norm", "scale"), _LAYER + "post_attention_layernorm.weight", _same, _same
  ),
  _Tensor(("blocks", "mlp", "gate"), _LAYER + "mlp.gate_proj.weight", _transpose, _transpose),
  _Tensor(("blocks", "mlp", "up"), _LAYER + "mlp.up_proj.weight", _transpose, _transpose),
  _Tensor(("blocks", "mlp", "down"), _LAYER + "mlp.down_proj.weight", _transpose, _transpose),
  _Tensor(("final_norm", "scale"), "model.norm.weight", _same, _same),
  _Tensor(("unembedding",), "lm_head.weight", _transpose, _transpose),
)


def _tensors(config: LlamaConfig) -> tuple[_Tensor, ...]:
  if config.tie_embeddings:
    return tuple(t for t in _TENSORS if t.path != ("unembedding",))
  return _TENSORS


def hf_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
  """Every transformers tensor name of ``config``'s model, with its shape."""
  d, m, v = config.hidden_dim, config.mlp_dim, config.vocab_size
  n, kv, h = config.num_heads, config.num_kv_heads, config.resolved_head_dim
  per_name = {
    "model.embed_tokens.weight": (v, d),
    "input_layernorm.weight": (d,),
    "self_attn.q_proj.weight": (n * h, d),
    "self_attn.k_proj.weight": (kv * h, d),
    "self_attn.v_proj.weight": (kv * h, d),
    "self_attn.o_proj.weight": (d, n * h),
    "post_attention_layernorm.weight": (d,),
    "mlp.gate_proj.weight": (m, d),
    "mlp.up_proj.weight": (m, d),
    "mlp.down_proj.weight": (d, m),
    "model.norm.weight": (d,),
    "lm_head.weight": (v, d),
  }
  shapes = {}
  for tensor in _tensors(config):
    shape = per_name[tensor.name.removeprefix(_LAYER)]
    names = (
      [tensor.name.format(layer=layer) for layer in range(config.num_layers)]
      if tensor.per_layer
      else [tensor.name]
    )
    shapes.update({name: shape for name in names})
  return shapes


def check_hf_tensors(
  shapes: dict[str, tuple[int, ...]], config: LlamaConfig, where: str = "the checkpoint"
) -> None:
  """Raises :class:`HFCheckpointError` unless ``shapes`` (name -> shape) are exactly the
  tensors of ``config``'s model (frequency buffers and a tied model's ``lm_head`` aside)."""
  wanted = hf_shapes(config)
  for name, shape in wanted.items():
    if name not in shapes:
      raise HFCheckpointError(
        f"{where} has no tensor {name}, which its config.json needs; "
        "the weights and config.json are from different models."
      )
    if tuple(shapes[name]) != shape:
      raise HFCheckpointError(
        f"{where}: {name} has shape {tuple(shapes[name])}, but config.json "
        f"needs {shape}; the weights and config.json are from different "
        "models."
      )
  extra = [
    name
    for name in shapes
    if name not in wanted
    and not name.endswith(IGNORED_SUFFIXES)
    and not (config.tie_embeddings and name == "lm_head.weight")
  ]
  if extra:
    raise HFCheckpointError(
      f"{where} has tensors this Llama does not use ({', '.join(extra[:3])}"
      f"{', ...' if len(extra) > 3 else ''}); it is not a plain Llama."
    )


def _get(tree: dict, path: tuple[str, ...]):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


class LazyParam:
  """One of our params, read from transformers tensors when indexed: ``param[index]`` (a
  tuple of slices, as ``jax.make_array_from_callback`` asks for one device's shard)
  reads only the layers that ``index`` selects, one layer's tensor at a time."""

  def __init__(self, tensor: _Tensor, read: Callable, config: LlamaConfig, dtype):
    self._tensor, self._read, self._config, self._dtype = tensor, read, config, dtype

  def _convert(self, name: str) -> np.ndarray:
    return self._tensor.from_hf(np.asarray(self._read(name), self._dtype), self._config)

  def __getitem__(self, index) -> np.ndarray:
    index = index if isinstance(index, tuple) else (index,)
    if not self._tensor.per_layer:
      return np.ascontiguousarray(self._convert(self._tensor.name)[index])
    layers = range(self._config.num_layers)[index[0]]
    return np.stack(
      [self._convert(self._tensor.name.format(layer=layer))[index[1:]] for layer in layers]
    )


def lazy_hf_params(read, config: LlamaConfig, dtype=None) -> dict:
  """Our params tree of :class:`LazyParam`, from ``read(name) -> np.ndarray``, in ``dtype``
  (default: ``config.param_dtype``)."""
  dtype = numpy_dtype(config.param_dtype) if dtype is None else dtype
  params: dict = {}
  for tensor in _tensors(config):
    _set(params, tensor.path, LazyParam(tensor, read, config, dtype))
  return params


def from_hf_tensors(read, config: LlamaConfig, dtype=None) -> dict:
  """Our params (pure dict of NumPy ``dtype`` arrays, default ``config.param_dtype``) from
  ``read(name) -> np.ndarray``, per-layer tensors stacked along the leading ``layers`` axis."""
  return jax.tree.map(lambda param: param[:], lazy_hf_params(read, config, dtype))


def to_hf_tensors(params: dict, config: LlamaConfig) -> dict[str, np.ndarray]:
  """transformers' ``state_dict`` (NumPy, C-contiguous) of our params (a pure dict)."""
  tensors = {}
  for tensor in _tensors(config):
    array = np.asarray(_get(params, tensor.path))
    if tensor.per_layer:
      for layer in range(config.num_layers):
        tensors[tensor.name.format(layer=layer)] = np.ascontiguousarray(
          tensor.to_hf(array[layer], config)
        )
    else:
      tensors[tensor.name] = np.ascontiguousarray(tensor.to_hf(array, config))
  return tensors


def to_hf(
  params: dict, config: LlamaConfig, eod_id: int, dtype: str = "float32"
) -> tuple[dict, dict[str, np.ndarray]]:
  """transformers' ``config.json`` dict (:func:`to_hf_config`) and ``state_dict``
  (:func:`to_hf_tensors`, cast to ``dtype``) of our params (a pure dict)."""
  numpy_type = numpy_dtype(dtype)
  tensors = {
    name: array.astype(numpy_type, copy=False)
    for name, array in to_hf_tensors(params, config).items()
  }
  return to_hf_config(config, eod_id, dtype), tensors
