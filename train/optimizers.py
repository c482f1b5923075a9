"""Learning-rate schedules and the optimizers the CLI offers, all built from optax.

The baselines and Nexus share everything but the Nexus transformation. For K
micro-batches in a fixed order:

  adamw / muon / sgd    g     = mean_m grad L_m(theta)              (gradient accumulation)
  nexus / nexus-muon    g_hat = Nexus inner loop over the same K    (``nexus_optax.nexus``)
  nexus-multisteps      the same g_hat, one micro-batch per call    (``nexus_multisteps``)

then the same ``clip_by_global_norm(clip)`` and the same outer optimizer with the same
schedule, betas, eps and weight decay.
"""

from typing import Literal, get_args

import jax
import optax

import nexus_optax as nx
from train.config import Optimizer, TrainConfig

# How the step consumes the K micro-batches.
StepKind = Literal["accumulate", "nexus", "nexus-multisteps"]
ACCUMULATE, NEXUS_SCAN, NEXUS_MULTISTEPS = get_args(StepKind)


def step_kind(optimizer: Optimizer) -> StepKind:
  return {"nexus": NEXUS_SCAN, "nexus-muon": NEXUS_SCAN, "nexus-multisteps": NEXUS_MULTISTEPS}.get(
    optimizer, ACCUMULATE
  )


def learning_rate_schedule(config: TrainConfig) -> optax.Schedule:
  """WSD or cosine over ``config.steps``, indexed by the outer step count.

  Warmup rises linearly from ``lr / warmup`` to ``lr`` (no wasted first step at lr 0).
  WSD then holds ``lr`` and decays linearly to ``lr * final_lr_fraction`` over the last
  ``decay_fraction`` of the run; cosine decays to that value from the end of warmup.

  Example:
    >>> from train.config import TrainConfig
    >>> schedule = learning_rate_schedule(TrainConfig(lr=1.0, steps=100))
    >>> [round(float(schedule(s)), 2) for s in (0, 1, 50, 90, 95, 99)]
    [1.0, 1.0, 1.0, 1.0, 0.5, 0.1]
  """
  steps, peak, floor = config.steps, config.lr, config.lr * config.final_lr_fraction
  warmup = max(1, round(config.warmup_fraction * steps))
  rise = optax.linear_schedule(peak / warmup, peak, max(warmup - 1, 1))
  if config.schedule == "cosine":
    fall = optax.cosine_decay_schedule(peak, max(steps - warmup, 1), alpha=config.final_lr_fraction)
    return optax.join_schedules([rise, fall], [warmup])
  decay = round(config.decay_fraction * steps)
  hold = steps - warmup - decay
  fall = optax.linear_schedule(peak, floor, max(decay, 1))
  return optax.join_schedules(
    [rise, optax.constant_schedule(peak), fall], [warmup, warmup + max(hold, 0)]
  )


def decay_mask(params):
  """Weight decay on matrices only: norm scales (1-D, or stacked [layers, d]) are skipped."""
  return jax.tree_util.tree_map_with_path(
    lambda path, leaf: not any("norm" in str(getattr(key, "key", "")) for key in path), params
  )


def muon_dimension_numbers(params):
  """Muon's matrix view of every Llama weight; None sends a leaf to Muon's Adam.

  Layers are stacked on axis 0, which Muon treats as a batch axis. Attention tensors
  keep heads as separate axes: query/key/value map [d] -> [heads, head_dim], output
  maps [heads, head_dim] -> [d]. Embedding, unembedding and norms go to Adam, as in
  Jordan et al.'s Muon and Moonlight.
  """
  dims = optax.contrib.MuonDimensionNumbers

  def choose(path, leaf):
    names = [str(getattr(key, "key", "")) for key in path]
    if names[0] != "blocks" or "norm" in names[1]:
      return None
    if names[-1] == "output":
      return dims(reduction_axis=(1, 2), output_axis=3)
    if names[1] == "attention":
      return dims(reduction_axis=1, output_axis=(2, 3))
    return dims(reduction_axis=1, output_axis=2)

  return jax.tree_util.tree_map_with_path(choose, params)


def outer_optimizer(config: TrainConfig) -> optax.GradientTransformation:
  """Clip, then AdamW / Muon / SGD with the schedule and Table 6's hyper-parameters."""
  schedule = learning_rate_schedule(config)
  weight_decay = config.resolved_weight_decay
  if config.optimizer in ("muon", "nexus-muon"):
    # consistent_rms=0.2 scales Muon's orthogonal updates to AdamW's RMS (Moonlight),
    # so one lr and one weight decay serve the matrices and the Adam-handled leaves.
    base = optax.contrib.muon(
      schedule,
      weight_decay=weight_decay,
      weight_decay_mask=decay_mask,
      adam_b1=config.b1,
      adam_b2=config.b2,
      eps=config.eps,
      adam_weight_decay=weight_decay,
      consistent_rms=0.2,
      muon_weight_dimension_numbers=muon_dimension_numbers,
    )
  elif config.optimizer == "sgd":
    base = optax.chain(
      optax.add_decayed_weights(weight_decay, mask=decay_mask), optax.sgd(schedule)
    )
  else:
    base = optax.adamw(
      schedule,
      b1=config.b1,
      b2=config.b2,
      eps=config.eps,
      weight_decay=weight_decay,
      mask=decay_mask,
    )
  return optax.chain(optax.clip_by_global_norm(config.clip_norm), base)


def build_optimizer(config: TrainConfig) -> optax.GradientTransformation:
  """The full transformation for ``config.optimizer`` (see the module docstring)."""
  outer = outer_optimizer(config)
  kind = step_kind(config.optimizer)
  if kind == NEXUS_SCAN:
    # train.build's loss forms the inner point layer by layer inside the model's scan,
    # which saves the parameter-sized copy nexus would otherwise build (the same g_hat).
    return optax.chain(nx.nexus(inner_lr=config.inner_lr, loss_takes_displacement=True), outer)
  if kind == NEXUS_MULTISTEPS:
    return nx.nexus_multisteps(outer, every_k=config.microbatches, inner_lr=config.inner_lr)
  return outer
