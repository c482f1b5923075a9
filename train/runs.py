"""A run directory written by ``train.pretrain``, read back at one of its checkpoints.

``train.evaluate --checkpoint`` and ``train.export_hf --checkpoint`` accept a run directory
(its newest checkpoint), its ``checkpoints/`` folder, or one ``checkpoints/<step>`` folder.
The model is rebuilt from what the run recorded (its model config, or for runs before
that was recorded, its preset and vocabulary), the tokenizer from the run directory's
copy, checked against the hash the run recorded.
"""

import dataclasses
import pathlib
import sys

import jax

from models import LlamaConfig
from train import parallel
from train.build import Training, build_training
from train.checkpoints import CheckpointStore
from train.config import ConfigError, TrainConfig
from train.data.tokenizer import BYTES, Tokenizer, load_tokenizer


@dataclasses.dataclass
class SavedRun:
  """One checkpoint of a run, its params alone restored onto a one-device mesh.

  Attributes:
    directory: the run directory.
    step: the checkpoint's step.
    config: the run's :class:`train.config.TrainConfig`.
    record: everything the checkpoint recorded of the run (config, dataset, model).
    tokenizer: the tokenizer the run trained with.
    training: the rebuilt model and step (``training.model_config``, ``graphdef``).
    mesh: the mesh it is restored on.
    params: the checkpoint's params, a pure dict of arrays.
  """

  directory: pathlib.Path
  step: int
  config: TrainConfig
  record: dict
  tokenizer: Tokenizer
  training: Training
  mesh: jax.sharding.Mesh
  params: dict


def locate(path: pathlib.Path) -> tuple[pathlib.Path, int | None]:
  """(run directory, step or None for the newest) for any of the accepted paths."""
  path = path.absolute()
  if path.name.isdigit() and path.parent.name == "checkpoints":
    return path.parent.parent, int(path.name)
  if path.name == "checkpoints":
    return path.parent, None
  return path, None


def run_tokenizer(run_dir: pathlib.Path, dataset: dict | None) -> Tokenizer:
  """The tokenizer a run trained with: bytes, or its copy in the run directory."""
  if not dataset or dataset["tokenizer"]["kind"] == BYTES:
    return load_tokenizer(BYTES)
  recorded = dataset["tokenizer"]
  path = run_dir / recorded["file"]
  if not path.exists():
    raise ConfigError(
      f"--checkpoint {run_dir}: the run's tokenizer copy {path.name} is missing; "
      f"copy {recorded['source']} there."
    )
  tokenizer = load_tokenizer(path)
  if tokenizer.hash != recorded["hash"]:
    raise ConfigError(
      f"--checkpoint {run_dir}: {path.name} is not the tokenizer the run trained "
      f"with (hash differs); copy {recorded['source']} there."
    )
  return tokenizer


def recorded_model_config(record: dict) -> LlamaConfig | None:
  """The model config a run recorded (``None`` for runs that predate recording it)."""
  values = record.get("model_config")
  return LlamaConfig(**values) if values else None


def restore_run(
  path: pathlib.Path, step: int | None = None, flag: str = "--checkpoint"
) -> SavedRun:
  """The checkpoint at ``path`` (see the module docstring), or its run's checkpoint
  ``step``; raises ConfigError with the fix."""
  run_dir, step_in_path = locate(path)
  if step is not None and step_in_path is not None:
    raise ConfigError(f"--step {step} and {flag} {path} both name a step; give one.")
  step = step_in_path if step is None else step
  if not (run_dir / "checkpoints").is_dir():
    raise ConfigError(
      f"{flag} {path}: no checkpoints/ folder there; point at a run directory "
      "written by train.pretrain."
    )
  store = CheckpointStore(
    run_dir, keep=1_000_000, warn=lambda m: print(m, file=sys.stderr), read_only=True
  )
  steps = store.steps()
  if not steps:
    raise ConfigError(
      f"{flag} {path}: no checkpoint there ({store.directory} is empty); point "
      "at a run directory written by train.pretrain."
    )
  if step is not None and step not in steps:
    raise ConfigError(
      f"{flag} {path}: no checkpoint of step {step} (found steps {steps} in "
      f"{store.directory}); pick one of those."
    )
  record = store.newest_config()
  config = TrainConfig.from_dict(record)
  dataset = record.get("dataset")
  tokenizer = run_tokenizer(run_dir, dataset)
  mesh = parallel.make_mesh(parallel.parse_mesh("data=1", jax.device_count()), False)
  model_config = recorded_model_config(record)
  training = build_training(
    config,
    mesh,
    model_config=model_config,
    vocab_size=dataset["vocab_size"] if dataset and not model_config else None,
  )
  # The params alone: the optimizer state would take twice their memory, for nothing.
  restored = store.restore_params(training.abstract_state.params, step)
  store.close()
  if restored is None:
    raise ConfigError(f"{flag} {path}: no readable checkpoint.")
  step, params = restored
  return SavedRun(run_dir, step, config, record, tokenizer, training, mesh, params)
