"""Diagnostics: how much the gradients of different data sources agree.

The paper's Table 4 reports the cosine similarity between the gradients of
different training sources,

  C_ij = <g_i, g_j> / (||g_i|| ||g_j||),   g_i = grad L_i(theta),

which Nexus is meant to raise (Sec. 3.1: it upper-bounds the distance between
the sources' minimizers), and the first-order part of Nexus's pseudo-gradient,
whose difference from the real one is the second-order term that the paper credits
with the raising. That term is a Hessian coupling, equal to the cosine's gradient
only in special cases (:ref:`where-the-papers-eq-9-and-eq-12-differ`), so
whether a run raises the cosine is measured here, not assumed.
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from nexus_optax import _inner_step
from nexus_optax._inner_step import Normalize


def _per_source_grads(
  loss_fn: Callable[..., Any], params: optax.Params, batches_by_source: Any, has_aux: bool
) -> list[Any]:
  grad_fn = jax.grad(loss_fn, has_aux=has_aux)
  if has_aux:
    grad_fn = lambda p, b, _grad_fn=grad_fn: _grad_fn(p, b)[0]
  if isinstance(batches_by_source, (list, tuple)):
    if not batches_by_source:
      raise ValueError("batches_by_source is empty; pass one batch per data source.")
    return [_inner_step.to_accumulation_dtype(grad_fn(params, b)) for b in batches_by_source]
  leaves = jax.tree.leaves(batches_by_source)
  sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in leaves}
  (num_sources,) = sizes if len(sizes) == 1 else (None,)
  if not leaves or num_sources is None:
    raise ValueError(
      "batches_by_source must be a list of per-source batches, or a pytree whose "
      f"leaves share one leading source axis (got leading sizes {sorted(map(str, sizes))})."
    )
  stacked = jax.lax.map(
    lambda b: _inner_step.to_accumulation_dtype(grad_fn(params, b)), batches_by_source
  )
  return [jax.tree.map(lambda g, i=i: g[i], stacked) for i in range(num_sources)]


def gradient_cosine_matrix(
  loss_fn: Callable[..., Any],
  params: optax.Params,
  batches_by_source: Sequence[Any] | Any,
  *,
  has_aux: bool = False,
) -> jax.Array:
  """The S x S cosine similarities of the per-source gradients at ``params``.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar`` (or ``(scalar, aux)`` with
      ``has_aux=True``).
    params: where the gradients are taken.
    batches_by_source: either a list of S batches, one per source (their shapes
      may differ), or a pytree whose leaves share a leading axis of size S.
    has_aux: whether ``loss_fn`` returns ``(loss, aux)``.

  Returns:
    A float32 ``[S, S]`` symmetric matrix; the diagonal is 1 for a nonzero
    gradient, and any entry involving a zero gradient is 0.

  References:
    Chen et al., `Same Pretraining Loss, Better Downstream Generalization via Common
    Minima <https://arxiv.org/abs/2604.09258>`_, 2026 (arXiv:2604.09258), Table 4.

  Example:
    >>> import jax.numpy as jnp, nexus_optax as nx
    >>> loss_fn = lambda w, target: jnp.sum((w - target) ** 2)
    >>> targets = jnp.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    >>> nx.diagnostics.gradient_cosine_matrix(loss_fn, jnp.zeros(2), targets)
    Array([[1., 0., 1.],
           [0., 1., 0.],
           [1., 0., 1.]], dtype=float32)
  """
  grads = _per_source_grads(loss_fn, params, batches_by_source, has_aux)
  num_sources = len(grads)
  products: dict[tuple[int, int], jax.Array] = {}
  for i in range(num_sources):
    for j in range(i, num_sources):
      products[i, j] = products[j, i] = optax.tree.vdot(grads[i], grads[j]).astype(jnp.float32)
  sources = range(num_sources)
  gram = jnp.stack([jnp.stack([products[i, j] for j in sources]) for i in sources])
  norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
  denominator = norms[:, None] * norms[None, :]
  return jnp.where(denominator > 0, gram / jnp.where(denominator > 0, denominator, 1.0), 0.0)


def first_order_pseudo_gradient(
  loss_fn: Callable[..., Any],
  params: optax.Params,
  microbatches: Any,
  inner_lr: float,
  *,
  normalize: Normalize = "global",
) -> Any:
  r"""Nexus's pseudo-gradient with every unit gradient taken at the start point.

  .. math::
    F = \gamma \sum_{m=1}^{K} \frac{\nabla L_{s_m}(\theta_{t,0})}
        {\|\nabla L_{s_m}(\theta_{t,0})\|_2}

  This is :func:`nexus_optax.inner_loop`'s displacement without the inner steps'
  feedback: ``inner_loop(...).displacement - F`` is the Hessian-coupling term
  ``-gamma^2 sum_m J_{s_m} sum_{l<m} u_{s_l} + O(gamma^3)`` (:ref:`second-order-expansion`),
  the part that numerics such as a bfloat16 forward pass can erase (:doc:`/guides/bfloat16`).

  Args:
    loss_fn: ``loss_fn(params, microbatch) -> scalar``.
    params: theta_{t,0}.
    microbatches: a pytree whose leaves stack K micro-batches along axis 0.
    inner_lr: gamma.
    normalize: ``"global"`` or ``"per_leaf"``, as in :func:`nexus_optax.nexus`.

  Returns:
    F with the structure of ``params``, each leaf in at least float32.

  References:
    Chen et al., `Same Pretraining Loss, Better Downstream Generalization via Common
    Minima <https://arxiv.org/abs/2604.09258>`_, 2026 (arXiv:2604.09258), Sec. 3.2;
    :ref:`second-order-expansion`.

  Example:
    >>> import jax.numpy as jnp, nexus_optax as nx
    >>> loss_fn = lambda w, target: jnp.sum((w - target) ** 2)
    >>> targets = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> nx.diagnostics.first_order_pseudo_gradient(loss_fn, jnp.zeros(2), targets, 0.5)
    Array([-0.5, -0.5], dtype=float32)
    >>> displacement = nx.inner_loop(loss_fn, jnp.zeros(2), targets, 0.5).displacement
    >>> [round(x, 3) for x in displacement.tolist()]  # the second step saw the first
    [-0.276, -0.447]
  """
  _inner_step.check_normalize(normalize)

  def add_unit_step(total: Any, microbatch: Any) -> tuple[Any, None]:
    grads = jax.grad(loss_fn)(params, microbatch)
    step = _inner_step.normalized_step(
      grads, inner_lr, normalize=normalize, skip_nonfinite=False
    ).step
    return jax.tree.map(jnp.add, total, step), None

  zeros = jax.tree.map(
    lambda p: jnp.zeros(jnp.shape(p), _inner_step.accumulation_dtype(p.dtype)), params
  )
  return jax.lax.scan(add_unit_step, zeros, microbatches)[0]
