"""Nexus, transparent form: the paper's Algorithm 3, one micro-batch per call.

Reference: Chen et al., https://arxiv.org/abs/2604.09258, Algorithm 3 (engineering
adaptation) and Sec. 3.3; :ref:`algorithm`.

The caller's parameters are the inner model. With outer parameters theta_{t-1}
stored in the state, call m = 1..K of outer step t receives
g_m = grad L_m(theta_{t,m-1}) at the caller's parameters theta_{t,m-1} and

  m < K:  emits  -gamma * g_m / ||g_m||          (theta_{t,m} = theta_{t,m-1} - gamma u_m)
  m = K:  g_hat    = (theta_{t-1} - theta_{t,K-1}) + gamma * g_K / ||g_K||
          theta_t  = theta_{t-1} + outer.update(g_hat, outer_state, theta_{t-1})
          emits  theta_t - theta_{t,K-1}         (the caller's params become theta_t)

Every emitted update has the parameters' dtype, as optax's optimizers keep it. With
bfloat16 parameters the K-th update is rounded, so the stored theta_t is where the
caller's parameters land, ``optax.apply_updates(params, updates)``, not the unrounded
outer step: the two never drift apart.

The outer optimizer runs only at the K-th call, so between syncs its state does
not move: no moment decay, no step count, no weight decay. On the same
micro-batches this gives the outer parameters of ``chain(nexus(...), outer)``.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from nexus_optax import _inner_step
from nexus_optax._inner_step import Normalize
from nexus_optax._metrics import InnerStepSums, NexusMetrics, summarize_outer_step


class NexusMultiStepsState(NamedTuple):
  """State of :func:`nexus_multisteps`.

  Attributes:
    mini_step: micro-batches consumed in the current outer step, in [0, K).
    outer_count: outer steps completed, int32; the argument of an ``inner_lr``
      schedule.
    outer_params: the outer parameters theta_{t-1}, in the parameters' dtypes:
      the one parameter-sized buffer this form adds.
    outer_state: the outer optimizer's state, untouched between syncs.
    sums: :class:`InnerStepSums` of the current outer step so far.
    metrics: :class:`NexusMetrics` of the last completed outer step.
  """

  mini_step: jax.Array
  outer_count: jax.Array
  outer_params: Any
  outer_state: Any
  sums: InnerStepSums
  metrics: NexusMetrics


def nexus_multisteps(
  outer: optax.GradientTransformation,
  every_k: int,
  inner_lr: float | optax.Schedule = 0.01,
  *,
  normalize: Normalize = "global",
  skip_nonfinite: bool = True,
  batch_axis_name: str | None = None,
  mask: Any = None,
) -> optax.GradientTransformationExtraArgs:
  """Wraps an outer optimizer in Nexus for loops that feed one micro-batch per call.

  The paper's Algorithm 3, shaped like ``optax.MultiSteps``: pass each
  micro-batch gradient, taken at the current (inner) parameters, to ``update``
  and apply the returned updates. Every call but the K-th emits the normalized
  inner step; the K-th applies ``outer`` to the pseudo-gradient from the stored
  outer parameters and moves the caller's parameters to the new outer
  parameters. Extra memory: one parameter-sized buffer (the outer parameters).

  The caller's parameters hold the inner trajectory, so with bfloat16
  parameters each inner step is rounded to bfloat16 (as in a PyTorch
  Algorithm 3 with a bfloat16 ``inner_model``); :func:`nexus_optax.nexus`
  accumulates in float32 and avoids that.

  Args:
    outer: the outer optimizer (e.g. ``optax.adamw``); it receives the
      pseudo-gradient as its gradient and any extra keyword arguments of
      ``update`` at the K-th call.
    every_k: K, the number of micro-batches (inner steps) per outer step.
    inner_lr: gamma, a positive float or an optax schedule of the outer step
      count.
    normalize: ``"global"`` (the paper) or ``"per_leaf"``.
    skip_nonfinite: a non-finite gradient (or ``value``) gives a zero inner step
      and is counted in ``nexus_metrics(state)["skipped_steps"]``.
    batch_axis_name: the ``jax.shard_map`` or ``pmap`` axis over which each
      micro-batch's rows are split. The incoming gradient (and ``value``) is averaged
      over it with ``lax.pmean`` before the norm, so every replica takes the same
      inner step (:ref:`distributed-and-masked-inner-steps`). Parameters must be
      replicated over the axis. Under ``shard_map`` with ``check_vma=True``, pass the
      per-replica loss as ``value=``: autodiff has then summed the gradient over the axis,
      and the loss is how the sum is told from a mean (the step is right either way; the
      ``inner_grad_norm`` metric is not without it).
    mask: which parameters train, as ``optax.masked`` takes it (a pytree of bools or a
      callable of params). Masked-out leaves take no inner step, stay out of the norm,
      and reach ``outer`` (wrapped in ``optax.masked``) as zero pseudo-gradients, so
      they stay bit-identical; their gradients are ignored. Non-float leaves must be
      masked out.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` is
    ``update(grads, state, params, *, value=None, **extra_args)``; ``value``,
    the micro-batch loss, is optional and only feeds the ``inner_loss`` metric.

  References:
    Chen et al., `Same Pretraining Loss, Better Downstream Generalization via Common
    Minima <https://arxiv.org/abs/2604.09258>`_, 2026 (arXiv:2604.09258).

  Example:
    >>> import jax, jax.numpy as jnp, optax, nexus_optax as nx
    >>> loss_fn = lambda params, x: jnp.sum((params - x) ** 2)
    >>> tx = nx.nexus_multisteps(optax.sgd(1.0), every_k=2, inner_lr=0.5)
    >>> params = jnp.zeros(2)
    >>> state = tx.init(params)
    >>> for x in jnp.array([[3.0, 4.0], [3.0, 4.0]]):
    ...   loss, grads = jax.value_and_grad(loss_fn)(params, x)
    ...   updates, state = tx.update(grads, state, params, value=loss)
    ...   params = optax.apply_updates(params, updates)
    >>> params  # one outer SGD step along g_hat = 2 * 0.5 * (-0.6, -0.8)
    Array([0.6, 0.8], dtype=float32)
  """
  if isinstance(every_k, bool) or not isinstance(every_k, int) or every_k < 1:
    raise ValueError(
      f"every_k must be an integer >= 1 (got {every_k!r}); set it to the number "
      "of micro-batches per outer step."
    )
  _inner_step.check_inner_lr(inner_lr)
  _inner_step.check_normalize(normalize)
  _inner_step.check_mask(mask)
  # Frozen leaves reach the outer optimizer as zero pseudo-gradients, which optax.masked
  # passes through untouched: no weight decay, no moments, no state for them.
  outer = optax.with_extra_args_support(outer if mask is None else optax.masked(outer, mask))
  who = "nexus_multisteps"

  def init_fn(params: optax.Params) -> NexusMultiStepsState:
    _inner_step.trainable_flags(params, mask, who)
    return NexusMultiStepsState(
      mini_step=jnp.zeros([], jnp.int32),
      outer_count=jnp.zeros([], jnp.int32),
      # A copy, so that a step may donate both params and this state.
      outer_params=jax.tree.map(lambda p: jnp.array(p, copy=True), params),
      outer_state=outer.init(params),
      sums=InnerStepSums.zeros(),
      metrics=NexusMetrics.initial(),
    )

  def update_fn(
    updates: optax.Updates,
    state: NexusMultiStepsState,
    params: optax.Params | None = None,
    *,
    value: jax.Array | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, NexusMultiStepsState]:
    if params is None:
      raise ValueError("nexus_multisteps needs params: call tx.update(grads, state, params).")
    if updates is None:
      raise ValueError(
        "nexus_multisteps needs the micro-batch gradient taken at params: call "
        "tx.update(jax.grad(loss_fn)(params, microbatch), state, params)."
      )
    trains = _inner_step.trainable_flags(params, mask, who)
    param_leaves, treedef = jax.tree.flatten(params)
    trained_params = _inner_step.select(param_leaves, trains)
    grad_leaves = jax.tree.leaves(jax.tree.map(lambda _, g: g, params, updates))
    trained_grads = _inner_step.select(grad_leaves, trains)
    value, trained_grads = _inner_step.mean_over_batch_axis(
      value, trained_grads, batch_axis_name, who
    )
    inner_lr_now = _inner_step.inner_lr_at(inner_lr, state.outer_count)
    inner = _inner_step.normalized_step(
      trained_grads,
      inner_lr_now,
      normalize=normalize,
      skip_nonfinite=skip_nonfinite,
      loss=value,
    )
    taken = (inner.finite if skip_nonfinite else jnp.asarray(True)).astype(jnp.float32)
    has_loss = taken * float(value is not None)
    loss = jnp.asarray(0.0 if value is None else value, jnp.float32)
    sums = InnerStepSums(
      loss_sum=state.sums.loss_sum + jnp.where(has_loss > 0, loss, 0.0),
      loss_count=state.sums.loss_count + has_loss,
      grad_norm_sum=state.sums.grad_norm_sum + jnp.where(taken > 0, inner.grad_norm, 0.0),
      unit_sq_norm_sum=state.sums.unit_sq_norm_sum + inner.unit_sq_norm,
      steps_taken=state.sums.steps_taken + taken,
      steps_skipped=state.sums.steps_skipped + (1.0 - taken),
    )

    def with_frozen_zeros(trained_leaves: list[jax.Array]) -> optax.Updates:
      return jax.tree.unflatten(
        treedef,
        _inner_step.scatter(trained_leaves, trains, lambda i: jnp.zeros_like(param_leaves[i])),
      )

    def inner_update() -> tuple[optax.Updates, NexusMultiStepsState]:
      emitted = optax.tree.cast_like(with_frozen_zeros([-step for step in inner.step]), params)
      return emitted, state._replace(mini_step=state.mini_step + 1, sums=sums)

    def outer_update() -> tuple[optax.Updates, NexusMultiStepsState]:
      trained_outer = _inner_step.select(jax.tree.leaves(state.outer_params), trains)
      pseudo_gradient = [
        outer_p.astype(s.dtype) - p.astype(s.dtype) + s
        for outer_p, p, s in zip(trained_outer, trained_params, inner.step)
      ]
      outer_updates, outer_state = outer.update(
        optax.tree.cast_like(with_frozen_zeros(pseudo_gradient), params),
        state.outer_state,
        state.outer_params,
        **extra_args,
      )
      new_outer_params = optax.apply_updates(state.outer_params, outer_updates)
      emitted = optax.tree.cast_like(
        with_frozen_zeros(
          [
            new.astype(s.dtype) - p.astype(s.dtype)
            for new, p, s in zip(
              _inner_step.select(jax.tree.leaves(new_outer_params), trains),
              trained_params,
              inner.step,
            )
          ]
        ),
        params,
      )
      # The emitted update is rounded to the parameters' dtype, so the caller's parameters
      # land within rounding of theta_t; storing where they land keeps the two identical.
      outer_params = optax.apply_updates(params, emitted)
      metrics = summarize_outer_step(
        sums,
        pseudo_grad_sq_norm=optax.tree.norm(pseudo_gradient, squared=True),
        inner_lr=inner_lr_now,
        previous=state.metrics,
      )
      return emitted, NexusMultiStepsState(
        mini_step=jnp.zeros([], jnp.int32),
        outer_count=optax.safe_increment(state.outer_count),
        outer_params=outer_params,
        outer_state=outer_state,
        sums=InnerStepSums.zeros(),
        metrics=metrics,
      )

    emitted, new_state = jax.lax.cond(state.mini_step == every_k - 1, outer_update, inner_update)
    return emitted, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
