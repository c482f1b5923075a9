"""optax's conventions for contributed optimizers, for both forms of Nexus.

Mirrors ``optax/contrib/_common_test.py`` (optax 0.2.8): its four targets, tolerance and
30,000 steps, its extra-argument, recompilation, ``tree.map_params``,
``inject_hyperparams``, dtype, ``lax.cond`` stability and ``optax.MultiSteps`` checks. The
forms under test, at the paper's ``inner_lr`` 0.01 and K = 4:

- ``scan``: ``optax.chain(nexus(0.01), optax.adam(lr))``; one call is one outer step, and
  its loss is the target at every inner point (the K micro-batches carry no data);
- ``multisteps``: ``nexus_multisteps(optax.adam(lr), every_k=4, inner_lr=0.01)``; one call
  is one micro-batch, the target's gradient at the caller's (inner) parameters.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nexus_optax as nx

K = 4
INNER_LR = 0.01  # the paper's gamma
OUTER_LR = 1e-2
FORMS = ("scan", "multisteps")


def _parabola(dtype):
  initial, final = jnp.array([-1.0, 10.0, 1.0], dtype), jnp.array([1.0, -1.0, 1.0], dtype)
  return initial, final, lambda params: jnp.sum((params - final) ** 2)


def _rosenbrock(dtype):
  initial, final = jnp.array([0.0, 0.0], dtype), jnp.array([1.0, 1.0], dtype)
  return initial, final, lambda p: (1.0 - p[0]) ** 2 + 100.0 * (p[1] - p[0] ** 2) ** 2


def _matrix_parabola(dtype):
  initial, final = jnp.zeros((2, 2), dtype), jnp.array([[3.0, -2.0], [1.0, 4.0]], dtype)
  return initial, final, lambda params: jnp.sum((params - final) ** 2)


def _mixed_tensor_target(dtype):
  final = (jnp.array([1.0, -1.0, 2.0], dtype), jnp.array([[1.0, 0.0], [-1.0, 1.0]], dtype))
  initial = (jnp.zeros((3,), dtype), jnp.zeros((2, 2), dtype))

  def objective(params):
    return sum(jnp.sum((p - f) ** 2) for p, f in zip(params, final))

  return initial, final, objective


TARGETS = (_parabola, _rosenbrock, _matrix_parabola, _mixed_tensor_target)


def _transformation(form, **nexus_kwargs):
  if form == "scan":
    return optax.chain(nx.nexus(INNER_LR, **nexus_kwargs), optax.adam(OUTER_LR))
  return nx.nexus_multisteps(optax.adam(OUTER_LR), every_k=K, inner_lr=INNER_LR, **nexus_kwargs)


def _update(form, tx, objective, params, state, **extra_args):
  """One call of ``tx.update`` the way each form is fed."""
  if form == "scan":
    return tx.update(
      None,
      state,
      params,
      loss_fn=lambda p, _: objective(p),
      microbatches=jnp.zeros((K,)),
      **extra_args,
    )
  value, grads = jax.value_and_grad(objective)(params)
  return tx.update(grads, state, params, value=value, **extra_args)


def _step(form, tx, objective, **extra_args):
  def step(params, state):
    updates, state = _update(form, tx, objective, params, state, **extra_args)
    return optax.apply_updates(params, updates), state

  return step


@pytest.mark.parametrize("form", FORMS)
def test_accepts_extra_args_and_does_not_recompile_on_the_second_call(form):
  initial, _, objective = _rosenbrock(jnp.float32)
  tx = _transformation(form)
  step = _step(form, tx, objective, unexpected_extra_args_your_optimizer_doesnt_expect=1)
  chex.clear_trace_counter()  # chex counts by code object, shared by the parametrizations
  jitted = jax.jit(chex.assert_max_traces(step, n=1))  # a second trace fails the test
  params, state = initial, tx.init(initial)
  for _ in range(2 * K):
    params, state = jitted(params, state)
  assert np.all(np.isfinite(np.asarray(params)))
  assert not np.array_equal(params, initial)


@pytest.mark.parametrize("target", TARGETS, ids=lambda target: target.__name__.strip("_"))
@pytest.mark.parametrize("form", FORMS)
def test_map_params_works_on_the_state_and_the_optimization_converges(form, target):
  initial, final, objective = target(jnp.float32)
  tx = _transformation(form)
  state = optax.tree.map_params(tx, lambda v: v, tx.init(initial))
  # map_params reaches the parameter-shaped slots, and only those.
  sevens = optax.tree.map_params(tx, lambda v: jnp.full_like(v, 7), state)
  adam_state = sevens[1][0] if form == "scan" else sevens.outer_state[0]
  chex.assert_trees_all_equal(adam_state.mu, jax.tree.map(lambda p: jnp.full_like(p, 7), initial))
  assert int(adam_state.count) == 0
  step = _step(form, tx, objective)
  (params, _), _ = jax.jit(
    lambda carry: jax.lax.scan(lambda c, _: (step(*c), None), carry, length=30_000)
  )((initial, state))
  chex.assert_trees_all_close(params, final, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("form", FORMS)
def test_inject_hyperparams_gives_the_same_updates_and_state(form):
  params = [-jnp.ones((2, 3)), jnp.ones((2, 5, 2))]
  objective = lambda p: sum(jnp.sum(jnp.sin(3.0 * leaf) * leaf) for leaf in p)
  if form == "scan":
    tx = _transformation(form)
    injected = optax.chain(
      optax.inject_hyperparams(nx.nexus)(inner_lr=INNER_LR), optax.adam(OUTER_LR)
    )
    inner_state = lambda state: (state[0].inner_state, state[1])
  else:
    tx = _transformation(form)
    factory = functools.partial(nx.nexus_multisteps, optax.adam(OUTER_LR))
    injected = optax.inject_hyperparams(factory, static_args=("every_k",))(
      every_k=K, inner_lr=INNER_LR
    )
    inner_state = lambda state: state.inner_state
  plain_state, injected_state = tx.init(params), injected.init(params)
  for _ in range(K):  # the multisteps form's K-th call runs the outer optimizer
    updates, plain_state = jax.jit(functools.partial(_update, form, tx, objective))(
      params, plain_state
    )
    injected_updates, injected_state = jax.jit(
      functools.partial(_update, form, injected, objective)
    )(params, injected_state)
    chex.assert_trees_all_close(injected_updates, updates, rtol=1e-5)
    chex.assert_trees_all_close(inner_state(injected_state), plain_state, rtol=1e-5, atol=1e-5)
    params = optax.apply_updates(params, updates)
  assert float(nx.nexus_metrics(injected_state)["pseudo_grad_norm"]) > 0


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("form", FORMS)
def test_updates_keep_the_parameters_dtype(form, dtype):
  params = jnp.array([1.0, 2.0], dtype)
  objective = lambda x: jnp.sum(x**2)
  tx = _transformation(form)
  state = jax.jit(tx.init)(params)
  update = jax.jit(functools.partial(_update, form, tx, objective))
  for _ in range(K):  # the inner calls and the K-th, outer one
    updates, state = update(params, state)
    assert updates.dtype == params.dtype
    params = optax.apply_updates(params, updates)
  assert params.dtype == jnp.dtype(dtype)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_multisteps_parameters_land_on_the_stored_outer_parameters(dtype):
  """After each K-th call the caller's parameters are exactly the stored outer ones."""
  # Large moves of weights spread over many binades: about 5 % of the bfloat16 updates
  # are not representable, and the caller's parameters land one rounding away from the
  # unrounded outer step.
  rng = np.random.default_rng(0)
  params = jnp.asarray(rng.normal(size=4096) * np.exp(2 * rng.normal(size=4096)), dtype)
  target = jnp.asarray(3 * rng.normal(size=4096))
  objective = lambda w: jnp.sum((w.astype(jnp.float32) - target) ** 2)
  tx = nx.nexus_multisteps(optax.sgd(30.0), every_k=2, inner_lr=1.0)
  state, step = tx.init(params), jax.jit(_step("multisteps", tx, objective))
  for call in range(1, 2 * 2 + 1):
    params, state = step(params, state)
    assert params.dtype == jnp.dtype(dtype)
    if call % 2 == 0:
      chex.assert_trees_all_equal(params, state.outer_params)


def _stable_under_cond(form, dtype):
  initial, _, objective = _parabola(dtype)
  tx = _transformation(form)
  key = jax.random.key(0)

  @jax.jit
  def step(params, state):
    # lax.cond needs both branches to agree in dtype and structure, so it catches any
    # update or state leaf whose dtype drifts from the parameters'.
    cond = jax.random.randint(key, (), 0, 2) == 0
    updates, state = jax.lax.cond(
      cond,
      lambda: _update(form, tx, objective, params, state),
      lambda: (params, state),
    )
    return optax.apply_updates(params, updates), state

  params, state = initial, tx.init(initial)
  for _ in range(K + 1):
    params, new_state = step(params, state)
    assert jax.tree.leaves(params)[0].dtype == dtype
    cond = jax.random.randint(key, (), 0, 2) == 0
    state = jax.lax.cond(cond, lambda: state, lambda: new_state)  # noqa: B023


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("form", FORMS)
def test_state_is_dtype_stable_under_lax_cond(form, dtype):
  with jax.enable_x64(dtype == "float64"):
    _stable_under_cond(form, jnp.dtype(dtype))


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("form", FORMS)
def test_can_be_wrapped_in_optax_multisteps(form, dtype):
  """optax.MultiSteps's first call returns exact zeros of the gradient's dtype."""
  params = jnp.array([1.0, 2.0], dtype)
  objective = lambda x: jnp.sum(x**2)
  tx = optax.MultiSteps(_transformation(form), every_k_schedule=4)
  grads = jax.grad(objective)(params)
  extra_args = (
    {"loss_fn": lambda p, _: objective(p), "microbatches": jnp.zeros((K,))}
    if form == "scan"
    else {"value": objective(params)}
  )
  updates, _ = jax.jit(functools.partial(tx.update, **extra_args))(
    grads, jax.jit(tx.init)(params), params
  )
  chex.assert_trees_all_equal(updates, jnp.zeros_like(grads))
