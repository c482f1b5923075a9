"""Checkpoints through orbax-checkpoint: state, data position and config, saved together.

Each checkpoint ``OUT/checkpoints/<step>/`` holds three items:

  ``state``   the :class:`train.step.TrainState` (params, optimizer state, RNG, step,
              skipped-step count), sharded arrays written by every process;
  ``data``    the grain iterator state, JSON. The stream is the same global stream
              for every process count (``train.data.mixture``), so one state serves all
              processes and a run resumes on any number of them;
  ``config``  the :class:`train.config.TrainConfig`, JSON, checked on ``--resume``.

Saves are asynchronous (training goes on while the arrays are written) and atomic:
orbax writes to a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoints intact. A checkpoint that is there but
unreadable is moved to ``OUT/corrupt/`` and the previous one is used, with a warning.
A save that fails (a full disk, no permission) raises :class:`CheckpointSaveError` at the
next save, check or wait; the failed checkpoint is never renamed into place, so the
previous one stays the latest.
"""

import contextlib
import dataclasses
import logging
import pathlib
import re
import shutil
import time
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from jax.experimental import multihost_utils

from train.faults import RunFault
from train.peers import complete_checkpoints


def _without_orbax_tracebacks(record: logging.LogRecord) -> bool:
  """Drops orbax's log of a failed asynchronous save, traceback and all: the run reports
  the failure itself, in one line (:class:`CheckpointSaveError`)."""
  return not (record.exc_info and "orbax" in record.pathname)


class CheckpointSaveError(RunFault):
  """A checkpoint could not be written; the message names the directory and its free space."""


@dataclasses.dataclass
class Restored:
  step: int
  state: Any
  data_state: dict
  config: dict


class CheckpointStore:
  """Keep-last-N asynchronous checkpoints under ``OUT/checkpoints``."""

  def __init__(
    self,
    out_dir: pathlib.Path,
    keep: int,
    warn: Callable[[str], None] = print,
    read_only: bool = False,
  ):
    self.out_dir = pathlib.Path(out_dir).absolute()
    self.directory = self.out_dir / "checkpoints"
    self.warn = warn
    self.read_only = read_only
    options = ocp.CheckpointManagerOptions(
      max_to_keep=None if read_only else keep,
      create=not read_only,
      read_only=read_only,
      enable_async_checkpointing=True,
      cleanup_tmp_directories=not read_only,
    )
    self.manager = ocp.CheckpointManager(
      self.directory, options=options, item_names=("state", "data", "config")
    )
    self.saving: int | None = None
    absl_logging.get_absl_logger().addFilter(_without_orbax_tracebacks)

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, data_state: dict, config: dict) -> None:
    """Starts writing checkpoint ``step``; raises :class:`CheckpointSaveError` if this or
    an earlier save fails."""
    if step in self.manager.all_steps():
      return
    self.wait()  # orbax waits for the save in flight anyway; its failure is that step's
    with self._failures(step):
      self.manager.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=ocp.args.JsonSave(data_state),
          config=ocp.args.JsonSave(config),
        ),
        force=True,
      )
    self.saving = step

  def raise_if_failed(self) -> None:
    """:class:`CheckpointSaveError` if the save in flight has failed (cheap: no wait)."""
    with self._failures(self.saving):
      self.manager.check_for_errors()

  def wait(self) -> None:
    """Waits for the saves in flight; :class:`CheckpointSaveError` if one failed."""
    with self._failures(self.saving):
      self.manager.wait_until_finished()

  @contextlib.contextmanager
  def _failures(self, step: int | None):
    try:
      yield
    except CheckpointSaveError:
      raise
    except Exception as error:  # orbax and tensorstore raise many types for a failed write
      raise CheckpointSaveError(self._failure_message(step, error)) from None

  def _failure_message(self, step: int | None, error: Exception) -> str:
    text = str(error) or type(error).__name__
    os_error = re.search(r"([A-Z][A-Za-z ]+) \[os_error_code", text)
    reason = os_error.group(1) if os_error else text.splitlines()[0][:160]
    try:
      free = f"{shutil.disk_usage(self.directory).free / 1e9:.2f} GB free there"
    except OSError:
      free = "its free space unknown"
    complete = [s for s in self.completed_steps() if s != step]
    newest = f"is {complete[-1]}" if complete else "none"
    return (
      f"checkpoint {step} could not be written to {self.directory} ({reason}; {free}); "
      f"the newest complete checkpoint {newest}. Free space there or fix its "
      "permissions, then rerun with --resume."
    )

  def completed_steps(self) -> list[int]:
    """Steps whose checkpoints are complete on disk (orbax renames a checkpoint into place
    only once every item of every process is written)."""
    return complete_checkpoints(self.directory)

  def close(self) -> None:
    self.manager.close()

  def newest_config(self) -> dict:
    """The config of the newest checkpoint whose config is readable (``{}`` if none)."""
    for step in reversed(self.steps()):
      try:
        return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))[
          "config"
        ]
      except Exception:  # an unreadable checkpoint is reported by restore_latest
        continue
    return {}

  def restore(self, step: int, abstract_state) -> Restored:
    """Checkpoint ``step`` restored onto ``abstract_state``'s shardings.

    ``abstract_state`` is a tree of ``jax.ShapeDtypeStruct`` with ``sharding`` set,
    which may differ from the mesh the checkpoint was saved on.
    """
    items = self.manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=ocp.args.JsonRestore(),
        config=ocp.args.JsonRestore(),
      ),
    )
    return Restored(step, items["state"], items["data"], items["config"])

  def restore_latest(self, abstract_state) -> Restored | None:
    """The newest readable checkpoint; unreadable newer ones are set aside, with a warning."""
    found = self._newest_readable(lambda step: self.restore(step, abstract_state))
    return found[1] if found else None

  def _newest_readable(self, read):
    """``(step, read(step))`` of the newest checkpoint ``read`` can read; unreadable newer
    ones are set aside (moved to ``OUT/corrupt/`` unless read-only), with a warning."""
    for step in reversed(self.steps()):
      try:
        return step, read(step)
      except Exception as error:  # orbax raises many types for unreadable files
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        where = "skipping it"
        if not self.read_only:
          self._quarantine(step)
          where = f"moved it to {self.out_dir / 'corrupt'}"
        self.warn(
          f"warning: checkpoint {step} is unreadable ({type(error).__name__}: {reason}); "
          f"{where} and falling back to an earlier one."
        )
    return None

  def _quarantine(self, step: int) -> None:
    if jax.process_index() == 0:
      target = self.out_dir / "corrupt" / f"{step}-{int(time.time())}"
      target.parent.mkdir(parents=True, exist_ok=True)
      shutil.move(str(self.directory / str(step)), str(target))
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"quarantine checkpoint {step}")
    self.manager.reload()

  def restore_params(self, abstract_params, step: int | None = None) -> tuple[int, Any] | None:
    """``(step, params)`` of checkpoint ``step``, or of the newest readable one when ``step``
    is ``None`` (unreadable newer ones are set aside as :meth:`restore_latest` does);
    ``None`` when none is readable.

    Only the params' arrays are read, onto ``abstract_params``'s shardings: the optimizer
    state (for AdamW and Nexus two moments, twice the params' bytes) stays on disk.
    """

    def read(step: int):
      item = {"params": abstract_params}
      # A checkpointer of its own: the manager binds "state" to the handler it first
      # restores it with, and partial restore needs the PyTree handler where save() and
      # restore() use the standard one; through the manager, restore() would then fail.
      checkpointer = ocp.PyTreeCheckpointer()
      try:
        restored = checkpointer.restore(
          self.directory / str(step) / "state",
          args=ocp.args.PyTreeRestore(
            item,
            restore_args=ocp.checkpoint_utils.construct_restore_args(item),
            partial_restore=True,
          ),
        )
      finally:
        checkpointer.close()
      return restored["params"]

    if step is not None:
      return step, read(step)
    return self._newest_readable(read)
