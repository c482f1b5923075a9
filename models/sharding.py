"""Logical axis names of every model parameter, and the one table that maps them onto a mesh.

Each parameter of :class:`models.llama.Llama` is created with a tuple of the names below
(MaxText's "logical axes"), so sharding is declared once, next to the shapes, and a
training stack changes parallelism by editing :data:`DEFAULT_RULES` alone. The mesh
axes follow the usual pretraining split:

  ``data``    pure data parallelism (replicated parameters);
  ``fsdp``    data parallelism with parameters and optimizer state sharded (ZeRO-3);
  ``tensor``  Megatron-style tensor parallelism over heads, MLP width and vocabulary.
"""

from collections.abc import Sequence

import jax
from flax import nnx
from flax.core import spmd

EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
KV_HEADS = "kv_heads"
HEAD_DIM = "head_dim"
VOCAB = "vocab"
LAYERS = "layers"
NORM = "norm"

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
  with spmd.logical_axis_rules(tuple(rules)):
    return nnx.get_partition_spec(state)


def named_shardings(state, mesh: jax.sharding.Mesh, rules: Sequence = DEFAULT_RULES):
  """``NamedSharding`` for every variable of ``state`` on ``mesh`` under ``rules``."""
  specs = logical_partition_specs(state, rules)
  return jax.tree.map(lambda spec: jax.sharding.NamedSharding(mesh, spec), specs)
