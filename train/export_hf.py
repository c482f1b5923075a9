"""Export a run's checkpoint as a Hugging Face ``transformers`` Llama folder.

  python -m train.export_hf --checkpoint runs/demo --out hf/demo [--step N] [--dtype bfloat16]

``--checkpoint`` is a run directory (its newest checkpoint, or ``--step N``), its
``checkpoints/`` folder, or one ``checkpoints/<step>`` folder. ``--out`` then holds
``config.json`` (transformers' ``LlamaConfig``), ``model.safetensors`` and the run's
tokenizer (``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``),
which ``AutoModelForCausalLM.from_pretrained(OUT)`` and ``AutoTokenizer.from_pretrained(OUT)``
load with nothing else; lm-evaluation-harness reads it as ``--model hf --model_args
pretrained=OUT``. Only NumPy and ``safetensors`` write it: no torch is needed.
The weights are cast to ``--dtype`` (float32, the default, exports them exactly).
"""

import argparse
import pathlib
import sys

import jax
from absl import logging as absl_logging

from models.hf_llama import HFCheckpointError
from train.config import ConfigError
from train.data.tokenizer import TokenizerError
from train.hf import EXPORT_DTYPES, write_checkpoint
from train.runs import restore_run


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m train.export_hf", description=__doc__.split("\n\n")[0]
  )
  parser.add_argument(
    "--checkpoint",
    type=pathlib.Path,
    required=True,
    help="run directory, its checkpoints/ folder, or checkpoints/<step>",
  )
  parser.add_argument("--out", type=pathlib.Path, required=True, help="folder to write")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
  parser.add_argument(
    "--dtype", default="float32", choices=EXPORT_DTYPES, help="dtype of the exported weights"
  )
  args = parser.parse_args(argv)
  absl_logging.set_verbosity(absl_logging.ERROR)  # orbax notes that the directory is read-only
  try:
    run = restore_run(args.checkpoint, args.step)
    params = jax.device_get(run.params)
    metadata = {
      "run": str(run.directory),
      "step": run.step,
      "seq_len": run.config.seq_len,
      "optimizer": run.config.optimizer,
      "model_preset": run.config.model,
      "tokenizer_hash": run.tokenizer.hash,
    }
    out = write_checkpoint(
      args.out, params, run.training.model_config, run.tokenizer, args.dtype, metadata
    )
  except (ConfigError, TokenizerError, HFCheckpointError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  except OSError as error:
    print(
      f"error: cannot write --out {args.out} ({error.strerror}); choose a folder you can write to.",
      file=sys.stderr,
    )
    return 2
  size = sum(p.stat().st_size for p in out.iterdir())
  print(
    f"wrote {out}: step {run.step} of {run.directory}, {run.training.model_config.num_layers} "
    f"layers, vocab {run.training.model_config.vocab_size}, {args.dtype}, "
    f"{run.tokenizer.kind} tokenizer, {size / 1e6:.1f} MB"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
