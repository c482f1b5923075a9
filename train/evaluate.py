"""Score a saved checkpoint on any UTF-8 text file.

  python -m train.evaluate --checkpoint runs/demo --text-file my_heldout.txt [--name mine]
  python -m train.evaluate --hf exported/ --text-file my_heldout.txt [--json]

``--checkpoint`` is a run directory (its newest checkpoint), its ``checkpoints/`` folder,
or one ``checkpoints/<step>`` folder. The text is tokenized with the run's tokenizer (the
copy in the run directory, checked against the hash the run recorded) and scored as one
document, every token a target. Prints the loss in nats per token and bits per byte,

  bpb = loss * tokens / (bytes * ln 2),

``bytes`` being the file's UTF-8 bytes, so runs with different tokenizers compare;
``--json`` prints ``loss``, ``tokens``, ``bytes`` and ``bpb`` as one object.

``--hf`` scores a Hugging Face checkpoint folder (``train.export_hf``'s, or any Llama's)
through ``transformers`` and PyTorch instead, in the same windows: an independent check
of ``--checkpoint`` scoring, which must give the same loss for an exported run.
"""

import argparse
import json
import math
import pathlib
import sys

import numpy as np
from absl import logging as absl_logging

from models import get_preset
from models.hf_llama import HFCheckpointError
from train.config import ConfigError
from train.data.tokenizer import TokenizerError
from train.evaluation import Evaluator, text_eval_set, windows_of
from train.hf import read_checkpoint
from train.runs import restore_run

# Window of --hf scoring for checkpoints that are not exports of a run (whose training
# length is recorded): a model's full context (131,072 for Llama 3.1) would not fit a CPU.
DEFAULT_HF_WINDOW = 2048


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m train.evaluate", description=__doc__.split("\n\n")[0]
  )
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument(
    "--checkpoint",
    type=pathlib.Path,
    help="run directory, its checkpoints/ folder, or checkpoints/<step>",
  )
  source.add_argument(
    "--hf", type=pathlib.Path, help="Hugging Face checkpoint folder, scored through transformers"
  )
  parser.add_argument("--text-file", type=pathlib.Path, required=True, help="UTF-8 text to score")
  parser.add_argument("--name", default=None, help="label in the output (default: file name)")
  parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
  parser.add_argument(
    "--seq-len",
    type=int,
    default=None,
    help="--hf only: window length (default: the exporting run's, else the "
    f"model's max_position_embeddings up to {DEFAULT_HF_WINDOW})",
  )
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  args = parser.parse_args(argv)
  absl_logging.set_verbosity(absl_logging.ERROR)  # orbax notes that the directory is read-only
  try:
    if args.batch_size < 1:
      raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}.")
    if args.seq_len is not None and (args.hf is None or args.seq_len < 1):
      raise ConfigError(
        "--seq-len applies to --hf only, and must be >= 1; a --checkpoint is "
        "scored at its run's sequence length."
      )
    result = evaluate_hf(args) if args.hf is not None else evaluate(args)
  except (ConfigError, TokenizerError, HFCheckpointError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  if args.json:
    print(json.dumps(result))
  else:
    print(
      f"{result['name']}: {result['loss']:.4f} nats/token, {result['bpb']:.4f} bits/byte over "
      f"{result['tokens']:,} tokens and {result['bytes']:,} bytes (checkpoint step "
      f"{result['step']}, {result['model']}, {result['tokenizer']} tokenizer)"
    )
  return 0


def read_text(path: pathlib.Path) -> str:
  try:
    return path.read_text(encoding="utf-8")
  except FileNotFoundError:
    raise ConfigError(f"--text-file {path} does not exist.") from None
  except UnicodeDecodeError as error:
    raise ConfigError(
      f"--text-file {path} is not UTF-8 ({error.reason} at byte "
      f"{error.start}); convert it, e.g. with iconv -t utf-8."
    ) from None


def with_bpb(scores: dict, text: str) -> dict:
  scores["bytes"] = len(text.encode("utf-8"))
  scores["bpb"] = scores["loss"] * scores["tokens"] / (scores["bytes"] * math.log(2))
  return scores


def evaluate(args) -> dict:
  """Scores through this repository's model: a ``--checkpoint`` of ``train.pretrain``."""
  text = read_text(args.text_file)
  run = restore_run(args.checkpoint)
  try:
    eval_set = text_eval_set(
      text, run.config.seq_len, args.name or args.text_file.name, run.tokenizer
    )
  except ValueError as error:
    raise ConfigError(f"--text-file {args.text_file}: {error}") from None
  scores = Evaluator(run.training.graphdef, run.mesh, args.batch_size).losses(run.params, eval_set)
  return {
    "name": eval_set.name,
    "step": run.step,
    "model": run.config.model,
    "tokenizer": run.tokenizer.kind,
    **with_bpb(scores, text),
  }


def evaluate_hf(args) -> dict:
  """Scores through ``transformers``: an independent check of ``evaluate``.

  The text is tokenized by ``AutoTokenizer`` and follows the model's begin-of-document
  token (the end-of-document token of an exported run), cut into the same windows as
  ``evaluate``'s (``train.evaluation.windows_of``) and scored by
  ``AutoModelForCausalLM`` in float32 on the CPU.
  """
  text = read_text(args.text_file)
  directory = args.hf.absolute()
  checkpoint = read_checkpoint(directory, get_preset("tiny"))  # one-line errors for a bad folder
  try:  # optional: only --hf scores through transformers and PyTorch
    import torch
    import transformers
  except ImportError as error:
    raise ConfigError(
      f"--hf needs transformers and PyTorch ({error.name} is not installed); "
      "run `source scripts/env.sh train,bench` or pip install transformers torch."
    ) from None
  try:
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
  except Exception as error:  # transformers raises OSError, ValueError and its own types
    reason = (
      str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    )
    raise ConfigError(f"--hf {args.hf}: transformers cannot load it ({reason}).") from None
  model.eval()
  seq_len = args.seq_len or checkpoint.metadata.get(
    "seq_len", min(model.config.max_position_embeddings, DEFAULT_HF_WINDOW)
  )
  start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
  ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]  # windowed below
  stream = np.array([start, *ids], np.int64)
  try:
    windows, mask = windows_of(stream, seq_len)
  except ValueError as error:
    raise ConfigError(f"--text-file {args.text_file}: {error}") from None
  nats, count = 0.0, 0.0
  with torch.no_grad():
    for first in range(0, len(windows), args.batch_size):
      batch = torch.from_numpy(windows[first : first + args.batch_size].astype(np.int64))
      weights = torch.from_numpy(mask[first : first + args.batch_size]).double()
      log_probs = torch.log_softmax(model(batch[:, :-1]).logits.float(), dim=-1)
      target = log_probs.gather(-1, batch[:, 1:, None])[..., 0].double()
      nats -= float((target * weights).sum())
      count += float(weights.sum())
  scores = {"loss": nats / count, "tokens": int(count)}
  return {
    "name": args.name or args.text_file.name,
    "step": checkpoint.metadata.get("step"),
    "model": f"hf:{directory}",
    "tokenizer": type(tokenizer).__name__,
    **with_bpb(scores, text),
  }


if __name__ == "__main__":
  sys.exit(main())
