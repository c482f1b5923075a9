"""The bfloat16 fidelity study's command: one outer step per preset and precision mode.

python -m studies.bf16_fidelity [--sizes tiny,mini,demo,130m] [--batch 4 --seq-len 128]
python -m studies.bf16_fidelity --report-only   # results.md and fidelity.png from results.json
"""

import argparse
import json
import pathlib
import time

import jax

from models import get_preset
from studies.bf16_fidelity.fidelity import domain_microbatches, measure_size, write_results

RESULTS = pathlib.Path(__file__).parent / "results"


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
    prog="python -m studies.bf16_fidelity", description=__doc__.split("\n\n")[0]
  )
  parser.add_argument("--sizes", default="tiny,mini,demo,130m")
  parser.add_argument("--batch", type=int, default=4, help="sequences per micro-batch")
  parser.add_argument("--seq-len", type=int, default=128)
  parser.add_argument("--inner-lr", type=float, default=0.01)
  parser.add_argument(
    "--gamma-scales", default="3,10", help="extra multiples of --inner-lr for the bf16-compute mode"
  )
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
  parser.add_argument(
    "--report-only",
    action="store_true",
    help="no measurement: results.md and fidelity.png from OUT/results.json",
  )
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.report_only:
    path = args.out / "results.json"
    if not path.exists():
      raise SystemExit(f"error: no {path}; run the study (without --report-only) first.")
    print(write_results(args.out, json.loads(path.read_text())))
    return 0
  names = [name.strip() for name in args.sizes.split(",") if name.strip()]
  try:
    for name in names:
      get_preset(name)
    gammas = [args.inner_lr] + [args.inner_lr * float(x) for x in args.gamma_scales.split(",") if x]
  except ValueError as error:
    raise SystemExit(
      f"error: {error} (--sizes takes preset names, --gamma-scales numbers)"
    ) from None
  tokens = domain_microbatches(args.batch, args.seq_len, args.seed)
  print(
    f"jax {jax.__version__} on {jax.default_backend()}; K = {tokens.shape[0]} micro-batches "
    f"(one per domain) of {args.batch} x {args.seq_len} tokens; gamma {gammas}",
    flush=True,
  )
  args.out.mkdir(parents=True, exist_ok=True)
  command = "python -m studies.bf16_fidelity " + " ".join(
    f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("out", "report_only")
  )
  sizes = []
  for name in names:
    started = time.perf_counter()
    print(f"{name}:", flush=True)
    sizes.append(measure_size(name, tokens, args, gammas))
    print(
      f"  {sizes[-1]['params'] / 1e6:.2f}M params, gamma/sqrt(N) = "
      f"{sizes[-1]['per_element_step']:.2e} against a median bf16 spacing of "
      f"{sizes[-1]['median_bf16_spacing']:.2e} ({time.perf_counter() - started:.0f} s)",
      flush=True,
    )
    # Written after every size, so that a larger size running out of memory keeps the rest.
    result = {
      "command": command,
      "jax": jax.__version__,
      "backend": jax.default_backend(),
      "sizes": sizes,
    }
    table = write_results(args.out, result)
  print("\n" + table)
  print(f"\nwrote {args.out}/results.md, results.json, fidelity.png")
  return 0
