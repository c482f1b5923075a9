"""Score a saved checkpoint on any UTF-8 text file.

  python -m train.evaluate --checkpoint runs/demo --text-file my_heldout.txt [--name mine]

``--checkpoint`` is a run directory (its newest checkpoint), its ``checkpoints/`` folder,
or one ``checkpoints/<step>`` folder. The text is tokenized with the run's tokenizer (the
copy in the run directory, checked against the hash the run recorded) and scored as one
document, every token a target. Prints the loss in nats per token and bits per byte,

  bpb = loss * tokens / (bytes * ln 2),

``bytes`` being the file's UTF-8 bytes, so runs with different tokenizers compare;
``--json`` prints ``loss``, ``tokens``, ``bytes`` and ``bpb`` as one object.
"""

import argparse
import json
import math
import pathlib
import sys

import jax
from absl import logging as absl_logging

from train import parallel
from train.build import build_training
from train.checkpoints import CheckpointStore
from train.config import ConfigError, TrainConfig
from train.data.tokenizer import BYTES, Tokenizer, TokenizerError, load_tokenizer
from train.evaluation import Evaluator, text_eval_set


def locate(path: pathlib.Path) -> tuple[pathlib.Path, int | None]:
  """(run directory, step or None for the newest) for any of the accepted paths."""
  path = path.absolute()
  if path.name.isdigit() and path.parent.name == "checkpoints":
    return path.parent.parent, int(path.name)
  if path.name == "checkpoints":
    return path.parent, None
  return path, None


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.split("\n\n")[0])
  parser.add_argument("--checkpoint", type=pathlib.Path, required=True,
                      help="run directory, its checkpoints/ folder, or checkpoints/<step>")
  parser.add_argument("--text-file", type=pathlib.Path, required=True, help="UTF-8 text to score")
  parser.add_argument("--name", default=None, help="label in the output (default: file name)")
  parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  args = parser.parse_args(argv)
  absl_logging.set_verbosity(absl_logging.ERROR)  # orbax notes that the directory is read-only
  try:
    result = evaluate(args)
  except (ConfigError, TokenizerError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  if args.json:
    print(json.dumps(result))
  else:
    print(f"{result['name']}: {result['loss']:.4f} nats/token, {result['bpb']:.4f} bits/byte over "
          f"{result['tokens']:,} tokens and {result['bytes']:,} bytes (checkpoint step "
          f"{result['step']}, {result['model']}, {result['tokenizer']} tokenizer)")
  return 0


def evaluate(args) -> dict:
  run_dir, step = locate(args.checkpoint)
  try:
    text = args.text_file.read_text(encoding="utf-8")
  except FileNotFoundError:
    raise ConfigError(f"--text-file {args.text_file} does not exist.") from None
  except UnicodeDecodeError as error:
    raise ConfigError(f"--text-file {args.text_file} is not UTF-8 ({error.reason} at byte "
                      f"{error.start}); convert it, e.g. with iconv -t utf-8.") from None
  if args.batch_size < 1:
    raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}.")
  if not (run_dir / "checkpoints").is_dir():
    raise ConfigError(f"--checkpoint {args.checkpoint}: no checkpoints/ folder there; point at a "
                      "run directory written by train.pretrain.")
  store = CheckpointStore(run_dir, keep=1_000_000, warn=lambda m: print(m, file=sys.stderr),
                          read_only=True)
  steps = store.steps()
  if not steps or (step is not None and step not in steps):
    raise ConfigError(f"--checkpoint {args.checkpoint}: no checkpoint there (found steps {steps} in "
                      f"{store.directory}); point at a run directory written by train.pretrain.")
  saved = store.newest_config()
  config = TrainConfig.from_dict(saved)
  dataset = saved.get("dataset")
  tokenizer = run_tokenizer(run_dir, dataset)
  mesh = parallel.make_mesh(parallel.parse_mesh("data=1", jax.device_count()), False)
  training = build_training(config, mesh, vocab_size=dataset["vocab_size"] if dataset else None)
  if step is not None:
    restored = store.restore(step, training.abstract_state)
  else:
    restored = store.restore_latest(training.abstract_state)
  if restored is None:
    raise ConfigError(f"--checkpoint {args.checkpoint}: no readable checkpoint.")
  try:
    eval_set = text_eval_set(text, config.seq_len, args.name or args.text_file.name, tokenizer)
  except ValueError as error:
    raise ConfigError(f"--text-file {args.text_file}: {error}") from None
  scores = Evaluator(training.graphdef, mesh, args.batch_size).losses(restored.state.params, eval_set)
  store.close()
  scores["bytes"] = len(text.encode("utf-8"))
  scores["bpb"] = scores["loss"] * scores["tokens"] / (scores["bytes"] * math.log(2))
  return {"name": eval_set.name, "step": restored.step, "model": config.model,
          "tokenizer": tokenizer.kind, **scores}


def run_tokenizer(run_dir: pathlib.Path, dataset: dict | None) -> Tokenizer:
  """The tokenizer a run trained with: bytes, or its copy in the run directory."""
  if not dataset or dataset["tokenizer"]["kind"] == BYTES:
    return load_tokenizer(BYTES)
  recorded = dataset["tokenizer"]
  path = run_dir / recorded["file"]
  if not path.exists():
    raise ConfigError(f"--checkpoint {run_dir}: the run's tokenizer copy {path.name} is missing; "
                      f"copy {recorded['source']} there.")
  tokenizer = load_tokenizer(path)
  if tokenizer.hash != recorded["hash"]:
    raise ConfigError(f"--checkpoint {run_dir}: {path.name} is not the tokenizer the run trained "
                      f"with (hash differs); copy {recorded['source']} there.")
  return tokenizer


if __name__ == "__main__":
  sys.exit(main())
