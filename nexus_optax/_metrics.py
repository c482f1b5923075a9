"""Per-outer-step metrics of Nexus, and :func:`nexus_metrics` to read them.

Free consensus estimate (:ref:`consensus-estimate`). With unit inner steps u_1..u_K,

  ||sum_m u_m||^2 = sum_m ||u_m||^2 + sum_{l != m} u_l . u_m,

and g_hat = gamma * sum_m u_m, so

  consensus = (||g_hat||^2 / gamma^2 - S) / ((n - 1) * S),   S = sum_m ||u_m||^2,

with n the number of steps taken, estimates the mean pairwise cosine similarity
of the micro-batch gradients (for ``normalize="global"``, S = n and this is
(||g_hat||^2 / gamma^2 - K) / (K (K - 1))). The unit gradients are taken at
successive inner points rather than at one point, so the estimate is off by
O(gamma); it needs no buffer beyond g_hat itself.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class NexusMetrics(NamedTuple):
  """Scalars describing the last outer step; all float32 except the count.

  Attributes:
    inner_loss: mean micro-batch loss at the inner points, over the steps taken
      (NaN for ``nexus_multisteps`` when no ``value=`` was passed).
    inner_grad_norm: mean L2 norm of the raw micro-batch gradients taken.
    pseudo_grad_norm: ``||g_hat||_2``.
    consensus: estimated mean pairwise cosine similarity of the micro-batch
      gradients (module docstring); NaN when fewer than two steps were taken.
    skipped_steps: inner steps skipped for a non-finite gradient or loss since
      initialisation (cumulative), int32.
  """

  inner_loss: jax.Array
  inner_grad_norm: jax.Array
  pseudo_grad_norm: jax.Array
  consensus: jax.Array
  skipped_steps: jax.Array

  @classmethod
  def initial(cls) -> "NexusMetrics":
    # One buffer per field, so that a jitted step may donate the state.
    return cls(
      inner_loss=jnp.zeros([], jnp.float32),
      inner_grad_norm=jnp.zeros([], jnp.float32),
      pseudo_grad_norm=jnp.zeros([], jnp.float32),
      consensus=jnp.zeros([], jnp.float32),
      skipped_steps=jnp.zeros([], jnp.int32),
    )


class InnerStepSums(NamedTuple):
  """Sums over the inner steps of one outer step, from which metrics follow.

  Attributes:
    loss_sum: sum of the losses of the steps taken (that reported a loss).
    loss_count: number of losses summed.
    grad_norm_sum: sum of the raw gradient norms of the steps taken.
    unit_sq_norm_sum: sum of ``||u_m||^2`` over the steps taken.
    steps_taken: number of inner steps taken.
    steps_skipped: number of inner steps skipped as non-finite.
  """

  loss_sum: jax.Array
  loss_count: jax.Array
  grad_norm_sum: jax.Array
  unit_sq_norm_sum: jax.Array
  steps_taken: jax.Array
  steps_skipped: jax.Array

  @classmethod
  def zeros(cls) -> "InnerStepSums":
    return cls(*(jnp.zeros([], jnp.float32) for _ in cls._fields))


def summarize_outer_step(
  sums: InnerStepSums,
  *,
  pseudo_grad_sq_norm: jax.Array,
  inner_lr: jax.Array,
  previous: NexusMetrics,
) -> NexusMetrics:
  """Turns the sums gathered over one outer step into :class:`NexusMetrics`."""
  sums = InnerStepSums(*(jnp.asarray(x, jnp.float32) for x in sums))
  pseudo_grad_sq_norm = jnp.asarray(pseudo_grad_sq_norm, jnp.float32)
  inner_lr = jnp.asarray(inner_lr, jnp.float32)
  pairwise = pseudo_grad_sq_norm / jnp.square(inner_lr) - sums.unit_sq_norm_sum
  consensus = pairwise / jnp.maximum(
    (sums.steps_taken - 1.0) * sums.unit_sq_norm_sum, jnp.finfo(jnp.float32).tiny
  )
  return NexusMetrics(
    inner_loss=jnp.where(
      sums.loss_count > 0, sums.loss_sum / jnp.maximum(sums.loss_count, 1.0), jnp.nan
    ),
    inner_grad_norm=sums.grad_norm_sum / jnp.maximum(sums.steps_taken, 1.0),
    pseudo_grad_norm=jnp.sqrt(pseudo_grad_sq_norm),
    consensus=jnp.where(sums.steps_taken >= 2, consensus, jnp.nan),
    skipped_steps=previous.skipped_steps + sums.steps_skipped.astype(jnp.int32),
  )


def nexus_metrics(state: Any) -> dict[str, jax.Array]:
  """Reads the Nexus metrics out of any optimizer state that holds Nexus.

  Works on the state of :func:`nexus_optax.nexus`,
  :func:`nexus_optax.nexus_multisteps`, and any ``optax.chain``,
  ``optax.inject_hyperparams`` or other wrapper whose state contains one of
  them.

  Args:
    state: an optimizer state.

  Returns:
    A dict of scalars: ``inner_loss``, ``inner_grad_norm``,
    ``pseudo_grad_norm``, ``consensus`` and ``skipped_steps`` (see
    :class:`NexusMetrics`), describing the last completed outer step.

  Raises:
    ValueError: if the state holds no Nexus metrics, or more than one.

  References:
    Chen et al., `Same Pretraining Loss, Better Downstream Generalization via Common
    Minima <https://arxiv.org/abs/2604.09258>`_, 2026 (arXiv:2604.09258).

  Example:
    >>> import jax.numpy as jnp, optax, nexus_optax as nx
    >>> tx = optax.chain(nx.nexus(inner_lr=0.1), optax.sgd(1.0))
    >>> params = {"w": jnp.array([1.0, -2.0])}
    >>> loss_fn = lambda p, x: jnp.sum((p["w"] - x) ** 2)
    >>> microbatches = jnp.array([[0.0, 0.0], [3.0, 0.0]])
    >>> state = tx.init(params)
    >>> _, state = tx.update(None, state, params, loss_fn=loss_fn,
    ...                      microbatches=microbatches)
    >>> sorted(nx.nexus_metrics(state))
    ['consensus', 'inner_grad_norm', 'inner_loss', 'pseudo_grad_norm', 'skipped_steps']
    >>> int(nx.nexus_metrics(state)["skipped_steps"])
    0
  """
  found = [
    leaf
    for leaf in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, NexusMetrics))
    if isinstance(leaf, NexusMetrics)
  ]
  if not found:
    raise ValueError(
      "this optimizer state holds no Nexus metrics; pass the state of a "
      "transformation built with nexus_optax.nexus or nexus_optax.nexus_multisteps."
    )
  if len(found) > 1:
    raise ValueError(
      f"this optimizer state holds {len(found)} Nexus states; pass the sub-state "
      "of the one you want to read."
    )
  return found[0]._asdict()
