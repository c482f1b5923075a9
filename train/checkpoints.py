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
"""

import dataclasses
import pathlib
import shutil
import time
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils


@dataclasses.dataclass
class Restored:
  step: int
  state: Any
  data_state: dict
  config: dict


class CheckpointStore:
  """Keep-last-N asynchronous checkpoints under ``OUT/checkpoints``."""

  def __init__(self, out_dir: pathlib.Path, keep: int, warn: Callable[[str], None] = print):
    self.out_dir = pathlib.Path(out_dir).absolute()
    self.directory = self.out_dir / "checkpoints"
    self.warn = warn
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=True,
                                           cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data", "config"))

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, data_state: dict, config: dict) -> None:
    if step in self.manager.all_steps():
      return
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        config=ocp.args.JsonSave(config)), force=True)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()

  def read_config(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

  def restore_latest(self, abstract_state) -> Restored | None:
    """The newest readable checkpoint, restored onto ``abstract_state``'s shardings.

    ``abstract_state`` is a tree of ``jax.ShapeDtypeStruct`` with ``sharding`` set,
    which may differ from the mesh the checkpoint was saved on.
    """
    for step in reversed(self.steps()):
      try:
        items = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore(),
            config=ocp.args.JsonRestore()))
        return Restored(step, items["state"], items["data"], items["config"])
      except Exception as error:  # orbax raises many types for unreadable files
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        self._quarantine(step)
        self.warn(f"warning: checkpoint {step} is unreadable ({type(error).__name__}: {reason}); "
                  f"moved it to {self.out_dir / 'corrupt'} and falling back to an earlier one.")
    return None

  def _quarantine(self, step: int) -> None:
    if jax.process_index() == 0:
      target = self.out_dir / "corrupt" / f"{step}-{int(time.time())}"
      target.parent.mkdir(parents=True, exist_ok=True)
      shutil.move(str(self.directory / str(step)), str(target))
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"quarantine checkpoint {step}")
    self.manager.reload()
