"""The theory side of the second-order check, built independently of the library.

``Theory`` holds the unit-gradient maps u_i(theta) = grad L_i / ||grad L_i|| of a problem's
K sources in float64 (enable ``jax.enable_x64``): J_i v is a ``jax.jvp`` of u_i along v,
J_i^T v a ``jax.vjp``. Only ``pseudo_gradient`` runs ``nexus_optax.nexus``: the g_hat
that the theory predicts. ``tests/test_second_order.py`` uses the same pieces, so the
doc's table and the tests measure the same thing.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import nexus_optax as nx


class SoftmaxSources:
  """K sources of softmax regression (n examples of d features, c classes each) and
  initial parameters, drawn from ``numpy.random.default_rng(seed)``; the loss of source i
  is its mean cross-entropy. The same draws as ``SoftmaxRegression`` of tests/conftest.py,
  which ``tests/test_second_order.py`` checks."""

  def __init__(self, num_sources=3, n=16, d=5, c=4, seed=0):
    rng = np.random.default_rng(seed)
    self.xs, self.ys = [], []
    for _ in range(num_sources):
      shift = rng.normal(size=d) * 0.5
      self.xs.append(rng.normal(size=(n, d)) + shift)
      self.ys.append(np.eye(c)[rng.integers(0, c, size=n)])
    self.params = {"w": rng.normal(size=(d, c)) * 0.3, "b": rng.normal(size=c) * 0.1}

  @staticmethod
  def loss(params, batch):
    logits = batch["x"] @ params["w"] + params["b"]
    return -jnp.mean(jnp.sum(batch["y"] * jax.nn.log_softmax(logits), axis=-1))

  def microbatches(self, sequence, dtype=np.float64):
    return {
      "x": np.stack([self.xs[s] for s in sequence]).astype(dtype),
      "y": np.stack([self.ys[s] for s in sequence]).astype(dtype),
    }


class Theory:
  """u_i and J_i u_j at theta for the sources of ``problem`` (``xs``, ``ys``, ``params``
  and a static ``loss(params, batch)``), in float64."""

  def __init__(self, problem):
    self.problem = problem
    flat, self.unravel = ravel_pytree(jax.tree.map(jnp.asarray, problem.params))
    self.theta = flat
    self.k = len(problem.xs)

  def loss(self, i, flat):
    batch = {"x": jnp.asarray(self.problem.xs[i]), "y": jnp.asarray(self.problem.ys[i])}
    return self.problem.loss(self.unravel(flat), batch)

  def unit(self, i, flat=None):
    g = jax.grad(lambda f: self.loss(i, f))(self.theta if flat is None else flat)
    return g / jnp.linalg.norm(g)

  def jvp(self, i, v):
    """J_i v = d/de u_i(theta + e v) at e = 0."""
    return jax.jit(lambda t, v: jax.jvp(lambda f: self.unit(i, f), (t,), (v,))[1])(self.theta, v)

  def vjp(self, i, v):
    """J_i^T v."""
    _, pullback = jax.vjp(lambda f: self.unit(i, f), self.theta)
    return pullback(v)[0]

  def cosine_sum(self, flat):
    units = [self.unit(i, flat) for i in range(self.k)]
    return sum(units[i] @ units[j] for i in range(self.k) for j in range(self.k) if i != j)


@functools.partial(jax.jit, static_argnums=0)
def pseudo_gradient(loss, params, microbatches, gamma):
  """``nexus(gamma)``'s (g_hat, state) for one outer step over ``microbatches``."""
  tx = nx.nexus(gamma)
  return tx.update(None, tx.init(params), params, loss_fn=loss, microbatches=microbatches)


def g_hat(problem, sequence, gamma):
  """g_hat, flattened, of the inner steps over the sources in ``sequence``."""
  params = jax.tree.map(jnp.asarray, problem.params)
  update, _ = pseudo_gradient(problem.loss, params, problem.microbatches(sequence), gamma)
  return ravel_pytree(update)[0]


def coefficient_errors(theory, sequences, target, gammas):
  """For each gamma, ||c(gamma) - target|| / ||target|| with
  c(gamma) = (E[g_hat] - gamma E[sum_m u_{s_m}]) / gamma^2, the average over ``sequences``."""
  first = sum(theory.unit(i) for i in range(theory.k)) * len(sequences[0]) / theory.k
  errors = []
  for gamma in gammas:
    mean = sum(g_hat(theory.problem, s, gamma) for s in sequences) / len(sequences)
    coefficient = (mean - gamma * first) / gamma**2
    errors.append(float(jnp.linalg.norm(coefficient - target) / jnp.linalg.norm(target)))
  return errors
