"""The run configuration: one frozen dataclass, checked before anything is built.

Every field has a CLI flag of the same name (``--inner-lr`` for ``inner_lr``); a run preset
(:mod:`train.presets`) supplies the starting values and flags override them. Defaults are
the paper's Table 6: AdamW betas (0.9, 0.95), eps 1e-10, weight decay 0.2 (0.1 for Muon),
global-norm clip 1.0, inner lr 0.01 and a WSD schedule whose warmup and decay are the
paper's 1,000 and 10,000 of its roughly 100,000 steps, i.e. 1 % and 10 % of the run.
"""

import dataclasses
import math
from typing import Literal, get_args

from models.presets import PRESETS as MODEL_PRESETS
from train.data.corpus import builtin_bpe_size
from train.data.roles import MODES, BatchMode
from train.data.tokenizer import TokenizerError

# The string fields' values. The fields are annotated ``str`` (naming these in a comment):
# train.pretrain's parser takes each field's annotation as its argparse type.
Optimizer = Literal["adamw", "nexus", "nexus-multisteps", "muon", "nexus-muon", "sgd"]
Schedule = Literal["wsd", "cosine"]
OPTIMIZERS = get_args(Optimizer)
SCHEDULES = get_args(Schedule)

# Fields that shape the training trajectory: a resumed run must agree on every one.
TRAJECTORY_FIELDS = (
  "model",
  "seq_len",
  "micro_batch_size",
  "microbatches",
  "mixture",
  "batch_mode",
  "seed",
  "optimizer",
  "lr",
  "inner_lr",
  "schedule",
  "warmup_fraction",
  "decay_fraction",
  "final_lr_fraction",
  "b1",
  "b2",
  "eps",
  "weight_decay",
  "clip_norm",
  "steps",
  "corpus_seed",
  "tokenizer",
  "init_from_hf",
)


class ConfigError(ValueError):
  """A bad configuration or command line; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything that defines a pretraining run.

  Attributes:
    model: a model preset of :data:`models.PRESETS`. With ``init_from_hf`` the checkpoint
      gives the shape and the preset only how it computes (layer scan, remat, dtypes,
      attention implementation).
    seq_len: tokens per training sequence.
    micro_batch_size: sequences per micro-batch, over all devices and processes.
    microbatches: K, micro-batches per outer step (Nexus inner steps, or the
      accumulation steps of the baselines). Global batch = K x micro_batch_size.
    mixture: ``name=weight,...`` over the data's training domains; empty means the data
      spec's own weights (the run records the weights it used).
    batch_mode: ``mixed`` (every micro-batch holds every domain; Algorithm 3) or
      ``source`` (one domain per micro-batch; Algorithm 1).
    seed: seed of the initialisation and of every data shuffle.
    optimizer: ``adamw``, ``nexus``, ``nexus-multisteps``, ``muon``, ``nexus-muon`` or ``sgd``.
      The ``nexus*`` ones wrap the matching outer optimizer (AdamW or Muon) and
      differ from it in nothing else.
    lr: peak outer learning rate.
    inner_lr: Nexus's gamma (ignored by the baselines).
    schedule: ``wsd`` or ``cosine``.
    warmup_fraction: linear warmup, as a fraction of ``steps`` (at least one step).
    decay_fraction: WSD's final linear decay, as a fraction of ``steps``.
    final_lr_fraction: the schedule ends at ``lr * final_lr_fraction``.
    b1, b2, eps: Adam moments (Muon's Adam part too; b2 unused by SGD).
    weight_decay: decoupled weight decay on matrices; ``None`` means Table 6's
      0.2, or 0.1 for Muon.
    clip_norm: global-norm clip of the (pseudo-)gradient.
    steps: outer steps.
    corpus_seed: seed of the generated part of the built-in corpus.
    data: a token cache prepared by ``python -m train.data.prepare``; empty means the
      built-in corpus, prepared with ``tokenizer`` on first use.
    tokenizer: the built-in corpus's tokenizer: ``bytes``, or ``bpe-N``, a byte-level BPE
      of N tokens trained on its training text on first use. Empty when ``data`` or
      ``init_from_hf`` brings the tokenizer (the CLI empties it then, unless given).
    init_from_hf: a Hugging Face Llama checkpoint folder to start from: its weights, its
      model config and its tokenizer (``train.hf``); empty means a fresh initialisation.
    mesh: ``data=..,fsdp=..,tensor=..``; one axis may be -1 (all remaining devices).
    out: run directory (checkpoints, metrics.jsonl, TensorBoard events).
    checkpoint_every: save every N steps (and at the end, and on SIGTERM).
    keep_checkpoints: how many recent checkpoints to keep.
    eval_every: evaluate every N steps (and at the end); 0 only at the end.
    eval_sequences: sequences scored per evaluation set.
    log_every: write metrics every N steps.
    max_skipped_steps: stop the run once this many consecutive outer steps have been
      skipped for a non-finite loss or update (its checkpoints stay those of before the
      skips); 0 never stops.
  """

  model: str = "demo"
  seq_len: int = 256
  micro_batch_size: int = 8
  microbatches: int = 4
  mixture: str = ""
  batch_mode: BatchMode = "mixed"
  seed: int = 0
  optimizer: Optimizer = "nexus"
  lr: float = 2e-3
  inner_lr: float = 0.01
  schedule: Schedule = "wsd"
  warmup_fraction: float = 0.01
  decay_fraction: float = 0.1
  final_lr_fraction: float = 0.0
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-10
  weight_decay: float | None = None
  clip_norm: float = 1.0
  steps: int = 300
  corpus_seed: int = 0
  data: str = ""
  tokenizer: str = "bytes"
  init_from_hf: str = ""
  mesh: str = "fsdp=-1"
  out: str = "runs/demo"
  checkpoint_every: int = 100
  keep_checkpoints: int = 3
  eval_every: int = 100
  eval_sequences: int = 32
  log_every: int = 10
  max_skipped_steps: int = 10

  def __post_init__(self):
    if self.model not in MODEL_PRESETS:
      raise ConfigError(
        f"unknown model preset {self.model!r}; choose from {', '.join(MODEL_PRESETS)}."
      )
    if self.optimizer not in OPTIMIZERS:
      raise ConfigError(
        f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}."
      )
    if self.schedule not in SCHEDULES:
      raise ConfigError(f"unknown schedule {self.schedule!r}; choose wsd or cosine.")
    if self.batch_mode not in MODES:
      raise ConfigError(f"unknown batch mode {self.batch_mode!r}; choose mixed or source.")
    minimums = {
      "seq_len": 1,
      "micro_batch_size": 1,
      "microbatches": 1,
      "steps": 1,
      "checkpoint_every": 1,
      "keep_checkpoints": 1,
      "eval_every": 0,
      "eval_sequences": 1,
      "log_every": 1,
      "max_skipped_steps": 0,
      "seed": 0,
      "corpus_seed": 0,
    }
    for name, minimum in minimums.items():
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        flag = "--" + name.replace("_", "-")
        raise ConfigError(f"{flag} must be an integer >= {minimum}, got {value!r}.")
    for name in ("lr", "inner_lr", "clip_norm"):
      value = getattr(self, name)
      if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(f"--{name.replace('_', '-')} must be a finite number > 0, got {value!r}.")
    for name in ("warmup_fraction", "decay_fraction", "final_lr_fraction", "b1", "b2"):
      value = getattr(self, name)
      if not (0 <= value < 1):
        raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1), got {value!r}.")
    if self.warmup_fraction + self.decay_fraction > 1:
      raise ConfigError("--warmup-fraction plus --decay-fraction exceeds 1; shorten one of them.")
    if not self.eps > 0:
      raise ConfigError(f"--eps must be > 0, got {self.eps!r}.")
    if self.weight_decay is not None and not self.weight_decay >= 0:
      raise ConfigError(f"--weight-decay must be >= 0, got {self.weight_decay!r}.")
    if self.tokenizer or not (self.data or self.init_from_hf):
      try:
        builtin_bpe_size(self.tokenizer)
      except TokenizerError as error:
        raise ConfigError(
          f"--tokenizer: {error} For your own tokenizer, prepare a cache and pass --data."
        ) from None
    max_len = MODEL_PRESETS[self.model].max_seq_len
    if self.seq_len > max_len and not self.init_from_hf:  # else the checkpoint's own limit
      raise ConfigError(
        f"--seq-len {self.seq_len} exceeds the {self.model} model's max_seq_len "
        f"{max_len}; lower it."
      )

  @property
  def resolved_weight_decay(self) -> float:
    """Table 6: 0.1 for Muon, 0.2 otherwise, unless set."""
    if self.weight_decay is not None:
      return self.weight_decay
    return 0.1 if self.optimizer in ("muon", "nexus-muon") else 0.2

  @property
  def tokens_per_step(self) -> int:
    return self.microbatches * self.micro_batch_size * self.seq_len

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: dict) -> "TrainConfig":
    known = {field.name for field in dataclasses.fields(cls)}
    return cls(**{key: value for key, value in values.items() if key in known})

  def trajectory_mismatch(self, saved: "TrainConfig") -> list[str]:
    """``field: saved -> now`` for each trajectory field that differs from ``saved``
    (the tokenizer only where it applies: the built-in corpus, not a cache or checkpoint
    that brings its own, which the run's data record checks instead)."""

    def value(config, name):
      if name == "tokenizer" and (config.data or config.init_from_hf):
        return ""
      return getattr(config, name)

    return [
      f"{name}: {value(saved, name)!r} -> {value(self, name)!r}"
      for name in TRAJECTORY_FIELDS
      if value(saved, name) != value(self, name)
    ]
