"""What stops a run that cannot go on, and the test-only injection of non-finite steps.

A run stops with one line ``error: ...`` and :data:`RUN_FAULT_EXIT` when a storm of
non-finite steps would only waste its compute (``--max-skipped-steps``) or a checkpoint
cannot be written; its newest complete checkpoint then stays the latest, so ``--resume``
continues from before the fault.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

RUN_FAULT_EXIT = 3

# Test-only: "FIRST:LAST" makes the losses of outer steps FIRST to LAST non-finite (the
# tokens are integers, so the batch marks them with negative ids and the loss turns NaN).
NONFINITE_STEPS_VARIABLE = "NEXUS_TEST_NONFINITE_STEPS"


class RunFault(RuntimeError):
  """The run cannot go on; the message names why, the checkpoint to resume, and the fix."""


class SkippedSteps:
  """Counts consecutive skipped outer steps; :class:`RunFault` once there are ``limit``.

  A step's flag is read when the next step has been dispatched, so the host keeps running
  one step ahead; :meth:`settle` reads every flag (before a checkpoint).
  """

  def __init__(self, limit: int):
    self.limit = limit
    self.consecutive = 0
    self.unread: list[tuple[int, jax.Array]] = []

  def stepped(self, step: int, skipped: jax.Array) -> None:
    self.unread.append((step, skipped))
    if len(self.unread) > 1:
      self._read(*self.unread.pop(0))

  def settle(self) -> int:
    """Reads every unread flag; returns the consecutive skipped steps up to the newest."""
    while self.unread:
      self._read(*self.unread.pop(0))
    return self.consecutive

  def _read(self, step: int, skipped: jax.Array) -> None:
    self.consecutive = self.consecutive + 1 if bool(jax.device_get(skipped)) else 0
    if self.limit and self.consecutive >= self.limit:
      first = step - self.consecutive + 1
      raise RunFault(
        f"the last {self.consecutive} outer steps ({first} to {step}) were all skipped: "
        "their losses or updates were not finite (--max-skipped-steps "
        f"{self.limit}); lower --lr or --inner-lr, or check the data."
      )


def nonfinite_steps() -> tuple[int, int] | None:
  """The test-only ``NEXUS_TEST_NONFINITE_STEPS`` range, or None (every real run)."""
  value = os.environ.get(NONFINITE_STEPS_VARIABLE)
  if not value:
    return None
  first, _, last = value.partition(":")
  return int(first), int(last or first)


def poison_tokens(tokens: np.ndarray, step: int, steps: tuple[int, int] | None) -> np.ndarray:
  """``tokens`` marked non-finite (negative ids) when ``step`` is in the test range."""
  if steps is None or not steps[0] <= step <= steps[1]:
    return tokens
  return np.full_like(tokens, -1)


def poisoned_loss(loss_fn):
  """``loss_fn`` whose loss is NaN on a micro-batch of negative token ids (test-only)."""

  def loss(params, tokens, *args):
    value = loss_fn(params, jnp.maximum(tokens, 0), *args)
    return jnp.where(jnp.any(tokens < 0), jnp.nan, value)

  return loss
