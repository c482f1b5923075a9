"""Model presets: two CPU sizes and the paper's five Llama sizes.

The paper (Sec. 4.1) trains Llama models of 130M, 300M, 520M, 1.2B and 2.3B
non-embedding parameters "following wen2025fantastic". That work's code
(marin-community/marin, ``marin/optimizer_sweep/models.py``) defines the first four,
all with 32 layers, ``num_kv_heads == num_heads``, an MLP four times the width, head
width 64 and sequence length 4096, and counts their size as

    L * (3 * hidden * mlp + 4 * hidden^2)

which gives 134.2M, 302.0M, 536.9M and 1208.0M: the 130M and 520M names round down by
3.2-3.3 %. The 2.3B size is not in that file. Derived here in the same family:
the hidden widths grow 512 -> 768 -> 1024 -> 1536, and the next step of the series,
2048 (32 heads of 64), gives 2147.5M at 32 layers, 6.6 % short of 2.3B; holding
width, head width and MLP ratio fixed, depth is the free dimension and 34 layers give
2281.7M (-0.8 %). The other in-family candidate, width 2112 with 33 heads, gives
2283.8M at 32 layers but a head count that no tensor-parallel degree > 1 divides.

The paper's totals (520M = "1B", 2.3B = "3B" with embeddings) fit untied
embeddings over a vocabulary of about 150K tokens (2.28B + 2 * 151936 * 2048 = 2.90B).
Here ``vocab_size`` is 384 everywhere: the byte-level tokenizer of ``train.data``
(256 bytes and an end-of-document token, padded to a multiple of 128 so that the vocab
axis shards). A run on another tokenizer takes its vocabulary from its token cache,
padded the same way (``train.build.build_training``'s ``vocab_size``).

The paper presets compute in bfloat16 with float32 parameters and full
rematerialisation, as one would train them on accelerators; ``tiny`` and ``demo``
compute in float32 for the CPU.
"""

import dataclasses

import jax
from flax import nnx

from models.llama import Llama, LlamaConfig

BYTE_VOCAB_SIZE = 384

# Sizes the paper names, in non-embedding parameters (Sec. 4.1).
PAPER_SIZES = {"130m": 130e6, "300m": 300e6, "520m": 520e6, "1.2b": 1.2e9, "2.3b": 2.3e9}


def _paper(hidden_dim: int, num_heads: int, num_layers: int = 32) -> LlamaConfig:
  return LlamaConfig(
    vocab_size=BYTE_VOCAB_SIZE,
    hidden_dim=hidden_dim,
    mlp_dim=4 * hidden_dim,
    num_layers=num_layers,
    num_heads=num_heads,
    num_kv_heads=num_heads,
    max_seq_len=4096,
    remat="full",
    compute_dtype="bfloat16",
  )


PRESETS: dict[str, LlamaConfig] = {
  # Tests: every feature on (GQA with 2 query heads per kv head, untied output).
  "tiny": LlamaConfig(
    vocab_size=BYTE_VOCAB_SIZE,
    hidden_dim=64,
    mlp_dim=192,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    max_seq_len=128,
  ),
  # The main job: two runs of it fit in 15 minutes on 2 CPU cores
  # (benchmarks/RESULTS.md has its measured step time). Unrolled: XLA:CPU runs the four
  # layers faster than under a scan (262 against 291 us/token, benchmarks/RESULTS.md).
  # Causal attention in 4 query blocks of 64 that skip the masked keys: 0.92-0.99 of the
  # full mask's forward + backward time (`python -m benchmarks.attention`; the attention
  # alone 0.65, 128 about the same on the model, 32 slower). The paper
  # presets keep the full mask: on accelerators they take a fused kernel
  # (attention_impl), and at T = 4096 the unrolled loop would be 64 blocks per layer.
  "demo": LlamaConfig(
    vocab_size=BYTE_VOCAB_SIZE,
    hidden_dim=256,
    mlp_dim=768,
    num_layers=4,
    num_heads=4,
    num_kv_heads=4,
    max_seq_len=256,
    scan_layers=False,
    attention_block_size=64,
  ),
  # The replication study (studies/replication/): ~70 runs must fit in 80 minutes on
  # 2 CPU cores, so a run of 600k tokens takes under a minute (about 25k tokens/s).
  "mini": LlamaConfig(
    vocab_size=BYTE_VOCAB_SIZE,
    hidden_dim=96,
    mlp_dim=288,
    num_layers=3,
    num_heads=4,
    num_kv_heads=4,
    max_seq_len=128,
    scan_layers=False,
  ),
  "130m": _paper(512, 8),
  "300m": _paper(768, 12),
  "520m": _paper(1024, 16),
  "1.2b": _paper(1536, 24),
  "2.3b": _paper(2048, 32, num_layers=34),
}


def get_preset(name: str, **overrides) -> LlamaConfig:
  """The named preset, with any field replaced.

  Example:
    >>> get_preset("tiny", scan_layers=False).scan_layers
    False
  """
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}.")
  return dataclasses.replace(PRESETS[name], **overrides)


def preset_table() -> str:
  """Markdown table of every preset's shape and its non-embedding size from ``nnx.eval_shape``
  (nothing is allocated), against the paper's figure."""
  lines = [
    "| preset | layers | hidden | mlp | heads / kv | non-embedding (eval_shape) | paper | diff |",
    "|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for name, config in PRESETS.items():
    abstract = nnx.eval_shape(lambda config=config: Llama(config, rngs=nnx.Rngs(0)))
    total = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    non_embedding = total - 2 * config.vocab_size * config.hidden_dim
    paper = PAPER_SIZES.get(name)
    diff = f"{non_embedding / paper - 1:+.1%}" if paper else ""
    lines.append(
      f"| {name} | {config.num_layers} | {config.hidden_dim} | {config.mlp_dim} | "
      f"{config.num_heads} / {config.num_kv_heads} | {non_embedding / 1e6:,.2f}M | "
      f"{f'{paper / 1e6:,.0f}M' if paper else ''} | {diff} |"
    )
  return "\n".join(lines)
