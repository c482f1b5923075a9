"""Flax NNX Llama models with logical-axis sharding annotations, and their presets."""

from models.llama import Llama, LlamaConfig, next_token_loss
from models.presets import PAPER_SIZES, PRESETS, get_preset
from models.sharding import DEFAULT_RULES, logical_partition_specs, named_shardings

__all__ = [
  "DEFAULT_RULES",
  "Llama",
  "LlamaConfig",
  "PAPER_SIZES",
  "PRESETS",
  "get_preset",
  "logical_partition_specs",
  "named_shardings",
  "next_token_loss",
]
