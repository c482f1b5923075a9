"""Nexus (scan form): K normalized-SGD inner steps, displacement as gradient.

Reference: Chen et al., "Same Pretraining Loss, Better Downstream Generalization via
Common Minima", https://arxiv.org/abs/2604.09258, Algorithm 1 and Sec. 3.2. The math
below is derived on the Math page of the documentation (:doc:`/math`).

For outer step t, starting at theta_{t,0} = theta_{t-1} and for m = 1..K:

  g_m         = grad L_{s_m}(theta_{t,m-1})
  theta_{t,m} = theta_{t,m-1} - gamma * g_m / ||g_m||_2
  g_hat_t     = theta_{t,0} - theta_{t,K}  =  gamma * sum_m g_m / ||g_m||_2

and g_hat_t goes to the outer optimizer as if it were a gradient.

To second order (:ref:`second-order-expansion`), with
u_i = g_i / ||g_i|| and J_i = (I - u_i u_i^T) H_i / ||g_i|| at theta_{t,0}:

  g_hat = gamma * sum_m u_{s_m} - gamma^2 * sum_m J_{s_m} sum_{l<m} u_{s_l} + O(gamma^3),

whose average over the K! orders of K distinct micro-batches is
gamma * sum_i u_i - (gamma^2 / 2) * sum_{i != j} J_i u_j. This Hessian-coupling
term is what the paper (Eq. 9, 12) identifies with the gradient of the summed
cross-source cosine similarity; it equals that gradient only where P_i and H_i
commute (:ref:`where-the-papers-eq-9-and-eq-12-differ`).
"""

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from nexus_optax import _inner_step
from nexus_optax._inner_step import InnerRounding, Normalize
from nexus_optax._metrics import InnerStepSums, NexusMetrics, summarize_outer_step


class InnerLoopResult(NamedTuple):
  """What :func:`inner_loop` returns.

  Attributes:
    displacement: ``theta_{t,0} - theta_{t,K}`` with the structure of
      ``params`` and each leaf in at least float32.
    losses: ``[K]`` micro-batch losses at the inner points.
    grad_norms: ``[K]`` raw micro-batch gradient norms.
    unit_sq_norms: ``[K]`` squared norms of the unit steps (0 when skipped).
    finite: ``[K]`` booleans, False where a step was skipped.
    aux: the stacked ``[K, ...]`` auxiliary outputs of ``loss_fn`` when
      ``has_aux=True``, else None.
  """

  displacement: Any
  losses: jax.Array
  grad_norms: jax.Array
  unit_sq_norms: jax.Array
  finite: jax.Array
  aux: Any


def _num_microbatches(microbatches: chex.ArrayTree) -> int:
  leaves = jax.tree.leaves(microbatches)
  if not leaves:
    raise ValueError(
      "microbatches is empty; pass a pytree of arrays whose leading axis "
      "indexes the K micro-batches."
    )
  if any(jnp.ndim(leaf) == 0 for leaf in leaves):
    raise ValueError(
      "every leaf of microbatches needs a leading micro-batch axis, but one is "
      "a scalar; stack the K micro-batches along axis 0."
    )
  sizes = {int(jnp.shape(leaf)[0]) for leaf in leaves}
  if len(sizes) > 1:
    raise ValueError(
      f"micro-batch leaves have different leading sizes {sorted(sizes)}; "
      "stack every leaf to the same K micro-batches along axis 0."
    )
  (size,) = sizes
  if size < 1:
    raise ValueError("microbatches has K = 0 micro-batches; pass at least one.")
  return size


def _zero_displacement(params: chex.ArrayTree) -> chex.ArrayTree:
  """Abstract zeros of the displacement's tree and dtypes (float leaves in >= float32)."""

  return jax.tree.map(
    lambda leaf: jax.ShapeDtypeStruct(
      jnp.shape(leaf), _inner_step.displacement_dtype(jnp.result_type(leaf))
    ),
    params,
  )


def _check_loss_takes_displacement(
  loss_takes_displacement: bool, inner_rounding: InnerRounding
) -> None:
  if loss_takes_displacement and inner_rounding == "stochastic":
    raise ValueError(
      "inner_rounding='stochastic' rounds an inner point that nexus forms itself; with "
      "loss_takes_displacement=True the loss forms it, so use inner_rounding='nearest'."
    )


def _check_loss_signature(
  loss_fn: Callable[..., Any],
  params: chex.ArrayTree,
  microbatches: chex.ArrayTree,
  has_aux: bool,
  loss_takes_displacement: bool = False,
) -> None:
  first = jax.tree.map(lambda x: x[0], microbatches)
  if loss_takes_displacement:
    try:
      inspect.signature(loss_fn).bind(params, first, params)
    except TypeError:
      raise ValueError(
        "with loss_takes_displacement=True, loss_fn is called as loss_fn(params, microbatch, "
        "displacement) and must return the loss at params - displacement; give it that "
        "third argument."
      ) from None
    except ValueError:  # no signature to read (a builtin); eval_shape below still checks
      pass
    out = jax.eval_shape(loss_fn, params, first, _zero_displacement(params))
  else:
    out = jax.eval_shape(loss_fn, params, first)
  if has_aux:
    if not (isinstance(out, tuple) and len(out) == 2):
      raise ValueError(
        "with has_aux=True, loss_fn must return (loss, aux); it returned "
        f"{type(out).__name__}. Pass has_aux=False for a loss_fn that returns a scalar."
      )
    out = out[0]
  elif isinstance(out, tuple):
    raise ValueError(
      "loss_fn returned a tuple; if it returns (loss, aux), build Nexus with has_aux=True."
    )
  if getattr(out, "shape", None) != ():
    raise ValueError(
      f"loss_fn must return a scalar loss, got shape {getattr(out, 'shape', None)}; "
      "reduce it, e.g. with .mean() over the micro-batch."
    )


def inner_loop(
  loss_fn: Callable[..., Any],
  params: optax.Params,
  microbatches: Any,
  inner_lr: chex.Numeric,
  *,
  normalize: Normalize = "global",
  has_aux: bool = False,
  skip_nonfinite: bool = True,
  inner_rounding: InnerRounding = "nearest",
  rounding_key: jax.Array | None = None,
  batch_axis_name: str | None = None,
  mask: Any = None,
  loss_takes_displacement: bool = False,
) -> InnerLoopResult:
  r"""Runs Algorithm 1's inner loop with ``jax.lax.scan`` over micro-batches.

  The scan carries the displacement ``delta_m = theta_{t,0} - theta_{t,m}`` in
  at least float32 rather than a second copy of the parameters; the inner point
  is rebuilt as ``params - delta_m`` in the parameters' own dtype. The carry
  costs what a gradient accumulator costs, and the result has no cancellation
  error even for bfloat16 parameters.

  That rebuilt inner point is one more parameter-sized tensor, live through each
  micro-batch's forward and backward pass. A loss that can form it piecewise, each
  weight where it is consumed (a layer's inside the model's layer scan), avoids it:
  with ``loss_takes_displacement=True`` the loss receives ``delta_m`` and returns
  ``L(theta_{t,0} - delta_m)``, and the gradient is taken with respect to
  ``theta_{t,0}`` at fixed ``delta_m``, which by the chain rule is the gradient at
  the inner point:

  .. math::
    \nabla_\theta \, L(\theta - \delta) \big|_{\theta = \theta_{t,0}}
    = (\nabla L)(\theta_{t,0} - \delta).

  Args:
    loss_fn: ``loss_fn(params, microbatch) -> loss`` (or ``(loss, aux)`` with
      ``has_aux=True``); the loss must be a scalar.
    params: the outer parameters theta_{t,0}.
    microbatches: a pytree whose leaves all have a leading axis of size K; the
      m-th slice is the m-th micro-batch.
    inner_lr: gamma, a positive scalar.
    normalize: ``"global"`` (the paper) or ``"per_leaf"``.
    has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
    skip_nonfinite: skip (and flag) steps whose gradient or loss is not finite.
    inner_rounding: how the inner point reaches a parameter dtype narrower than
      float32. ``"nearest"`` rounds to nearest, which erases every inner step smaller
      than half a bfloat16 spacing; ``"stochastic"`` rounds up or down at random, so
      that the inner point is exact in expectation (:doc:`/guides/bfloat16`
      measures what either keeps). Float32 parameters are never rounded.
    rounding_key: a PRNG key, required with ``inner_rounding="stochastic"``. Prefer
      ``jax.random.key(seed, impl="rbg")``: XLA's bit generator draws the per-weight
      random numbers in place, where the default threefry key needs temporaries
      larger than a float32 copy of the parameters.
    batch_axis_name: under ``jax.shard_map`` or ``pmap`` with each micro-batch's rows
      split over this mapped axis, each inner gradient and loss is averaged over it
      (``lax.pmean``) before the norm, so that every replica takes the same step
      (:ref:`distributed-and-masked-inner-steps`). The aux stays per replica.
    mask: which parameters train: a pytree of bools with the structure of (or a
      prefix of) ``params``, or a callable of ``params`` returning one, as
      ``optax.masked`` takes. Masked-out leaves take no inner step, stay out of the
      norm, are not differentiated, and get a zero displacement.
    loss_takes_displacement: call the loss as ``loss_fn(params, microbatch,
      displacement)`` with the outer ``params`` and the current displacement (the tree
      of ``params``, floating leaves in at least float32, zeros for masked-out leaves);
      it must return the loss at the inner point, each leaf ``p`` taken as
      ``(p - d).astype(p.dtype)`` for this function's result to equal the default's.
      The pretraining stack's Llama does so inside its layer scan
      (:doc:`/guides/inner_point`). Not with ``inner_rounding="stochastic"``.

  Returns:
    An :class:`InnerLoopResult`.

  References:
    Chen et al., `Same Pretraining Loss, Better Downstream Generalization via Common
    Minima <https://arxiv.org/abs/2604.09258>`_, 2026 (arXiv:2604.09258).

  Raises:
    ValueError: for a trainable parameter that is not floating point (mask it), a mask
      that does not fit ``params``, and the malformed inputs named in the messages.

  Example:
    >>> import jax.numpy as jnp, nexus_optax as nx
    >>> loss_fn = lambda p, x: jnp.sum((p - x) ** 2)
    >>> result = nx.inner_loop(loss_fn, jnp.zeros(2),
    ...                        jnp.array([[3.0, 4.0], [3.0, 4.0]]), 0.5)
    >>> result.displacement  # two unit steps of 0.5 towards (3, 4)
    Array([-0.6, -0.8], dtype=float32)
  """
  _inner_step.check_normalize(normalize)
  _inner_step.check_inner_rounding(inner_rounding)
  _check_loss_takes_displacement(loss_takes_displacement, inner_rounding)
  trains = _inner_step.trainable_flags(params, mask, "inner_loop")
  num_steps = _num_microbatches(microbatches)
  _check_loss_signature(loss_fn, params, microbatches, has_aux, loss_takes_displacement)
  stochastic = inner_rounding == "stochastic"
  if stochastic and rounding_key is None:
    raise ValueError(
      "inner_rounding='stochastic' needs rounding_key=jax.random.key(seed), a fresh "
      "key per outer step (nexus() folds in the step count for you)."
    )
  leaves, treedef = jax.tree.flatten(params)
  leaves = [jnp.asarray(leaf) for leaf in leaves]
  trained = _inner_step.select(leaves, trains)

  def loss_of_trained(trained_leaves: list[jax.Array], microbatch: Any, *displacement: Any) -> Any:
    full = _inner_step.scatter(trained_leaves, trains, lambda i: leaves[i])
    return loss_fn(jax.tree.unflatten(treedef, full), microbatch, *displacement)

  grad_fn = jax.value_and_grad(loss_of_trained, has_aux=has_aux)

  def frozen_zeros(i: int) -> jax.Array:
    return jnp.zeros_like(leaves[i], _inner_step.displacement_dtype(leaves[i].dtype))

  def full_displacement(displacement: list[jax.Array]) -> chex.ArrayTree:
    return jax.tree.unflatten(treedef, _inner_step.scatter(displacement, trains, frozen_zeros))

  def inner_point(displacement: list[jax.Array], step_index: jax.Array) -> list[jax.Array]:
    if not stochastic or rounding_key is None:  # a stochastic one without a key raised above
      return [(p - d).astype(p.dtype) for p, d in zip(trained, displacement)]
    step_key = jax.random.fold_in(rounding_key, step_index)
    leaf_keys = jax.random.split(step_key, max(len(trained), 1))

    def rounded(p: jax.Array, d: jax.Array, key: jax.Array) -> jax.Array:
      exact = p.astype(d.dtype) - d
      if jnp.dtype(p.dtype) == jnp.dtype(d.dtype):
        return exact
      return _inner_step.stochastic_round(exact, p.dtype, key)

    return [rounded(p, d, key) for p, d, key in zip(trained, displacement, leaf_keys)]

  def one_inner_step(
    displacement: list[jax.Array], indexed_microbatch: tuple[jax.Array, Any]
  ) -> tuple[list[jax.Array], tuple[Any, ...]]:
    step_index, microbatch = indexed_microbatch
    if loss_takes_displacement:
      value, grads = grad_fn(trained, microbatch, full_displacement(displacement))
    else:
      value, grads = grad_fn(inner_point(displacement, step_index), microbatch)
    loss, aux = value if has_aux else (value, None)
    loss, grads = _inner_step.mean_over_batch_axis(loss, grads, batch_axis_name, "nexus")
    inner = _inner_step.normalized_step(
      grads,
      inner_lr,
      normalize=normalize,
      skip_nonfinite=skip_nonfinite,
      loss=loss,
    )
    displacement = jax.tree.map(jnp.add, displacement, inner.step)
    per_step = (
      jnp.asarray(loss, jnp.float32),
      inner.grad_norm,
      inner.unit_sq_norm,
      inner.finite,
      aux,
    )
    return displacement, per_step

  # zeros_like, not zeros(shape): the carry takes each parameter's sharding, which an
  # explicit mesh requires of a scan carry.
  initial = [jnp.zeros_like(p, _inner_step.accumulation_dtype(p.dtype)) for p in trained]
  displacement, (losses, grad_norms, unit_sq_norms, finite, aux) = jax.lax.scan(
    one_inner_step, initial, (jnp.arange(num_steps), microbatches)
  )

  return InnerLoopResult(
    full_displacement(displacement), losses, grad_norms, unit_sq_norms, finite, aux
  )


class NexusState(NamedTuple):
  """State of :func:`nexus`.

  Attributes:
    count: outer steps taken, int32; the argument of an ``inner_lr`` schedule.
    metrics: :class:`NexusMetrics` of the last outer step.
  """

  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as optax's states do
  metrics: NexusMetrics


def nexus(
  inner_lr: float | optax.Schedule = 0.01,
  *,
  normalize: Normalize = "global",
  has_aux: bool = False,
  skip_nonfinite: bool = True,
  inner_rounding: InnerRounding = "nearest",
  rounding_seed: int = 0,
  batch_axis_name: str | None = None,
  mask: Any = None,
  loss_takes_displacement: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Nexus pseudo-gradient: K normalized inner steps, then the displacement.

  Each ``update`` runs Algorithm 1's inner loop over the leading axis of
  ``microbatches`` (see :func:`inner_loop`) starting at ``params`` and returns

  .. math::
    \hat g = \theta_{t,0} - \theta_{t,K} = \gamma \sum_{m=1}^{K}
    \frac{\nabla L_{s_m}(\theta_{t,m-1})}{\|\nabla L_{s_m}(\theta_{t,m-1})\|_2}

  with the structure and dtypes of ``params``, for the next member of a chain
  to treat as a gradient. The incoming ``updates`` are ignored (Nexus computes
  its own gradients), so ``nexus`` must be the first member of a chain. Pass
  ``loss_fn`` and ``microbatches`` as keyword arguments to ``update``; close over
  ``loss_fn`` inside the jitted step. Paper defaults (Table 6): gamma = 0.01 with
  ``optax.clip_by_global_norm(1.0)`` and
  ``optax.adamw(lr, b1=0.9, b2=0.95, eps=1e-10, weight_decay=0.2)``.

  For loops that feed one micro-batch per call, use
  :func:`nexus_optax.nexus_multisteps`; ``optax.MultiSteps(nexus(...))`` would
  average the ignored incoming updates and means nothing.

  Args:
    inner_lr: gamma, a positive float or an optax schedule of the outer step
      count. Works under ``optax.inject_hyperparams``.
    normalize: ``"global"`` (the paper: one L2 norm over the whole pytree) or
      ``"per_leaf"`` (each tensor normalized on its own; not in the paper).
    has_aux: whether ``loss_fn`` returns ``(loss, aux)``; the aux is discarded
      (call :func:`inner_loop` directly to keep it).
    skip_nonfinite: a micro-batch whose gradient or loss is NaN or Inf gives a
      zero inner step and is counted in ``nexus_metrics(state)["skipped_steps"]``.
    inner_rounding: ``"nearest"`` or ``"stochastic"``: how the inner point is
      rounded to bfloat16 or float16 parameters (see :func:`inner_loop`). With
      bfloat16 parameters and many of them, nearest rounding loses the inner steps
      and with them the second-order term; stochastic rounding keeps it in
      expectation. No effect on float32 parameters.
    rounding_seed: seed of the stochastic rounding; outer step t uses
      ``fold_in(key(rounding_seed, impl="rbg"), t)``, so a resumed run on the same
      mesh rounds as the original did.
    batch_axis_name: the name of a ``jax.shard_map`` or ``pmap`` axis over which each
      micro-batch's rows are split. Each inner gradient and loss is then averaged over
      it with ``lax.pmean`` before the norm, so every replica takes the same inner
      steps and returns the same g_hat (the norm of a mean is not a mean of norms:
      :ref:`distributed-and-masked-inner-steps`). Parameters must be replicated
      over the axis; ``shard_map``'s ``check_vma`` may be on or off. Leave it None under
      ``jit`` with sharded arrays, where gradients are already global.
    mask: which parameters train, as ``optax.masked`` takes it: a pytree of bools with
      the structure of (or a prefix of) ``params``, or a callable of ``params``
      returning one. Masked-out leaves take no inner step, stay out of the norm and
      get a zero pseudo-gradient; non-float leaves must be masked out. Wrapping
      ``nexus`` in ``optax.masked`` raises, since ``loss_fn`` needs every parameter.
      Mask the outer optimizer too, so that weight decay leaves frozen leaves alone:
      ``optax.chain(nexus(mask=m), optax.masked(optax.adamw(lr), m))``, or, with
      ``optax.multi_transform``, put ``nexus(mask=m)`` before it in the chain and
      give the frozen label ``optax.set_to_zero()``.
    loss_takes_displacement: ``loss_fn`` is then ``loss_fn(params, microbatch,
      displacement)``, called with the outer ``params`` and the displacement
      ``delta = theta_{t,0} - theta_{t,m}`` (the tree of ``params``, floating leaves in
      at least float32, zeros for masked-out leaves), and returns the loss at
      ``params - displacement``, each leaf ``p`` taken as ``(p - d).astype(p.dtype)``.
      Gradients are taken with respect to ``params`` at fixed ``delta``, which is the
      gradient at the inner point, so g_hat is unchanged; what changes is memory: a
      model that forms each layer's inner point inside its layer scan
      (:doc:`/guides/inner_point`) never holds the
      parameter-sized inner point that ``nexus`` otherwise builds. Not with
      ``inner_rounding="stochastic"``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` is
    ``update(updates, state, params, *, loss_fn, microbatches, **extra_args)``.

  References:
    Chen et al., `Same Pretraining Loss, Better Downstream Generalization via Common
    Minima <https://arxiv.org/abs/2604.09258>`_, 2026 (arXiv:2604.09258).

  Example:
    >>> import jax, jax.numpy as jnp, optax, nexus_optax as nx
    >>> def loss_fn(params, batch):
    ...   return jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2)
    >>> params = {"w": jnp.zeros(3)}
    >>> microbatches = {"x": jnp.ones((4, 8, 3)), "y": jnp.ones((4, 8))}  # K = 4
    >>> tx = optax.chain(nx.nexus(inner_lr=0.01), optax.adamw(1e-3))
    >>> state = tx.init(params)
    >>> @jax.jit
    ... def step(params, state, microbatches):
    ...   updates, state = tx.update(None, state, params, loss_fn=loss_fn,
    ...                              microbatches=microbatches)
    ...   return optax.apply_updates(params, updates), state
    >>> params, state = step(params, state, microbatches)
    >>> params["w"].round(4)  # AdamW's first step is lr * sign(g_hat)
    Array([0.001, 0.001, 0.001], dtype=float32)
    >>> round(float(nx.nexus_metrics(state)["consensus"]), 3)  # identical batches
    1.0

    Frozen parameters: mask them in Nexus and in the outer optimizer.

    >>> params = {"w": jnp.zeros(3), "b": jnp.ones(3)}
    >>> trainable = {"w": True, "b": False}
    >>> tx = optax.chain(nx.nexus(0.01, mask=trainable),
    ...                  optax.masked(optax.adamw(1e-3, weight_decay=0.1), trainable))
    >>> updates, _ = tx.update(None, tx.init(params), params, microbatches=jnp.full((2, 3), 2.0),
    ...                        loss_fn=lambda p, x: jnp.sum((p["w"] + p["b"] - x) ** 2))
    >>> updates["w"].round(4), updates["b"]  # b: no inner step, no decay
    (Array([0.001, 0.001, 0.001], dtype=float32), Array([0., 0., 0.], dtype=float32))
  """
  _inner_step.check_inner_lr(inner_lr)
  _inner_step.check_normalize(normalize)
  _inner_step.check_inner_rounding(inner_rounding)
  _check_loss_takes_displacement(loss_takes_displacement, inner_rounding)
  _inner_step.check_mask(mask)

  def init_fn(params: optax.Params) -> NexusState:
    _inner_step.trainable_flags(params, mask, "nexus")
    return NexusState(count=jnp.zeros([], jnp.int32), metrics=NexusMetrics.initial())

  def update_fn(
    updates: optax.Updates,
    state: NexusState,
    params: optax.Params | None = None,
    *,
    loss_fn: Callable[..., Any] | None = None,
    microbatches: chex.ArrayTree | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, NexusState]:
    del updates, extra_args
    if params is None:
      raise ValueError(
        "nexus needs params: call tx.update(None, state, params, loss_fn=..., microbatches=...)."
      )
    if loss_fn is None:
      arguments = "params, microbatch" + (", displacement" if loss_takes_displacement else "")
      raise ValueError(f"nexus needs loss_fn=loss_fn({arguments}) as a keyword argument of update.")
    if microbatches is None:
      raise ValueError(
        "nexus needs microbatches= as a keyword argument of update: a pytree whose "
        "leaves stack the K micro-batches along axis 0."
      )
    inner_lr_now = _inner_step.inner_lr_at(inner_lr, state.count)
    result = inner_loop(
      loss_fn,
      params,
      microbatches,
      inner_lr_now,
      normalize=normalize,
      has_aux=has_aux,
      skip_nonfinite=skip_nonfinite,
      inner_rounding=inner_rounding,
      rounding_key=(
        jax.random.fold_in(jax.random.key(rounding_seed, impl="rbg"), state.count)
        if inner_rounding == "stochastic"
        else None
      ),
      batch_axis_name=batch_axis_name,
      mask=mask,
      loss_takes_displacement=loss_takes_displacement,
    )
    taken = (result.finite if skip_nonfinite else jnp.ones_like(result.finite)).astype(jnp.float32)
    sums = InnerStepSums(
      loss_sum=jnp.sum(jnp.where(taken > 0, result.losses, 0.0)),
      loss_count=jnp.sum(taken),
      grad_norm_sum=jnp.sum(jnp.where(taken > 0, result.grad_norms, 0.0)),
      unit_sq_norm_sum=jnp.sum(result.unit_sq_norms),
      steps_taken=jnp.sum(taken),
      steps_skipped=jnp.sum(1.0 - taken),
    )
    metrics = summarize_outer_step(
      sums,
      pseudo_grad_sq_norm=optax.tree.norm(result.displacement, squared=True),
      inner_lr=inner_lr_now,
      previous=state.metrics,
    )
    pseudo_gradient = jax.tree.map(
      lambda d, p: d.astype(jnp.result_type(p)), result.displacement, params
    )
    return pseudo_gradient, NexusState(count=optax.safe_increment(state.count), metrics=metrics)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
