"""The weighted multi-source mixture in grain, served K micro-batches per outer step.

Each training source is its packed sequences, shuffled (differently every epoch) and
repeated without end. ``grain.MapDataset.mix`` interleaves the sources in proportion to
the weights, deterministically, so an element's source depends on its index alone.
Two micro-batch modes:

  ``mixed``   sources are mixed per sequence, then batched: every micro-batch holds
              every source in proportion (the loader of the paper's Algorithm 3,
              which all its main results use);
  ``source``  each source is batched on its own, then whole micro-batches are mixed:
              each micro-batch comes from one source, picked by the weights
              (Algorithm 1's sampling). Nexus normalizes each micro-batch gradient,
              so here every source gets an equal say in a step whatever its gradient
              norm, which reweights the mixture on its own.

An outer step's element is ``{"tokens": int32 [K, B, T + 1], "source": int32 [K, B]}``.
The stream is a pure function of (token cache, weights, seed, shapes): two optimizers fed by
the same arguments see exactly the same micro-batches. The iterator's state
(``get_state``/``set_state``, or grain's orbax handler) restores it exactly.

Multi-host: the global stream is the same for every process count. Process ``p`` of
``P`` batches the mixed stream in blocks of ``B / P`` sequences and keeps every P-th
block, starting at ``p``: its slice of global micro-batch ``m`` is rows
``[p B / P, (p + 1) B / P)`` of it. grain reads lazily, so a process reads only its own
sequences, and ``jax.make_array_from_process_local_data`` stacks the slices in process
order back into exactly the single-process micro-batch. Iterator state is an index into
that global stream, so a checkpoint resumes on any number of processes.
"""

import dataclasses
import functools
import math
import zlib
from collections.abc import Mapping, Sequence

import grain
import numpy as np

from train.data.cache import TokenCache
from train.data.roles import MODES, TRAIN, BatchMode

# How the K micro-batches of a step draw from the sources (module docstring).


class MixtureError(ValueError):
  """Bad mixture or loader input; the message names the fix."""


def parse_mixture(text: str, available: Sequence[str]) -> dict[str, float]:
  """Parses ``"name=weight,..."`` into {name: weight}, checked against ``available``.

  Weights need not sum to one; they are relative.

  Example:
    >>> parse_mixture("math=0.7, prose=0.1,code=0.2", ["code", "math", "prose"])
    {'math': 0.7, 'prose': 0.1, 'code': 0.2}
  """
  choices = ", ".join(available)
  if not text or not text.strip():
    raise MixtureError(
      f"the mixture is empty; give name=weight pairs, e.g. {','.join(f'{n}=1' for n in available)}."
    )
  weights: dict[str, float] = {}
  for item in text.split(","):
    name, sep, value = item.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name or not value:
      raise MixtureError(
        f"malformed mixture item {item.strip()!r}; write name=weight, e.g. {available[0]}=0.5."
      )
    if name not in available:
      raise MixtureError(f"unknown source {name!r} in the mixture; choose from {choices}.")
    if name in weights:
      raise MixtureError(f"source {name!r} appears twice in the mixture; give each once.")
    try:
      weight = float(value)
    except ValueError:
      raise MixtureError(
        f"weight {value!r} of {name!r} is not a number; write e.g. {name}=0.5."
      ) from None
    if not math.isfinite(weight) or weight <= 0:
      raise MixtureError(
        f"weight of {name!r} must be a finite number > 0, got {value}; "
        "leave a source out instead of giving it weight 0."
      )
    weights[name] = weight
  return weights


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
  """Shapes and order of the training stream.

  Attributes:
    seq_len: tokens per sequence (each element holds ``seq_len + 1`` for the shift).
    micro_batch_size: sequences per micro-batch over all processes.
    microbatches: K, micro-batches per outer step.
    mode: ``"mixed"`` or ``"source"`` (module docstring).
    seed: seed of every shuffle.
  """

  seq_len: int
  micro_batch_size: int
  microbatches: int
  mode: BatchMode = "mixed"
  seed: int = 0

  def __post_init__(self):
    for name in ("seq_len", "micro_batch_size", "microbatches"):
      if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
        raise MixtureError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}.")
    if self.mode not in MODES:
      raise MixtureError(f"unknown micro-batch mode {self.mode!r}; choose mixed or source.")


def _source_seed(seed: int, name: str) -> int:
  return zlib.crc32(f"{seed}/{name}".encode())


def _label(tokens, source_id):
  return {"tokens": tokens, "source": np.int32(source_id)}


def source_sequences(cache: TokenCache, name: str, seq_len: int, role: str = TRAIN):
  """Packed sequences [N, seq_len + 1] of one cache set, read lazily from disk
  (:class:`train.data.cache.PackedWindows`); a one-line error when too short."""
  sequences = cache.windows(role, name, seq_len)
  if len(sequences) == 0:
    raise MixtureError(
      f"source {name!r} has fewer than {seq_len + 1} tokens; lower the "
      "sequence length or give the domain more text."
    )
  return sequences


def outer_step_dataset(
  sequences: Mapping[str, Sequence[np.ndarray]],
  weights: Mapping[str, float],
  config: LoaderConfig,
  shard: grain.sharding.ShardOptions = grain.sharding.NoSharding(),
) -> grain.MapDataset:
  """The infinite stream of outer steps, this process's shard of it.

  Args:
    sequences: packed sequences [N, T + 1] per source (:func:`source_sequences`).
    weights: mixture weights per source, a subset of ``sequences``.
    config: shapes, mode and seed.
    shard: ``grain.sharding.ShardByJaxProcess()`` on multi-host runs.

  Returns:
    A ``grain.MapDataset`` whose i-th element is outer step i.
  """
  if not weights:
    raise MixtureError("the mixture has no sources; give at least one name=weight.")
  missing = [name for name in weights if name not in sequences]
  if missing:
    raise MixtureError(
      f"no sequences for {', '.join(missing)}; choose from {', '.join(sequences)}."
    )
  if config.micro_batch_size % shard.shard_count:
    raise MixtureError(
      f"micro_batch_size {config.micro_batch_size} is not divisible by the "
      f"{shard.shard_count} data shards; use a multiple of {shard.shard_count}."
    )
  local_batch = config.micro_batch_size // shard.shard_count
  names = list(weights)
  streams = []
  for source_id, name in enumerate(names):
    stream = (
      grain.MapDataset.source(sequences[name])
      .shuffle(seed=_source_seed(config.seed, name))
      .repeat()
      .map(functools.partial(_label, source_id=source_id))
    )
    streams.append(stream)
  proportions = [weights[name] for name in names]
  own_rows = slice(shard.shard_index, None, shard.shard_count)
  if config.mode == "mixed":
    micro_batches = grain.MapDataset.mix(streams, proportions).batch(local_batch)[own_rows]
  else:
    micro_batches = grain.MapDataset.mix(
      [s.batch(local_batch)[own_rows] for s in streams], proportions
    )
  return micro_batches.batch(config.microbatches)


def epochs_per_source(
  sequences: Mapping[str, np.ndarray],
  weights: Mapping[str, float],
  config: LoaderConfig,
  steps: int,
) -> dict[str, float]:
  """How many times each source is read through in ``steps`` outer steps."""
  total = sum(weights.values())
  consumed = steps * config.microbatches * config.micro_batch_size
  return {name: consumed * weights[name] / total / len(sequences[name]) for name in weights}


DEFAULT_MIXTURE = "prose=1,code=1,math=1,technical=1"


def training_dataset(
  cache: TokenCache,
  mixture: str,
  config: LoaderConfig,
  shard: grain.sharding.ShardOptions = grain.sharding.NoSharding(),
):
  """The outer-step stream of a token cache under a ``name=weight,...`` mixture.

  Returns:
    ``(dataset, names)``: the ``grain.MapDataset`` of outer steps and the source names
    in the order of the ``"source"`` ids. Iterate with
    ``iter(dataset.to_iter_dataset())``; the iterator's ``get_state()`` checkpoints it.
  """
  weights = parse_mixture(mixture, cache.names(TRAIN))
  sequences = {name: source_sequences(cache, name, config.seq_len) for name in weights}
  return outer_step_dataset(sequences, weights, config, shard), list(weights)
