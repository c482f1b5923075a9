"""The confirmatory study's command: trains the 32 runs (resumably), then writes the report.

python -m studies.confirm                   # the study (32 runs) and its report
python -m studies.confirm --runs 1 --jobs 1   # one run alone, to time it
python -m studies.confirm --report-only     # tables and plots from finished runs
python -m studies.confirm --quick           # the same on the tiny preset, ~2 min
"""

import argparse
import os
import pathlib

from studies.confirm.study import (
  FULL,
  QUICK,
  QUICK_SEEDS,
  SEEDS,
  check_no_repeats,
  chinchilla_size,
  default_jobs,
  parameter_count,
  plots,
  read_results,
  remove_stale_locks,
  report,
  run_order,
  run_workers,
  work,
)
from studies.replication.study import provenance, read_provenance, write_provenance

RESULTS = pathlib.Path("studies/confirm/results")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m studies.confirm", description=__doc__.split("\n")[0]
  )
  parser.add_argument("--quick", action="store_true", help="tiny preset, 2 seeds, 24 steps")
  parser.add_argument(
    "--out",
    type=pathlib.Path,
    help=f"results directory (default {RESULTS}, with --quick {RESULTS}-quick)",
  )
  parser.add_argument(
    "--jobs", type=int, help="runs trained side by side (default 2 on a CPU with 2+ cores)"
  )
  parser.add_argument("--runs", type=int, help="stop each worker after this many new runs")
  parser.add_argument(
    "--data",
    type=pathlib.Path,
    help="a token cache with prose, code and math (python -m train.data.prepare); "
    "default: the built-in corpus",
  )
  parser.add_argument("--report-only", action="store_true", help="no training")
  parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.jobs is not None and args.jobs < 1 or args.runs is not None and args.runs < 1:
    parser.error("--jobs and --runs take an integer >= 1")
  out = args.out or pathlib.Path(f"{RESULTS}{'-quick' if args.quick else ''}")
  size, parameters = chinchilla_size(FULL) if not args.quick else (QUICK, parameter_count("tiny"))
  order = run_order(QUICK_SEEDS if args.quick else SEEDS)
  (out / "runs").mkdir(parents=True, exist_ok=True)
  if args.worker is not None:
    return work(size, out, order, args.worker, args.runs, args.data)
  if not args.report_only:
    epochs = check_no_repeats(size, args.data)
    print(
      f"{size.model}: {parameters:,} parameters, {size.steps} steps, "
      f"{size.steps * size.global_batch * size.seq_len:,} tokens; epochs "
      + ", ".join(f"{d} {e:.3f}" for d, e in epochs.items())
    )
    remove_stale_locks(out)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    args.jobs = args.jobs or default_jobs(cores)
    if args.jobs > cores:
      parser.error(f"--jobs {args.jobs} needs that many CPU cores; this process may use {cores}")
    status = (
      run_workers(args, order, size, out)
      if args.jobs > 1
      else work(size, out, order, 0, args.runs, args.data)
    )
    if status:
      return status
    write_provenance(out, provenance())
  results = read_results(out, order)
  if "adamw" not in results:
    print("no AdamW run finished yet: nothing to report")
    return 0
  command = " ".join(
    ["python -m studies.confirm"]
    + (["--quick"] if args.quick else [])
    + ([f"--data {args.data}"] if args.data else [])
  )
  date = read_provenance(out)["date"]
  text, analysis = report(results, size, parameters, out, command, date)
  plots(results, analysis, out)
  print(text)
  return 0
