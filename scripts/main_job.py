"""The main job as a new user meets it: a fresh clone, `bash scripts/main.sh`, timed by part.

  python -m scripts.main_job [--warm-data] [--out scripts/main_job] [-- COMPARE FLAGS]

Clones this repository's committed HEAD into a temporary directory and runs the README's
command there, `bash scripts/main.sh` (a new ``.venv``, then ``python -m train.compare``),
streaming its output. By default the built-in corpus, its BPE tokenizer, its token cache
and XLA's compilation cache start empty too (``NEXUS_CORPUS_DIR`` points into the
clone), so the job fetches the corpus's sources from the package registry, builds,
trains the tokenizer and prepares, as on a new machine; ``--warm-data`` keeps this
machine's ``~/.cache/nexus-optax`` instead. pip's own download cache is the machine's.

Where the time goes: the environment (``[env] ready in N s``), the data (corpus build,
tokenizer training and prepare: before the runs under the default ``--jobs 2``, in the
first run's ``data`` under ``--jobs 1``), then each run's ``summary.json`` ``time``
(build and init; the first step, which compiles; the other steps; evaluation), and the
job's wall time. Writes ``results.json`` and ``results.md`` to ``--out``; the last line
printed is the JSON.
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks.common import write_report
from scripts.fresh_clone import REPO, clean_env, clone_head, run_streamed

PARTS = ("data", "setup", "first_step", "train", "eval", "total")


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument(
    "--warm-data",
    action="store_true",
    help="use this machine's ~/.cache/nexus-optax (corpus, tokenizer, token and XLA caches)",
  )
  parser.add_argument("--out", type=pathlib.Path, default=REPO / "scripts" / "main_job")
  parser.add_argument(
    "--results-to",
    type=pathlib.Path,
    default=None,
    help="also copy the run's summary.md, time.md and plots here (e.g. docs/main_run)",
  )
  parser.add_argument("compare_flags", nargs="*", help="passed to scripts/main.sh")
  return parser.parse_args()


def main():
  args = parse_args()
  started = datetime.datetime.now(datetime.UTC)
  with tempfile.TemporaryDirectory(prefix="nexus-main-job-") as scratch:
    clone = pathlib.Path(scratch) / "clone"
    commit = clone_head(clone)
    env = clean_env()
    if not args.warm_data:
      env["NEXUS_CORPUS_DIR"] = str(pathlib.Path(scratch) / "cache")
    begin = time.perf_counter()
    output = run_streamed(["bash", "scripts/main.sh", *args.compare_flags], clone, env)
    wall = time.perf_counter() - begin
    env_seconds = float(re.search(r"\[env\] ready in (\d+) s", output).group(1))
    (result_dir,) = (clone / "results").iterdir()
    times = json.loads((result_dir / "time.json").read_text())
    summary = (result_dir / "summary.md").read_text()
    if args.results_to is not None:
      args.results_to.mkdir(parents=True, exist_ok=True)
      for name in ("summary.md", "time.md", "time.json", "curves.png", "same_loss.png"):
        shutil.copy(result_dir / name, args.results_to / name)
    python = subprocess.run(
      [str(clone / ".venv" / "bin" / "python"), "-c", "import jax; print(jax.__version__)"],
      capture_output=True,
      text=True,
      check=True,
    ).stdout.strip()

  result = {
    "command": "python -m scripts.main_job"
    + (" --warm-data" if args.warm_data else "")
    + (f" --results-to {args.results_to}" if args.results_to else "")
    + "".join(f" {flag}" for flag in args.compare_flags),
    "date": started.strftime("%Y-%m-%d %H:%M UTC"),
    "commit": commit,
    "machine": f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}",
    "python": platform.python_version(),
    "jax": python,
    "cold_data": not args.warm_data,
    "wall_seconds": round(wall, 1),
    "env_seconds": env_seconds,
    "compare_seconds": times["wall_seconds"],
    "data_before_runs_seconds": times.get("data_before_runs_seconds", 0.0),
    "runs": times["runs"],
  }
  rows = [
    f"| {name} | " + " | ".join(f"{part[key]:.1f}" for key in PARTS) + " |"
    for name, part in times["runs"].items()
  ]
  report = "\n".join(
    [
      "# The main job from a fresh clone, timed by part",
      "",
      f"Command: `{result['command']}` ({result['date']}, commit {commit}, "
      f"{result['machine']}, Python {result['python']}, jax {python}; data and XLA caches "
      f"{'cold' if result['cold_data'] else 'warm'}).",
      "",
      f"- wall time of `bash scripts/main.sh`: **{wall:.1f} s ({wall / 60:.1f} min)**",
      f"- environment (new .venv, pip install): {env_seconds:.0f} s",
      f"- `train.compare` (both runs, table and plots): {times['wall_seconds']:.1f} s, of "
      f"which {result['data_before_runs_seconds']:.1f} s building the corpus, training the "
      "tokenizer and preparing the token cache before the runs (`--jobs 2`; with `--jobs 1` "
      "the first run's `data`)",
      "",
      "| run | data | build + init | first step (compile) | training steps | evaluation | total |",
      "|---|---:|---:|---:|---:|---:|---:|",
      *rows,
      "",
      "The run's own table:",
      "",
      summary,
    ]
  )
  args.out.mkdir(parents=True, exist_ok=True)
  (args.out / "results.md").write_text(report + "\n")
  write_report(args.out / "results.json", result)


if __name__ == "__main__":
  sys.exit(main())
