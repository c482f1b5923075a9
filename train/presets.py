"""Run presets: the starting values of :class:`train.config.TrainConfig`, by name.

``tiny`` is for tests (seconds on a CPU). ``demo`` is the main job on two CPU cores.
The paper sizes use the paper's global batch of 256 sequences of 4096 tokens as
K = 4 micro-batches of 64, and train for 4x Chinchilla (80 tokens per non-embedding
parameter; the paper's 1B run is 4x, its 3B run 2x). Table 6 gives the outer lr of the
1B (``520m``) model, 0.002, and of the 3B (``2.3b``) one, 0.001; the other sizes take
the nearer of the two.
"""

import dataclasses
import math

from models.presets import PRESETS as MODEL_PRESETS
from train.config import ConfigError, TrainConfig

_PAPER_BATCH = {"seq_len": 4096, "micro_batch_size": 64, "microbatches": 4}


def _chinchilla_steps(model: str, multiple: float = 4.0) -> int:
  tokens_per_step = 4096 * 64 * 4
  return math.ceil(multiple * 20 * MODEL_PRESETS[model].non_embedding_params() / tokens_per_step)


RUN_PRESETS: dict[str, TrainConfig] = {
  "tiny": TrainConfig(
    model="tiny",
    seq_len=64,
    micro_batch_size=4,
    microbatches=4,
    lr=3e-3,
    steps=20,
    checkpoint_every=10,
    eval_every=10,
    eval_sequences=8,
    log_every=1,
    out="runs/tiny",
  ),
  # bpe-2048: at the same training time it reaches 2.52 validation bits per byte against
  # the byte tokenizer's 3.26 (benchmarks/RESULTS.md, "Train on your own data").
  # 60 steps (492k tokens) and 3 evaluations of 16 windows a set keep the main job, both
  # runs side by side on 2 cores, within 10 minutes from a fresh clone (RESULTS.md, "The
  # main job and the test suite").
  "demo": TrainConfig(
    model="demo",
    seq_len=256,
    micro_batch_size=8,
    microbatches=4,
    lr=2e-3,
    steps=60,
    checkpoint_every=20,
    eval_every=20,
    eval_sequences=16,
    log_every=4,
    out="runs/demo",
    tokenizer="bpe-2048",
  ),
  **{
    name: TrainConfig(
      model=name,
      lr=lr,
      steps=_chinchilla_steps(name),
      checkpoint_every=1000,
      eval_every=1000,
      eval_sequences=64,
      log_every=10,
      out=f"runs/{name}",
      **_PAPER_BATCH,
    )
    for name, lr in (("130m", 2e-3), ("300m", 2e-3), ("520m", 2e-3), ("1.2b", 1e-3), ("2.3b", 1e-3))
  },
}


def get_run_preset(name: str, **overrides) -> TrainConfig:
  """The named run preset with ``overrides`` applied (and checked).

  Example:
    >>> config = get_run_preset("demo", optimizer="adamw", steps=50)
    >>> config.optimizer, config.microbatches, config.resolved_weight_decay
    ('adamw', 4, 0.2)
  """
  if name not in RUN_PRESETS:
    raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(RUN_PRESETS)}.")
  return dataclasses.replace(RUN_PRESETS[name], **overrides)
