"""The second-order check's command: the table of docs/math.md and the seed sweep.

  python -m studies.second_order               # seed 1, then seeds 0-24
  python -m studies.second_order --seeds 0     # seed 1 only
  python -m studies.second_order --report-only # results.md from results/results.json
The last line of output is one JSON object, also written to OUT/results.json.
"""

import argparse
import json
import pathlib
import time

from studies.second_order.check import report_text, run

RESULTS = pathlib.Path(__file__).parent / "results"
DEFAULT_SEEDS = 25


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
    prog="python -m studies.second_order", description=__doc__.splitlines()[0]
  )
  parser.add_argument(
    "--seeds",
    type=int,
    default=DEFAULT_SEEDS,
    help="sweep seeds 0..SEEDS-1 (0: the seed-1 table only)",
  )
  parser.add_argument("--out", type=pathlib.Path, default=RESULTS, help=f"default {RESULTS}")
  parser.add_argument(
    "--report-only", action="store_true", help="no computation: results.md from OUT/results.json"
  )
  args = parser.parse_args(argv)
  if args.seeds < 0:
    parser.error("--seeds must be >= 0")
  return args


def write_report(out: pathlib.Path, result: dict) -> str:
  """``results.md``: the command that ``result`` came from, then its report."""
  seeds = len(result.get("sweep", {}))
  command = "python -m studies.second_order" + (
    "" if seeds == DEFAULT_SEEDS else f" --seeds {seeds}"
  )
  text = report_text(result)
  (out / "results.md").write_text(f"Command: `{command}` ({result['seconds']} s).\n\n{text}\n")
  return text


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.report_only:
    path = args.out / "results.json"
    if not path.exists():
      raise SystemExit(f"error: no {path}; run the check (without --report-only) first.")
    result = json.loads(path.read_text())
    print(write_report(args.out, result))
    print(json.dumps(result))
    return 0
  start = time.perf_counter()
  result = run(args.seeds)
  result["seconds"] = round(time.perf_counter() - start, 1)
  args.out.mkdir(parents=True, exist_ok=True)
  (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
  print(write_report(args.out, result))
  print(json.dumps(result))
  return 0
