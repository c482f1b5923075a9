"""The command line of ``python -m train.pretrain``, as a library.

``train.pretrain`` parses its flags here, and ``train.compare``, which passes every flag it
does not know through to both of its runs, reads them here too: neither imports the other's
command line. One flag per ``TrainConfig`` field, then the run's own flags.
"""

import argparse
import dataclasses
import pathlib
import typing

from models.hf_llama import HFCheckpointError
from train.config import ConfigError, TrainConfig
from train.data import sources
from train.data.mixture import MixtureError
from train.data.spec import DataError
from train.data.tokenizer import TokenizerError
from train.peers import DEFAULT_PEER_TIMEOUT, PEER_LOST_EXIT
from train.presets import RUN_PRESETS, get_run_preset

USER_ERRORS = (
  ConfigError,
  MixtureError,
  DataError,
  TokenizerError,
  HFCheckpointError,
  sources.SourceUnavailable,
)


def build_parser(description: str = "") -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m train.pretrain",
    description=description,
    formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  parser.add_argument("--preset", default="demo", help=f"run preset: {', '.join(RUN_PRESETS)}")
  for field in dataclasses.fields(TrainConfig):
    kind = field.type
    if kind == (float | None):
      kind = float
    elif typing.get_origin(kind) is typing.Literal:  # checked by TrainConfig, one-line errors
      kind = str
    parser.add_argument(
      "--" + field.name.replace("_", "-"),
      type=kind,
      default=None,
      help=f"(preset's value if not given; TrainConfig.{field.name})",
    )
  parser.add_argument(
    "--resume", action="store_true", help="continue from the newest readable checkpoint in --out"
  )
  parser.add_argument("--no-progress", action="store_true", help="no progress bar")
  parser.add_argument(
    "--compilation-cache",
    default=None,
    help="XLA's persistent compilation cache: a directory, or 'none' (default: "
    "$JAX_COMPILATION_CACHE_DIR, else xla/ in $NEXUS_CORPUS_DIR or ~/.cache/nexus-optax)",
  )
  group = parser.add_argument_group("multi-host")
  group.add_argument("--coordinator-address", default=None, help="HOST:PORT of process 0")
  group.add_argument("--num-processes", type=int, default=None)
  group.add_argument("--process-id", type=int, default=None)
  group.add_argument(
    "--distributed",
    action="store_true",
    help="call jax.distributed.initialize() with no arguments (TPU pods, SLURM)",
  )
  group.add_argument(
    "--peer-timeout",
    type=int,
    default=DEFAULT_PEER_TIMEOUT,
    help="seconds after which a silent process counts as lost: every other one then exits "
    f"with one line (status {PEER_LOST_EXIT}); also JAX's heartbeat timeout",
  )
  return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
  overrides = {
    field.name: getattr(args, field.name)
    for field in dataclasses.fields(TrainConfig)
    if getattr(args, field.name) is not None
  }
  if (overrides.get("data") or overrides.get("init_from_hf")) and "tokenizer" not in overrides:
    overrides["tokenizer"] = ""  # the cache's or the checkpoint's, not the preset's
  if overrides.get("init_from_hf"):  # resumable from any working directory
    overrides["init_from_hf"] = str(pathlib.Path(overrides["init_from_hf"]).absolute())
  return get_run_preset(args.preset, **overrides)
