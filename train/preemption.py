"""SIGTERM as a request to stop: a preempted run saves a checkpoint and exits 0.

On one process the run's own handler notes the signal. On several, ``jax.distributed``
starts JAX's preemption service, whose notifier replaces that handler: any process's
SIGTERM reaches the service, which picks the step after the furthest any process has
reached, and every process learns it there (``reached_preemption_sync_point``), so all of
them save the same step.
"""

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
    """Whether to stop after ``step``; called after every step.

    Without JAX's preemption service (``jax_enable_preemption_service`` off) processes
    compare notes every ``every`` steps instead, as a collective each step would stall
    the host's run-ahead.
    """
    if jax.process_count() == 1:
      return self.requested
    if jax.config.jax_enable_preemption_service:
      return multihost_utils.reached_preemption_sync_point(step)
    if step % every:
      return False
    return bool(np.any(multihost_utils.process_allgather(np.array(self.requested))))
