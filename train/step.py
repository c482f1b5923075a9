"""The training state and the one jitted function that advances it by an outer step.

A step consumes one element of the data stream, ``tokens [K, B, T + 1]``, and runs the
K micro-batches in order with ``jax.lax.scan``: gradient accumulation for the baselines,
Nexus's inner loop for ``nexus``, or K calls of ``nexus_multisteps`` for the transparent
form. A step whose loss or update is not finite leaves params and optimizer state
untouched, except the counts that index schedules, and is counted in ``skipped_steps``.
Those counts (optax's learning-rate schedules and injected hyper-parameters, Nexus's
``inner_lr`` count) stay equal to ``TrainState.step``, the one step count that the
logged lr, the data position and the checkpoint share, so WSD still ends at its floor.
Adam's own count (its bias correction) counts the updates applied, as PyTorch's
GradScaler leaves it.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

import nexus_optax as nx
from train.optimizers import ACCUMULATE, NEXUS_MULTISTEPS, NEXUS_SCAN, StepKind


class TrainState(NamedTuple):
  """Everything a checkpoint holds besides data position and config.

  Attributes:
    step: outer steps taken, int32.
    params: the model parameters (a pure dict of arrays).
    opt_state: the optax state.
    rng: the run's raw ``uint32[2]`` PRNG key, checkpointed so that a stochastic
      extension (dropout, sampled evaluation) resumes exactly; the Llama has no
      dropout, so nothing draws from it today.
    skipped_steps: outer steps skipped for a non-finite loss or update, int32.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  skipped_steps: jax.Array


# The states whose count indexes a schedule, and that count's field.
SCHEDULE_COUNT_FIELDS = {
  optax.ScaleByScheduleState: "count",
  optax.InjectHyperparamsState: "count",
  optax.InjectStatefulHyperparamsState: "count",
  nx.NexusState: "count",
  nx.NexusMultiStepsState: "outer_count",
}


def _is_schedule_state(node) -> bool:
  return isinstance(node, optax.ScaleByScheduleState)


def _counts_a_schedule(node) -> bool:
  return type(node) in SCHEDULE_COUNT_FIELDS


def revert_unless_finite(finite: jax.Array, new_opt_state, old_opt_state):
  """``old_opt_state`` where the step is skipped, but with its schedule counts advanced."""

  def choose(new, old):
    if not _counts_a_schedule(new):
      return optax.tree.where(finite, new, old)
    field = SCHEDULE_COUNT_FIELDS[type(new)]
    # The other fields may hold states of their own (an outer optimizer, an inner one).
    reverted = type(new)(*(revert_unless_finite(finite, n, o) for n, o in zip(new, old)))
    return reverted._replace(**{field: getattr(new, field)})

  return jax.tree.map(choose, new_opt_state, old_opt_state, is_leaf=_counts_a_schedule)


def schedule_counts(opt_state) -> list[jax.Array]:
  """The count of every learning-rate schedule (``optax.ScaleByScheduleState``) in a state."""
  return [
    node.count
    for node in jax.tree.leaves(opt_state, is_leaf=_is_schedule_state)
    if _is_schedule_state(node)
  ]


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def accumulated_gradient(loss_fn, params, tokens):
  """Gradient accumulation: the K micro-batch losses and their mean gradient at ``params``.

  ``g = (1/K) sum_k grad loss_fn(params, tokens[k])``, summed in a ``lax.scan`` in at least
  float32 (one running total the size of the params, whatever K) and cast back to each
  parameter's dtype. The baselines' step runs it, and ``benchmarks.overhead`` times it.

  Returns:
    ``(losses [K], g)``.
  """
  grad_fn = jax.value_and_grad(loss_fn)
  zeros = jax.tree.map(
    lambda p: jnp.zeros(p.shape, jnp.promote_types(p.dtype, jnp.float32)), params
  )

  def add(total, micro_batch):
    loss, grads = grad_fn(params, micro_batch)
    return jax.tree.map(lambda t, g: t + g.astype(t.dtype), total, grads), loss

  total, losses = jax.lax.scan(add, zeros, tokens)
  count = jax.tree.leaves(tokens)[0].shape[0]
  return losses, jax.tree.map(lambda t, p: (t / count).astype(p.dtype), total, params)


def make_train_step(loss_fn: Callable, tx: optax.GradientTransformation, kind: StepKind):
  """``step(state, tokens) -> (state, metrics)`` for one outer step.

  Args:
    loss_fn: ``loss_fn(params, micro_batch_tokens) -> scalar``; with a ``nexus`` built
      with ``loss_takes_displacement=True`` (as ``build_optimizer`` builds it) it is also
      called as ``loss_fn(params, micro_batch_tokens, displacement)``, the loss at
      ``params - displacement``.
    tx: the optimizer of :func:`train.optimizers.build_optimizer`.
    kind: :func:`train.optimizers.step_kind` of the optimizer.

  Returns:
    The step; ``metrics`` holds ``train_loss`` (mean micro-batch loss: at the outer
    params for the baselines, along the inner trajectory for Nexus), ``update_norm``
    (norm of the gradient or pseudo-gradient before clipping), ``finite``, and the
    Nexus metrics for Nexus runs. ``skipped`` is True when the step was skipped;
    its Nexus metrics then describe the attempt that was discarded.
  """

  def accumulate(state, tokens):
    losses, grads = accumulated_gradient(loss_fn, state.params, tokens)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return (
      jnp.mean(losses),
      optax.tree.norm(grads),
      optax.apply_updates(state.params, updates),
      opt_state,
    )

  def nexus_scan(state, tokens):
    updates, opt_state = tx.update(
      None, state.opt_state, state.params, loss_fn=loss_fn, microbatches=tokens
    )
    metrics = nx.nexus_metrics(opt_state)
    return (
      metrics["inner_loss"],
      metrics["pseudo_grad_norm"],
      optax.apply_updates(state.params, updates),
      opt_state,
    )

  def nexus_multisteps(state, tokens):
    grad_fn = jax.value_and_grad(loss_fn)

    def one_call(carry, micro_batch):
      params, opt_state = carry
      loss, grads = grad_fn(params, micro_batch)
      updates, opt_state = tx.update(grads, opt_state, params, value=loss)
      return (optax.apply_updates(params, updates), opt_state), None

    (params, opt_state), _ = jax.lax.scan(one_call, (state.params, state.opt_state), tokens)
    metrics = nx.nexus_metrics(opt_state)
    return metrics["inner_loss"], metrics["pseudo_grad_norm"], params, opt_state

  update = {ACCUMULATE: accumulate, NEXUS_SCAN: nexus_scan, NEXUS_MULTISTEPS: nexus_multisteps}[
    kind
  ]

  def step(state: TrainState, tokens: jax.Array):
    loss, update_norm, params, opt_state = update(state, tokens)
    finite = jnp.isfinite(loss) & jnp.isfinite(update_norm) & _all_finite(params)
    new_state = TrainState(
      step=state.step + 1,
      params=optax.tree.where(finite, params, state.params),
      opt_state=revert_unless_finite(finite, opt_state, state.opt_state),
      rng=state.rng,
      skipped_steps=state.skipped_steps + jnp.where(finite, 0, 1).astype(jnp.int32),
    )
    metrics = {"train_loss": loss, "update_norm": update_norm, "finite": finite, "skipped": ~finite}
    if kind != ACCUMULATE:
      metrics.update({f"nexus/{key}": value for key, value in nx.nexus_metrics(opt_state).items()})
    return new_state, metrics

  return step
