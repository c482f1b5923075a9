"""Processes, the device mesh, and where every array lives on it.

Parallelism is declared once: the model's logical axes map onto the ``data x fsdp x
tensor`` mesh through :data:`models.DEFAULT_RULES`; params and every param-shaped leaf of
the optimizer state follow those rules; batches split their batch axis over
``data x fsdp``; everything else is replicated. XLA's GSPMD partitioner does the rest.
"""

import math
import os

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from models.sharding import MESH_AXES, logical_partition_specs
from train.config import ConfigError
from train.peers import DEFAULT_PEER_TIMEOUT

BATCH_AXES = ("data", "fsdp")


def distributed_settings(
  coordinator_address: str | None,
  num_processes: int | None,
  process_id: int | None,
  auto: bool = False,
) -> dict | None:
  """``jax.distributed.initialize``'s arguments when flags or ``JAX_*`` variables (or
  ``auto``) ask for a multi-process run, else None.

  Flags win over ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``.
  ``auto`` (``--distributed``) calls it with no arguments, as TPU pods and SLURM want.
  """
  address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  count = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
  index = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
  explicit = (address, count, index)
  if not auto and all(value is None for value in explicit):
    return None
  if not auto and any(value is None for value in explicit):
    raise ConfigError(
      "a multi-process run needs --coordinator-address, --num-processes and "
      "--process-id (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, "
      "JAX_PROCESS_ID); give all three, or --distributed on TPU pods and SLURM."
    )
  if count is not None and not (count >= 1 and index is not None and 0 <= index < count):
    raise ConfigError(
      f"--process-id must be in [0, {count}) for --num-processes {count}, got {index}."
    )
  if auto and all(value is None for value in explicit):
    return {}
  return {"coordinator_address": address, "num_processes": count, "process_id": index}


def initialize_distributed(
  coordinator_address: str | None,
  num_processes: int | None,
  process_id: int | None,
  auto: bool = False,
  peer_timeout: int = DEFAULT_PEER_TIMEOUT,
) -> bool:
  """``jax.distributed.initialize`` with :func:`distributed_settings`, when they ask for it.

  CPU collectives go through gloo, so several processes on one machine work too. A process
  silent for ``peer_timeout`` seconds is lost (JAX's heartbeat timeout; see
  :mod:`train.peers` for what the others then do).

  Returns:
    Whether the run is multi-process.
  """
  settings = distributed_settings(coordinator_address, num_processes, process_id, auto)
  if settings is None:
    return False
  if peer_timeout < 1:
    raise ConfigError(f"--peer-timeout must be at least 1 second, got {peer_timeout}.")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**settings, heartbeat_timeout_seconds=peer_timeout)
  return True


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  if value is None:
    return None
  try:
    return int(value)
  except ValueError:
    raise ConfigError(f"{name}={value!r} is not an integer; unset it or fix it.") from None


def parse_mesh(text: str, device_count: int) -> dict[str, int]:
  """``"data=2,fsdp=2,tensor=2"`` -> axis sizes; -1 takes the remaining devices.

  Example:
    >>> parse_mesh("data=2,fsdp=-1", 8)
    {'data': 2, 'fsdp': 4, 'tensor': 1}
  """
  sizes = {axis: 1 for axis in MESH_AXES}
  seen, fill = set(), None
  for item in filter(None, (part.strip() for part in text.split(","))):
    name, sep, value = item.partition("=")
    name = name.strip()
    if not sep or name not in MESH_AXES:
      raise ConfigError(
        f"bad --mesh item {item!r}; write axis=size with axes data, fsdp, tensor, "
        "e.g. --mesh data=2,fsdp=2,tensor=2."
      )
    if name in seen:
      raise ConfigError(f"--mesh names {name!r} twice; give each axis once.")
    seen.add(name)
    try:
      size = int(value)
    except ValueError:
      raise ConfigError(f"--mesh size {value!r} of {name!r} is not an integer.") from None
    if size == -1:
      if fill is not None:
        raise ConfigError("--mesh may leave only one axis at -1.")
      fill = name
    elif size < 1:
      raise ConfigError(f"--mesh {name}={size}: sizes are integers >= 1, or -1 for the rest.")
    else:
      sizes[name] = size
  fixed = math.prod(sizes.values())
  if fill is not None:
    if device_count % fixed:
      raise ConfigError(
        f"--mesh {text}: the fixed axes ({fixed} devices) do not divide the "
        f"{device_count} devices; pick sizes whose product divides {device_count}."
      )
    sizes[fill] = device_count // fixed
  elif device_count % fixed:
    raise ConfigError(
      f"--mesh {text} needs {fixed} devices, which does not divide the "
      f"{device_count} available; pick sizes whose product divides {device_count}."
    )
  return sizes


def make_mesh(sizes: dict[str, int], multi_process: bool) -> Mesh:
  """A ``Mesh`` over the first ``prod(sizes)`` devices (all of them on multi-process runs)."""
  count = math.prod(sizes.values())
  if multi_process and count != jax.device_count():
    raise ConfigError(
      f"a multi-process run must use every device: the mesh has {count}, the "
      f"processes hold {jax.device_count()}; use -1 for one axis."
    )
  devices = jax.devices()[:count]
  shape = tuple(sizes[axis] for axis in MESH_AXES)
  try:
    grid = mesh_utils.create_device_mesh(shape, devices)
  except (ValueError, AssertionError, NotImplementedError):
    grid = np.array(devices).reshape(shape)
  return Mesh(grid, MESH_AXES)


def param_specs(abstract_state, rules) -> dict:
  """``PartitionSpec`` per parameter, as a pure dict shaped like ``nnx.to_pure_dict(state)``."""
  return nnx.to_pure_dict(logical_partition_specs(abstract_state, rules))


def _is_spec(x) -> bool:
  return isinstance(x, PartitionSpec)


def check_model_fits_mesh(abstract_state, mesh: Mesh, rules) -> None:
  """One-line error when a mesh axis does not divide the model dimension it shards."""
  specs = jax.tree_util.tree_leaves_with_path(param_specs(abstract_state, rules), is_leaf=_is_spec)
  shapes = jax.tree.leaves(nnx.to_pure_dict(abstract_state))
  for (path, spec), leaf in zip(specs, shapes):
    for dim, axes in enumerate(spec):
      axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
      ways = math.prod(mesh.shape[axis] for axis in axes)
      if leaf.shape[dim] % ways:
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        raise ConfigError(
          f"--mesh {'x'.join(axes)}={ways} does not divide dimension {dim} "
          f"(size {leaf.shape[dim]}) of {name}; pick a size that divides it."
        )


def param_shardings(abstract_state, mesh: Mesh, rules) -> dict:
  return jax.tree.map(
    lambda spec: NamedSharding(mesh, spec), param_specs(abstract_state, rules), is_leaf=_is_spec
  )


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, batch_axis: int = 1) -> NamedSharding:
  """Shards axis ``batch_axis`` over data x fsdp; [K, B, T + 1] batches use axis 1."""
  return NamedSharding(mesh, PartitionSpec(*([None] * batch_axis), BATCH_AXES))


def process_batch_rows(mesh: Mesh, global_batch: int) -> tuple[int, int]:
  """(shard index, shard count) of this process's contiguous block of batch rows.

  A process's devices own some rows of the batch axis; the data loader must read
  exactly those (grain ``ShardOptions``). They are one contiguous block whenever the
  mesh splits processes over ``data``/``fsdp`` or replicates a batch over ``tensor``.
  """
  data_ways = mesh.shape["data"] * mesh.shape["fsdp"]
  if global_batch % data_ways:
    raise ConfigError(
      f"--micro-batch-size {global_batch} is not divisible by the mesh's "
      f"data x fsdp = {data_ways}; use a multiple of {data_ways}."
    )
  sharding = batch_sharding(mesh, batch_axis=0)
  rows = {
    index[0].indices(global_batch)[:2]
    for index in sharding.addressable_devices_indices_map((global_batch,)).values()
  }
  start, stop = min(r[0] for r in rows), max(r[1] for r in rows)
  block = stop - start
  if sum(r[1] - r[0] for r in rows) < block or global_batch % block or start % block:
    raise ConfigError(
      "this mesh gives a process non-contiguous batch rows; order the mesh so "
      "processes split the data/fsdp axes."
    )
  return start // block, global_batch // block


def global_batch(local: np.ndarray, sharding: NamedSharding, global_shape) -> jax.Array:
  return jax.make_array_from_process_local_data(sharding, local, global_shape)


def global_array_from_host(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array from host data that every process holds in full (eval sets)."""
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])
