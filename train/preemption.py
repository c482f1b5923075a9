"""SIGTERM as a request to stop: a preempted run saves a checkpoint and exits 0."""

import signal

import jax
import numpy as np
from jax.experimental import multihost_utils


class StopRequest:
  """Set by SIGTERM; on multi-process runs every process learns of any one's signal."""

  def __init__(self):
    self.requested = False
    signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def agreed(self, step: int, every: int) -> bool:
    """Whether to stop now. Processes compare notes only every ``every`` steps, as a
    collective each step would stall the host's run-ahead."""
    if jax.process_count() == 1:
      return self.requested
    if step % every:
      return False
    return bool(np.any(multihost_utils.process_allgather(np.array(self.requested))))
