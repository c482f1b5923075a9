"""Evaluation, the same for every optimizer: losses per set and cross-domain gradient cosines.

Losses are reported in nats per token and in bits per byte, for every tokenizer:

  bpb = loss * tokens / (bytes * ln 2) = (sum of target nats) / ln 2 / (bytes scored),

where a target's bytes are the UTF-8 bytes its token stands for
(``Tokenizer.token_bytes``; for a text file, the file's own bytes). End-of-document
predictions count in the numerator (they are part of the text's code length) but add
no bytes. Runs with different tokenizers compare in bpb.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import nexus_optax as nx
from models import DEFAULT_RULES
from models.sharding import activation_sharding
from train.data.cache import TokenCache
from train.data.roles import HELDOUT, VALIDATION
from train.data.tokenizer import Tokenizer
from train.parallel import batch_sharding, global_array_from_host


@dataclasses.dataclass(frozen=True)
class EvalSet:
  """Windows to score: ``tokens [N, T + 1]`` int32, ``mask [N, T]`` over targets, and
  ``target_bytes [N, T]``, the UTF-8 bytes each scored target stands for."""

  name: str
  tokens: np.ndarray
  mask: np.ndarray
  target_bytes: np.ndarray


def windows_of(stream: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Every target of ``stream`` (all tokens after the first) exactly once, in windows.

  The last window is padded and masked, so nothing is dropped.

  Example:
    >>> tokens, mask = windows_of(np.arange(6), seq_len=3)
    >>> tokens.tolist(), mask.tolist()
    ([[0, 1, 2, 3], [3, 4, 5, 0]], [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
  """
  targets = len(stream) - 1
  if targets < 1:
    raise ValueError("the text has fewer than 2 tokens; nothing to score.")
  count = -(-targets // seq_len)
  padded = np.zeros(count * seq_len + 1, np.int32)
  padded[: len(stream)] = stream
  starts = np.arange(count) * seq_len
  tokens = padded[starts[:, None] + np.arange(seq_len + 1)]
  mask = (starts[:, None] + np.arange(1, seq_len + 1) <= targets).astype(np.float32)
  return tokens, mask


def cache_eval_sets(
  cache: TokenCache, seq_len: int, max_sequences: int, roles=(VALIDATION, HELDOUT)
) -> list[EvalSet]:
  """``<role>/<set>`` for every set of ``roles`` (``validation/<domain>``, ``heldout/<set>``,
  and ``train/<domain>`` when asked): up to ``max_sequences`` windows each, evenly spaced
  through the set so that every part of it is represented."""
  token_bytes = cache.tokenizer.token_bytes().astype(np.float32)
  sets = []
  for role in roles:
    for name in cache.names(role):
      windows = cache.windows(role, name, seq_len)
      if len(windows) == 0:
        continue
      picks = np.unique(
        np.linspace(0, len(windows) - 1, min(max_sequences, len(windows))).round().astype(int)
      )
      chosen = np.stack([windows[i] for i in picks])
      sets.append(
        EvalSet(
          f"{role}/{name}",
          chosen,
          np.ones(chosen[:, 1:].shape, np.float32),
          token_bytes[chosen[:, 1:]],
        )
      )
  return sets


def text_eval_set(text: str, seq_len: int, name: str, tokenizer: Tokenizer) -> EvalSet:
  """Every token of ``text`` as a target once: the text follows an end-of-document token,
  as a document does in training. Its bytes are the text's UTF-8 bytes, spread over the
  targets by the tokens' byte counts (they add up to the text's for byte-level tokenizers)."""
  stream = np.concatenate([[tokenizer.eod_id], tokenizer.encode(text)]).astype(np.int32)
  tokens, mask = windows_of(stream, seq_len)
  per_token = tokenizer.token_bytes().astype(np.float64)[tokens[:, 1:]] * mask
  total = len(text.encode("utf-8"))
  scale = total / per_token.sum() if per_token.sum() else 0.0
  return EvalSet(name, tokens, mask, (per_token * scale).astype(np.float32))


def target_sums(model, tokens, mask, target_bytes):
  """(sum of target nats, target count, target bytes) of one batch."""
  logits = model(tokens[:, :-1]).astype(jnp.float32)
  nats = optax.losses.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
  return jnp.sum(nats * mask), jnp.sum(mask), jnp.sum(mask * target_bytes)


class Evaluator:
  """Scores eval sets and measures gradient agreement between training domains.

  Args:
    graphdef: the model's ``nnx`` graph definition.
    mesh: the training mesh (batches are split over data x fsdp like training ones).
    batch_size: windows per forward pass; a multiple of the data-parallel size.
    rules: the logical-axis rules that place the activations (``models.sharding``).
  """

  def __init__(self, graphdef, mesh, batch_size: int, rules=DEFAULT_RULES):
    self.mesh = mesh
    self.batch_size = batch_size

    def sums(params, tokens, mask, target_bytes):
      with activation_sharding(mesh, rules):
        return target_sums(nnx.merge(graphdef, params), tokens, mask, target_bytes)

    self._sums = jax.jit(sums)
    ones = lambda tokens: jnp.ones(tokens[:, 1:].shape, jnp.float32)
    self._loss = lambda params, tokens: sums(params, tokens, ones(tokens), ones(tokens))[0]

    def cosines(params, batches):
      mean_loss = lambda p, b: self._loss(p, b) / (b.shape[0] * (b.shape[1] - 1))
      return nx.diagnostics.gradient_cosine_matrix(mean_loss, params, batches)

    self._cosines = jax.jit(cosines)

  def losses(self, params, eval_set: EvalSet) -> dict[str, float]:
    """``loss`` (nats/token), ``bpb``, ``tokens`` and ``bytes`` of one set."""
    count = len(eval_set.tokens)
    padded = -(-count // self.batch_size) * self.batch_size
    tokens = np.zeros((padded, eval_set.tokens.shape[1]), np.int32)
    mask = np.zeros((padded, eval_set.mask.shape[1]), np.float32)
    target_bytes = np.zeros_like(mask)
    tokens[:count], mask[:count], target_bytes[:count] = (
      eval_set.tokens,
      eval_set.mask,
      eval_set.target_bytes,
    )
    sharding = batch_sharding(self.mesh, batch_axis=0)
    totals = np.zeros(3)
    for start in range(0, padded, self.batch_size):
      rows = slice(start, start + self.batch_size)
      sums = self._sums(
        params,
        *(global_array_from_host(array[rows], sharding) for array in (tokens, mask, target_bytes)),
      )
      totals += np.array([float(value) for value in sums])
    nats, targets, scored_bytes = totals
    return {
      "loss": nats / max(targets, 1.0),
      "bpb": nats / math.log(2) / max(scored_bytes, 1.0),
      "tokens": int(targets),
      "bytes": int(round(scored_bytes)),
    }

  def gradient_cosines(self, params, cosine_batches: np.ndarray) -> np.ndarray:
    """The [S, S] cosine matrix of per-domain gradients, ``cosine_batches [S, B, T + 1]``."""
    batches = global_array_from_host(cosine_batches, batch_sharding(self.mesh, batch_axis=1))
    return np.asarray(self._cosines(params, batches))

  def evaluate(
    self,
    params,
    eval_sets: list[EvalSet],
    cosine_batches: np.ndarray | None,
    domain_names: list[str],
  ) -> dict:
    """Flat metrics: ``<set>/loss``, ``<set>/bpb``, and the cosine matrix with its mean."""
    results = {}
    for eval_set in eval_sets:
      for key, value in self.losses(params, eval_set).items():
        if key not in ("tokens", "bytes"):
          results[f"{eval_set.name}/{key}"] = value
    if cosine_batches is not None and len(domain_names) > 1:
      matrix = self.gradient_cosines(params, cosine_batches)
      off_diagonal = matrix[~np.eye(len(matrix), dtype=bool)]
      results["gradient_cosine/mean"] = float(off_diagonal.mean())
      results["gradient_cosine/matrix"] = matrix.round(6).tolist()
      results["gradient_cosine/domains"] = list(domain_names)
    return results


def domain_batches(
  eval_sets: list[EvalSet], domains, batch_size: int
) -> tuple[np.ndarray | None, list[str]]:
  """One batch per training domain from its validation set, for the cosine matrix."""
  by_name = {s.name: s for s in eval_sets}
  names = [d for d in domains if f"{VALIDATION}/{d}" in by_name]
  if not names:
    return None, []
  batches = [
    np.resize(
      by_name[f"{VALIDATION}/{d}"].tokens,
      (batch_size, by_name[f"{VALIDATION}/{d}"].tokens.shape[1]),
    )
    for d in names
  ]
  return np.stack(batches), names
