"""The inner-loop ablations of the paper's Sec. 5, as optax transformations.

Both keep Algorithm 1's shape (K inner steps from theta_{t,0}, the displacement
handed on as the pseudo-gradient) and change only the inner step:

  ``"dot"``       Nexus-Dot (Sec. 5.3): plain SGD, ``theta_m = theta_{m-1} - gamma g_m``;
                  the second-order term then maximizes the gradient dot product.
  ``"momentum"``  heavy-ball momentum on the normalized gradient,
                  ``v_m = beta v_{m-1} + g_m / ||g_m||``, ``theta_m = theta_{m-1} - gamma v_m``,
                  the velocity carried across outer steps as a PyTorch inner optimizer
                  built once (Algorithm 3, line 3) would carry it. Sec. 3.2 says the
                  inner step must be momentum-free for Nexus to seek gradient agreement.

They exist to be measured against :func:`nexus_optax.nexus` in the replication study
(``studies/replication/study.py``); they are not part of the library.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from nexus_optax import NexusMetrics

INNER_STEPS = ("dot", "momentum")


def to_accumulation_dtype(tree):
  """Each leaf in at least float32, the dtype in which ``nexus`` accumulates its
  displacement (float64 stays float64), so the ablations differ from it only in the step."""
  widen = lambda x: jnp.asarray(x).astype(jnp.promote_types(x.dtype, jnp.float32))
  return jax.tree.map(widen, tree)


class AblationState(NamedTuple):
  """State of :func:`nexus_ablation`.

  Attributes:
    velocity: the inner momentum buffer (zeros, and unused, for ``"dot"``), float32.
    metrics: :class:`nexus_optax.NexusMetrics` of the last outer step; ``consensus``
      is NaN, its estimate assumes unit inner steps.
  """

  velocity: Any
  metrics: NexusMetrics


def nexus_ablation(
  inner_lr: float, inner_step: str, momentum: float = 0.9
) -> optax.GradientTransformationExtraArgs:
  """Nexus with an ablated inner step (module docstring); ``update`` as in ``nexus``."""
  if inner_step not in INNER_STEPS:
    raise ValueError(f"inner_step={inner_step!r}; choose one of {', '.join(INNER_STEPS)}.")
  if not inner_lr > 0:
    raise ValueError(f"inner_lr must be > 0, got {inner_lr!r}.")

  def init_fn(params):
    return AblationState(
      velocity=to_accumulation_dtype(optax.tree.zeros_like(params)), metrics=NexusMetrics.initial()
    )

  def update_fn(updates, state, params=None, *, loss_fn=None, microbatches=None, **extra_args):
    del updates, extra_args
    grad_fn = jax.value_and_grad(loss_fn)

    def one_inner_step(carry, microbatch):
      displacement, velocity = carry
      inner_params = jax.tree.map(lambda p, d: (p - d).astype(p.dtype), params, displacement)
      loss, grads = grad_fn(inner_params, microbatch)
      grads = to_accumulation_dtype(grads)
      grad_norm = optax.tree.norm(grads)
      if inner_step == "dot":
        direction = grads
      else:
        inverse_norm = 1.0 / jnp.maximum(grad_norm, jnp.finfo(grad_norm.dtype).tiny)
        velocity = jax.tree.map(lambda v, g: momentum * v + g * inverse_norm, velocity, grads)
        direction = velocity
      displacement = jax.tree.map(lambda d, s: d + inner_lr * s, displacement, direction)
      return (displacement, velocity), (loss.astype(jnp.float32), grad_norm)

    zeros = to_accumulation_dtype(optax.tree.zeros_like(params))
    (displacement, velocity), (losses, grad_norms) = jax.lax.scan(
      one_inner_step, (zeros, state.velocity), microbatches
    )
    metrics = NexusMetrics(
      inner_loss=jnp.mean(losses),
      inner_grad_norm=jnp.mean(grad_norms),
      pseudo_grad_norm=optax.tree.norm(displacement).astype(jnp.float32),
      consensus=jnp.asarray(jnp.nan, jnp.float32),
      skipped_steps=state.metrics.skipped_steps,
    )
    pseudo_gradient = jax.tree.map(lambda d, p: d.astype(p.dtype), displacement, params)
    return pseudo_gradient, AblationState(velocity=velocity, metrics=metrics)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
