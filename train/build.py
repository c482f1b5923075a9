"""Builds a run's model, optimizer, sharded state and jitted step from its config and mesh."""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from models import DEFAULT_RULES, Llama, LlamaConfig, get_preset, next_token_loss
from models.sharding import activation_sharding
from train import faults, parallel
from train.config import TrainConfig
from train.optimizers import build_optimizer, step_kind
from train.step import TrainState, make_train_step


@dataclasses.dataclass
class Training:
  """What a run needs, placed on ``mesh``.

  Attributes:
    model_config: the Llama's config.
    graphdef: its ``nnx`` graph definition (params are pure dicts).
    abstract_state: a ``TrainState`` of ``ShapeDtypeStruct`` with shardings (restore target).
    init: jitted ``() -> TrainState``, born sharded.
    init_from_params: ``(params) -> TrainState`` from given weights: a pure dict of host
      arrays, or of anything indexable like one (``models.hf_llama.LazyParam``), each
      placed on its parameter's sharding from the slices its devices hold.
    step: jitted ``(state, tokens [K, B, T + 1]) -> (state, metrics)``; donates ``state``.
    batch_sharding: of the ``[K, B, T + 1]`` batches.
  """

  model_config: LlamaConfig
  graphdef: Any
  abstract_state: TrainState
  init: Callable[[], TrainState]
  init_from_params: Callable[[Any], TrainState]
  step: Callable
  batch_sharding: jax.sharding.NamedSharding


def build_training(
  config: TrainConfig,
  mesh: jax.sharding.Mesh,
  rules=DEFAULT_RULES,
  tx: optax.GradientTransformation | None = None,
  vocab_size: int | None = None,
  model_config: LlamaConfig | None = None,
) -> Training:
  """The run of ``config`` on ``mesh``; ``tx`` replaces ``build_optimizer(config)``
  (research variants; it must consume micro-batches the way ``config.optimizer`` does);
  ``vocab_size`` replaces the preset's (a token cache's padded vocabulary);
  ``model_config`` replaces the preset altogether (a Hugging Face checkpoint's shape)."""
  if model_config is None:
    model_config = get_preset(config.model)
  if vocab_size is not None:
    model_config = dataclasses.replace(model_config, vocab_size=vocab_size)
  abstract_model = nnx.eval_shape(lambda: Llama(model_config, rngs=nnx.Rngs(config.seed)))
  graphdef, abstract_params_state = nnx.split(abstract_model, nnx.Param)
  parallel.check_model_fits_mesh(abstract_params_state, mesh, rules)
  tx = build_optimizer(config) if tx is None else tx
  params_shardings = parallel.param_shardings(abstract_params_state, mesh, rules)
  replicated = parallel.replicated(mesh)

  def state_of(params) -> TrainState:
    return TrainState(
      step=jnp.zeros([], jnp.int32),
      params=params,
      opt_state=tx.init(params),
      rng=jax.random.PRNGKey(config.seed),
      skipped_steps=jnp.zeros([], jnp.int32),
    )

  def init() -> TrainState:
    model = Llama(model_config, rngs=nnx.Rngs(config.seed))
    return state_of(nnx.to_pure_dict(nnx.state(model, nnx.Param)))

  abstract = jax.eval_shape(init)
  # Param-shaped optimizer leaves shard like their params; Muon's masked-out slots stay empty.
  opt_shardings = optax.tree_utils.tree_map_params(
    tx,
    lambda leaf, sharding: leaf if isinstance(leaf, optax.MaskedNode) else sharding,
    abstract.opt_state,
    params_shardings,
    transform_non_params=lambda _: replicated,
    is_leaf=lambda leaf: isinstance(leaf, optax.MaskedNode),
  )
  state_shardings = TrainState(
    step=replicated,
    params=params_shardings,
    opt_state=opt_shardings,
    rng=replicated,
    skipped_steps=replicated,
  )
  abstract_state = jax.tree.map(
    lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
    abstract,
    state_shardings,
  )

  # The displacement is Nexus's (nexus(..., loss_takes_displacement=True)): the model forms
  # each layer's inner point inside its layer scan instead of Nexus materialising it whole.
  def loss_fn(params, tokens, displacement=None):
    with activation_sharding(mesh, rules):
      return next_token_loss(nnx.merge(graphdef, params), tokens, displacement)

  if faults.nonfinite_steps():
    loss_fn = faults.poisoned_loss(loss_fn)
  batches = parallel.batch_sharding(mesh, batch_axis=1)
  step = jax.jit(
    make_train_step(loss_fn, tx, step_kind(config.optimizer)),
    in_shardings=(state_shardings, batches),
    out_shardings=(state_shardings, replicated),
    donate_argnums=0,
  )
  state_from_params = jax.jit(
    state_of, in_shardings=(params_shardings,), out_shardings=state_shardings, donate_argnums=0
  )

  def init_from_params(params) -> TrainState:
    expected = jax.tree.structure(abstract.params)
    if jax.tree.structure(params) != expected:
      raise ValueError(f"init_from_params: the params' tree differs from the model's ({expected}).")
    # Each process reads only the slices of its own devices' shards.
    placed = jax.tree.map(
      lambda host, target, sharding: jax.make_array_from_callback(
        target.shape, sharding, lambda index: np.asarray(host[index], target.dtype)
      ),
      params,
      abstract.params,
      params_shardings,
    )
    return state_from_params(placed)

  return Training(
    model_config=model_config,
    graphdef=graphdef,
    abstract_state=abstract_state,
    init=jax.jit(init, out_shardings=state_shardings),
    init_from_params=init_from_params,
    step=step,
    batch_sharding=batches,
  )
