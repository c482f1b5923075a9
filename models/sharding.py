"""Logical axis names of every model parameter, and the one table that maps them onto a mesh.

Each parameter of :class:`models.llama.Llama` is created with a tuple of the names below
(MaxText's "logical axes"), so sharding is declared once, next to the shapes, and a
training stack changes parallelism by editing :data:`DEFAULT_RULES` alone. The mesh
axes follow the usual pretraining split:

  ``data``    pure data parallelism (replicated parameters);
  ``fsdp``    data parallelism with parameters and optimizer state sharded (ZeRO-3);
  ``tensor``  Megatron-style tensor parallelism over heads, MLP width and vocabulary.
"""

import contextlib
from collections.abc import Sequence

import jax
from flax import linen, nnx

EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
KV_HEADS = "kv_heads"
HEAD_DIM = "head_dim"
VOCAB = "vocab"
LAYERS = "layers"
NORM = "norm"

# Activations. Without them XLA may follow the FSDP-sharded weights and shard the
# residual stream along ``embed``, replicating every batch-only tensor (attention
# scores, logits) on all devices: 8x the attention memory and work on fsdp=8.
BATCH = "activation_batch"
LENGTH = "activation_length"
ACTIVATION_EMBED = "activation_embed"
ACTIVATION_HEADS = "activation_heads"
ACTIVATION_KV_HEADS = "activation_kv_heads"
ACTIVATION_MLP = "activation_mlp"
ACTIVATION_VOCAB = "activation_vocab"

MESH_AXES = ("data", "fsdp", "tensor")

# Logical name -> mesh axis (None: replicated). The first matching rule wins, so
# a rule list is a priority list exactly as in flax.linen.logical_axis_rules.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
  (EMBED, "fsdp"),
  (MLP, "tensor"),
  (HEADS, "tensor"),
  (KV_HEADS, "tensor"),
  (VOCAB, "tensor"),
  (HEAD_DIM, None),
  (LAYERS, None),
  (NORM, None),
  (BATCH, ("data", "fsdp")),
  (LENGTH, None),
  (ACTIVATION_EMBED, None),
  (ACTIVATION_HEADS, "tensor"),
  (ACTIVATION_KV_HEADS, "tensor"),
  (ACTIVATION_MLP, "tensor"),
  (ACTIVATION_VOCAB, "tensor"),
)


def logical_partition_specs(state, rules: Sequence = DEFAULT_RULES):
  """Maps a model state's logical axis annotations to mesh ``PartitionSpec``s.

  Args:
    state: an ``nnx.State`` (or abstract state from ``nnx.eval_shape``) whose
      variables carry ``out_sharding`` logical names.
    rules: (logical name, mesh axis or None) pairs.

  Returns:
    The same tree with a ``jax.sharding.PartitionSpec`` per variable.

  Example:
    >>> from models import PRESETS, Llama
    >>> from flax import nnx
    >>> model = nnx.eval_shape(lambda: Llama(PRESETS["tiny"], rngs=nnx.Rngs(0)))
    >>> specs = logical_partition_specs(nnx.state(model, nnx.Param))
    >>> tuple(specs["blocks"]["mlp"]["gate"].get_value())
    (None, 'fsdp', 'tensor')
  """
  with nnx.logical_axis_rules(tuple(rules)):
    return nnx.get_partition_spec(state)


def named_shardings(state, mesh: jax.sharding.Mesh, rules: Sequence = DEFAULT_RULES):
  """``NamedSharding`` for every variable of ``state`` on ``mesh`` under ``rules``."""
  specs = logical_partition_specs(state, rules)
  return jax.tree.map(lambda spec: jax.sharding.NamedSharding(mesh, spec), specs)


def logical_to_mesh(
  logical_axes: Sequence[str | None], rules: Sequence = DEFAULT_RULES
) -> jax.sharding.PartitionSpec:
  """The ``PartitionSpec`` of a tensor whose axes carry ``logical_axes``: flax's reading of
  ``rules``, the one :func:`logical_partition_specs` and :func:`constrain` use (the first
  rule for a name wins; a mesh axis shards one tensor axis at most).

  Example:
    >>> tuple(logical_to_mesh((BATCH, LENGTH, ACTIVATION_MLP)))
    (('data', 'fsdp'), None, 'tensor')
  """
  return linen.logical_to_mesh_axes(tuple(logical_axes), tuple(rules))


@contextlib.contextmanager
def activation_sharding(mesh: jax.sharding.Mesh, rules: Sequence = DEFAULT_RULES):
  """While tracing inside this context, :func:`constrain` pins activations to ``mesh``.

  Enter it inside the function that ``jax.jit`` traces (the loss), so that every trace
  sees it. Outside it the model places nothing and XLA propagates shardings freely. The
  constraints name ``mesh``'s axes (its abstract mesh: ``jax.set_mesh`` cannot be entered
  under ``jax.jit``); the devices are those of the traced function's arrays, which
  therefore live on ``mesh``.
  """
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nnx.logical_axis_rules(tuple(rules)):
    yield


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """``x`` with a sharding constraint from ``logical_axes``, under :func:`activation_sharding`;
  ``x`` itself otherwise (flax's ``with_logical_constraint`` is the identity outside a
  rules context and a mesh)."""
  return linen.with_logical_constraint(x, tuple(logical_axes))
