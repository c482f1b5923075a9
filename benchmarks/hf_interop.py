"""Hugging Face export at the paper's sizes: exactness, time and size.

  python -m benchmarks.hf_interop [--presets demo,130m,520m] [--seq-len 256] \
      [--out benchmarks/out/hf_interop]

For each preset: random weights (every tensor, norm scales included), exported with
``train.hf.write_checkpoint`` (float32 and bfloat16), loaded by transformers'
``LlamaForCausalLM`` on the CPU, and compared with the Flax model's float32 logits on the
same tokens; then read back (``train.hf.read_checkpoint``) and written again, which must
reproduce every tensor bit for bit. Writes ``results.json`` and ``results.md`` to ``--out``
(the committed ones in ``benchmarks/hf_interop/`` with ``--out benchmarks/hf_interop``).
"""

import argparse
import json
import pathlib
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.common import add_out_flag, write_json
from models import Llama, get_preset
from train.data.tokenizer import ByteTokenizer
from train.hf import read_checkpoint, write_checkpoint


def random_params(config, seed: int = 0) -> dict:
  """A model's params (NumPy) with every tensor random: norm scales too, so that their
  mapping shows in the logits."""
  model = Llama(config, rngs=nnx.Rngs(seed))
  params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  rng = np.random.default_rng(seed)
  for norm in (
    params["blocks"]["attention_norm"],
    params["blocks"]["mlp_norm"],
    params["final_norm"],
  ):
    norm["scale"] = (1 + 0.3 * rng.standard_normal(norm["scale"].shape)).astype(np.float32)
  return params


def measure(preset: str, seq_len: int, work: pathlib.Path) -> dict:
  # optional: PyTorch (the bench extra, absent on Python 3.12) loads only when measuring.
  import torch
  import transformers
  from safetensors.numpy import load_file

  # float32 compute on both sides: the comparison is of the weights' mapping.
  config = get_preset(preset, compute_dtype="float32", remat="none")
  params = random_params(config)
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0))))
  result = {
    "preset": preset,
    "layers": config.num_layers,
    "hidden": config.hidden_dim,
    "parameters": int(sum(x.size for x in jax.tree.leaves(params))),
    "seq_len": seq_len,
  }
  for dtype in ("float32", "bfloat16"):
    start = time.perf_counter()
    folder = write_checkpoint(work / f"{preset}-{dtype}", params, config, ByteTokenizer(), dtype)
    result[f"export_seconds_{dtype}"] = round(time.perf_counter() - start, 2)
    result[f"megabytes_{dtype}"] = round((folder / "model.safetensors").stat().st_size / 1e6, 1)

  folder = work / f"{preset}-float32"
  tokens = np.random.default_rng(1).integers(0, 257, (1, seq_len))
  start = time.perf_counter()
  ours = np.asarray(
    jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))(
      jax.tree.map(jnp.asarray, params), jnp.asarray(tokens)
    )
  )
  result["flax_forward_seconds"] = round(time.perf_counter() - start, 2)
  start = time.perf_counter()
  model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
  result["transformers_load_seconds"] = round(time.perf_counter() - start, 2)
  with torch.no_grad():
    theirs = model(torch.from_numpy(tokens)).logits.numpy()
  result["max_abs_logit_difference"] = float(np.abs(ours - theirs).max())
  result["max_relative_logit_difference"] = float(
    np.abs(ours - theirs).max() / np.abs(theirs).max()
  )

  back = read_checkpoint(folder, get_preset(preset))
  again = write_checkpoint(
    work / f"{preset}-again", back.params(), back.model_config, back.tokenizer
  )
  first, second = (
    load_file(str(folder / "model.safetensors")),
    load_file(str(again / "model.safetensors")),
  )
  result["round_trip_bit_exact"] = sorted(first) == sorted(second) and all(
    np.array_equal(first[name], second[name]) for name in first
  )
  return result


def markdown(results: list[dict], command: str) -> str:
  lines = [
    f"Command: `{command}`",
    "",
    "| preset | layers x hidden | params | float32 MB | export s (f32 / bf16) | "
    "transformers load s | max rel. logit diff | round trip bit-exact |",
    "|---|---|---:|---:|---:|---:|---:|---|",
  ]
  for r in results:
    lines.append(
      f"| {r['preset']} | {r['layers']} x {r['hidden']} | {r['parameters'] / 1e6:.1f}M | "
      f"{r['megabytes_float32']} | {r['export_seconds_float32']} / "
      f"{r['export_seconds_bfloat16']} | {r['transformers_load_seconds']} | "
      f"{r['max_relative_logit_difference']:.1e} | {r['round_trip_bit_exact']} |"
    )
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.hf_interop", description=__doc__.split("\n\n")[0]
  )
  parser.add_argument("--presets", default="demo,130m,520m")
  parser.add_argument("--seq-len", type=int, default=256)
  add_out_flag(parser, "hf_interop")
  args = parser.parse_args(argv)
  flags = sys.argv[1:] if argv is None else argv
  command = " ".join(["python -m benchmarks.hf_interop", *flags])
  results = []
  with tempfile.TemporaryDirectory() as work:
    for preset in args.presets.split(","):
      results.append(measure(preset, args.seq_len, pathlib.Path(work)))
      print(json.dumps(results[-1]), flush=True)
  write_json(
    args.out / "results.json",
    {"command": command, "date": time.strftime("%Y-%m-%d"), "results": results},
  )
  text = markdown(results, command)
  (args.out / "results.md").write_text(text)
  print(text)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
