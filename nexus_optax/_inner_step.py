"""The normalized-SGD inner step shared by both forms of Nexus.

One inner step of Algorithm 1 (line 8) moves the inner point by
``gamma * g / ||g||_2``. This module computes that step for one micro-batch
gradient, in at least float32, and the per-step statistics that
:func:`nexus_optax.nexus_metrics` reports.
"""

from collections.abc import Callable
from typing import Any, Literal, NamedTuple, TypeVar, get_args

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

# How the micro-batch gradient is normalized: one L2 norm over the pytree, or one per leaf.
Normalize = Literal["global", "per_leaf"]
# How the inner point reaches a parameter dtype narrower than float32.
InnerRounding = Literal["nearest", "stochastic"]
NORMALIZE_MODES = get_args(Normalize)
INNER_ROUNDINGS = get_args(InnerRounding)
_T = TypeVar("_T")


class InnerStep(NamedTuple):
  """One normalized inner step.

  Attributes:
    step: ``gamma * u``, where ``u`` is the unit gradient, in each leaf's
      accumulation dtype (see :func:`accumulation_dtype`); zeros when the step
      was skipped.
    grad_norm: global L2 norm of the raw micro-batch gradient, float32.
    unit_sq_norm: ``||u||^2``: 1 for a nonzero gradient under ``"global"``, the
      number of nonzero leaves under ``"per_leaf"``, 0 for a zero or skipped
      gradient. The consensus estimate needs it.
    finite: whether the gradient (and the loss, when given) was finite.
  """

  step: chex.ArrayTree
  grad_norm: jax.Array
  unit_sq_norm: jax.Array
  finite: jax.Array


def accumulation_dtype(dtype: jax.typing.DTypeLike) -> np.dtype[Any]:
  """The dtype in which displacements accumulate: at least float32."""
  return jnp.promote_types(dtype, jnp.float32)


def displacement_dtype(dtype: jax.typing.DTypeLike) -> np.dtype[Any]:
  """A leaf's dtype in the displacement: floats accumulate (at least float32), the rest
  (frozen integer leaves) keep theirs."""
  return accumulation_dtype(dtype) if jnp.issubdtype(dtype, jnp.floating) else jnp.dtype(dtype)


def to_accumulation_dtype(tree: chex.ArrayTree) -> chex.ArrayTree:
  return jax.tree.map(lambda x: jnp.asarray(x).astype(accumulation_dtype(x.dtype)), tree)


def check_normalize(normalize: Normalize) -> None:
  if normalize not in NORMALIZE_MODES:
    raise ValueError(
      f"normalize={normalize!r} is not a normalization mode; use 'global' "
      "(the paper: one L2 norm over the whole pytree) or 'per_leaf'."
    )


def check_inner_rounding(inner_rounding: InnerRounding) -> None:
  if inner_rounding not in INNER_ROUNDINGS:
    raise ValueError(
      f"inner_rounding={inner_rounding!r} is not a rounding mode; use 'nearest' (the "
      "default) or 'stochastic' (unbiased rounding of bfloat16/float16 inner points)."
    )


def stochastic_round(x: jax.Array, dtype: jax.typing.DTypeLike, key: jax.Array) -> jax.Array:
  """Rounds ``x`` to ``dtype`` up or down at random, so that ``E[result] == x``.

  Of the two ``dtype`` neighbours of ``x`` it picks the far one with probability
  ``|x - nearest| / |far - nearest|``. A change of ``x`` smaller than the spacing of
  ``dtype`` then survives in expectation instead of being rounded away.

  From float32 to bfloat16 this is done on the bits: 16 random bits added to the float32
  pattern carry into its top half (the bfloat16) with exactly that probability. Integer
  work in one fused loop per leaf, and 16 bits of noise per weight, keep the compiled
  temporaries under a tenth of a float32 parameter copy on jax 0.10 and 0.11, by XLA's
  compiled memory analysis.
  """
  # out_sharding: on an explicit mesh, each device draws only its own shard of the noise.
  sharding = jax.typeof(x).sharding
  if jnp.dtype(dtype) == jnp.bfloat16 and x.dtype == jnp.float32:
    # bfloat16 is the top half of a float32. Adding 16 random bits to the bottom half carries
    # into the top half with probability (bottom half) / 2**16 = |x - trunc(x)| / spacing,
    # the same law as below, exactly. Integer ops only: one fused loop per leaf, no
    # float32 temporaries, 16 bits of noise per weight.
    noise = jax.random.bits(key, x.shape, jnp.uint16, out_sharding=sharding)
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32) + noise.astype(jnp.uint32)
    rounded = jax.lax.bitcast_convert_type((bits >> 16).astype(jnp.uint16), jnp.bfloat16)
    # NaN (whose payload may sit in the dropped half), +-inf, and finite values beyond
    # bfloat16's largest round to nearest, as the general form below does.
    return jnp.where(jnp.abs(x) <= float(jnp.finfo(jnp.bfloat16).max), rounded, x.astype(dtype))
  nearest = x.astype(dtype)
  back = nearest.astype(x.dtype)
  error = x - back  # exact: x and back are adjacent on the wider grid's scale
  toward = jnp.where(error > 0, jnp.inf, -jnp.inf).astype(dtype)
  far = jnp.nextafter(nearest, toward)
  gap = far.astype(x.dtype) - back
  probability = jnp.where(gap != 0, error / jnp.where(gap != 0, gap, 1), 0)
  noise = jax.random.uniform(key, x.shape, out_sharding=sharding)
  return jnp.where(noise < probability, far, nearest)


def check_mask(mask: Any) -> None:
  """Rejects a ``mask=`` that is neither a callable nor a pytree of Python bools."""
  if mask is None or callable(mask):
    return
  for path, leaf in jax.tree_util.tree_leaves_with_path(mask):
    if not isinstance(leaf, (bool, np.bool_)):
      raise ValueError(
        f"mask leaf {jax.tree_util.keystr(path) or '(root)'} is {leaf!r}; mask= takes a "
        "pytree of Python bools (True: the leaf trains), or a callable of params returning one."
      )


def reject_optax_masked(params: chex.ArrayTree, who: str) -> None:
  """``optax.masked`` hands its inner transformation ``MaskedNode`` leaves for frozen ones."""

  def is_masked_node(x: Any) -> bool:
    return isinstance(x, optax.MaskedNode)

  if any(is_masked_node(leaf) for leaf in jax.tree.leaves(params, is_leaf=is_masked_node)):
    raise ValueError(
      f"{who} cannot run inside optax.masked or an optax.multi_transform branch: its loss "
      "needs every parameter, and those wrappers replace the others with MaskedNode. Pass "
      f"the mask to {who} instead, first in the chain: {who}(..., mask=mask)."
    )


def trainable_flags(params: chex.ArrayTree, mask: Any, who: str) -> list[bool]:
  """One bool per leaf of ``params``: whether it takes inner steps.

  Args:
    params: the parameters.
    mask: None (every leaf trains), a pytree of bools with the structure of (or a prefix
      of) ``params``, or a callable of ``params`` returning one, as ``optax.masked`` takes.
    who: the transformation's name, for error messages.

  Raises:
    ValueError: for ``optax.masked``'s ``MaskedNode`` leaves, a mask that does not fit
      ``params``, or a trainable leaf that is not floating point.
  """
  reject_optax_masked(params, who)
  leaves_with_paths = jax.tree_util.tree_leaves_with_path(params)
  if not leaves_with_paths:  # optax.tree_map_params's placeholder, or no parameters
    return []
  if mask is None:
    flags = [True] * len(leaves_with_paths)
  else:
    mask_tree = mask(params) if callable(mask) else mask
    check_mask(mask_tree)
    try:
      broadcast = jax.tree.map(
        lambda flag, subtree: jax.tree.map(lambda _: flag, subtree), mask_tree, params
      )
    except ValueError:
      raise ValueError(
        f"{who}'s mask does not fit the parameters: give it the structure of params, or a "
        f"prefix of it, with a bool per leaf or subtree (params: {jax.tree.structure(params)})."
      ) from None
    flags = [bool(flag) for flag in jax.tree.leaves(broadcast)]
    if not any(flags):
      raise ValueError(f"{who}'s mask freezes every parameter; mark at least one leaf True.")
  for (path, leaf), trains in zip(leaves_with_paths, flags):
    if trains and not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      fix = (
        "mark it False in mask="
        if mask is not None
        else f"freeze it with {who}(..., mask=lambda params: jax.tree.map(lambda p: "
        "jnp.issubdtype(p.dtype, jnp.floating), params))"
      )
      raise ValueError(
        f"{who}: parameter {jax.tree_util.keystr(path) or '(root)'} has dtype "
        f"{jnp.result_type(leaf)}, and only floating-point parameters can take inner steps; "
        f"{fix}."
      )
  return flags


def select(leaves: list[_T], flags: list[bool]) -> list[_T]:
  return [leaf for leaf, trains in zip(leaves, flags) if trains]


def scatter(selected: list[_T], flags: list[bool], fill: Callable[[int], _T]) -> list[_T]:
  """Puts ``selected`` back at the True positions of ``flags``; ``fill(i)`` at the others."""
  remaining = iter(selected)
  return [next(remaining) if trains else fill(i) for i, trains in enumerate(flags)]


def _varying_axes(x: jax.Array) -> frozenset[Any]:
  """The manual axes over which ``x`` varies, as ``shard_map``'s check_vma tracks them."""
  aval = jax.typeof(x)
  manual = getattr(aval, "manual_axis_type", None)
  return manual.varying if manual is not None else frozenset(getattr(aval, "vma", ()))


def mean_over_batch_axis(
  loss: jax.Array | None,
  grads: chex.ArrayTree,
  batch_axis_name: str | tuple[str, ...] | None,
  who: str,
) -> tuple[jax.Array | None, chex.ArrayTree]:
  """The micro-batch loss and gradient averaged over the data-parallel axis (or axes).

  Every replica then normalizes one gradient and takes the same step. Under ``shard_map``
  with ``check_vma=True`` (its default), autodiff has already summed over the axis the
  gradient of a per-replica loss with respect to every replicated leaf; those leaves are
  divided by the axis size instead of reduced again. Without that tracking (``pmap``,
  ``check_vma=False``), or with a loss that is already the same on every replica, every
  leaf is averaged with ``lax.pmean``.

  Raises:
    ValueError: if the loss still differs between replicas afterwards, which
      ``check_vma`` reveals: ``batch_axis_name`` is missing or names the wrong axis.
  """
  if batch_axis_name is not None:
    names = set(batch_axis_name) if isinstance(batch_axis_name, tuple) else {batch_axis_name}
    if loss is None or not names <= _varying_axes(loss):
      loss, grads = jax.lax.pmean((loss, grads), axis_name=batch_axis_name)
    else:
      replicas = jax.lax.axis_size(batch_axis_name)

      def mean(g: jax.Array) -> jax.Array:
        if names <= _varying_axes(g):
          averaged: jax.Array = jax.lax.pmean(g, axis_name=batch_axis_name)
          return averaged
        return g / replicas

      loss, grads = jax.lax.pmean(loss, axis_name=batch_axis_name), jax.tree.map(mean, grads)
  if loss is not None and _varying_axes(loss):
    axes = sorted(map(str, _varying_axes(loss)))
    raise ValueError(
      f"{who}: the micro-batch loss differs between replicas of the shard_map axes {axes}; "
      f"pass batch_axis_name={axes[0]!r} (the axis that splits each micro-batch's rows) "
      "so that every replica takes the same inner step."
    )
  return loss, grads


def check_inner_lr(inner_lr: Any) -> None:
  """Rejects a non-positive constant inner_lr; schedules and traced values pass."""
  if callable(inner_lr) or isinstance(inner_lr, jax.core.Tracer):
    return
  try:
    value = float(inner_lr)
  except (TypeError, ValueError) as error:
    raise ValueError(
      f"inner_lr={inner_lr!r} is neither a number nor a schedule; pass a "
      "positive float such as 0.01 or an optax schedule of the outer step count."
    ) from error
  if not value > 0.0:
    raise ValueError(f"inner_lr must be > 0 (got {inner_lr!r}); the paper's default is 0.01.")


def inner_lr_at(inner_lr: float | optax.Schedule, count: chex.Numeric) -> jax.Array:
  value = inner_lr(count) if callable(inner_lr) else inner_lr
  return jnp.asarray(value, dtype=float)  # float64 under jax_enable_x64


def _safe_inverse(norm: jax.Array) -> jax.Array:
  # A zero gradient must give a zero step: 0 * (1 / tiny) = 0, never 0 / 0.
  return 1.0 / jnp.maximum(norm, jnp.finfo(norm.dtype).tiny)


def normalized_step(
  grads: chex.ArrayTree,
  inner_lr: chex.Numeric,
  *,
  normalize: Normalize,
  skip_nonfinite: bool,
  loss: chex.Numeric | None = None,
) -> InnerStep:
  """Returns ``gamma * g / ||g||`` for one micro-batch gradient.

  Args:
    grads: the micro-batch gradient, any pytree of float arrays.
    inner_lr: gamma, a scalar.
    normalize: ``"global"`` divides by one L2 norm over the whole pytree (the
      paper); ``"per_leaf"`` divides each leaf by its own L2 norm.
    skip_nonfinite: if True, a gradient (or loss) with a NaN or Inf gives a zero
      step and ``finite=False``. A gradient whose squared norm overflows float32
      counts as non-finite.
    loss: the micro-batch loss, checked for finiteness when given.

  Returns:
    An :class:`InnerStep`.
  """
  grads = to_accumulation_dtype(grads)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(grad_norm)
  if loss is not None:
    finite = finite & jnp.isfinite(loss)

  if normalize == "global":
    inverse_norm = _safe_inverse(grad_norm)
    unit = jax.tree.map(lambda g: g * inverse_norm.astype(g.dtype), grads)
  else:
    # A sum over all axes keeps a sharded leaf sharded; a ravel could reshard it.
    unit = jax.tree.map(lambda g: g * _safe_inverse(jnp.sqrt(jnp.sum(jnp.square(g)))), grads)
  unit_sq_norm = optax.tree.norm(unit, squared=True).astype(jnp.float32)

  if skip_nonfinite:
    unit = optax.tree.where(finite, unit, optax.tree.zeros_like(unit))
    unit_sq_norm = jnp.where(finite, unit_sq_norm, 0.0)

  step = jax.tree.map(lambda u: jnp.asarray(inner_lr, u.dtype) * u, unit)
  return InnerStep(
    step=step,
    grad_norm=grad_norm.astype(jnp.float32),
    unit_sq_norm=unit_sq_norm,
    finite=finite,
  )
