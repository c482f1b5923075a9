"""The test suite as CI runs it: a fresh clone, `bash scripts/test.sh`, timed.

  python -m scripts.test_suite [--python python3.12] [--out scripts/test_suite]

Clones this repository's committed HEAD into a temporary directory and runs the README's
test command there (a new ``.venv``, ruff, then pytest, whose ``--durations=15`` this adds),
streaming its output. ``--python`` picks the interpreter that creates the environment
(``NEXUS_PYTHON``; with pyenv, ``PYENV_VERSION`` is set to match). Writes
``results-<python>.md`` and ``.json`` to ``--out``: the wall time, the environment's
share, pytest's own time and counts, and the slowest tests; the last line is the JSON.
"""

import argparse
import datetime
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
import time

from benchmarks.common import write_report
from scripts.fresh_clone import REPO, clean_env, clone_head, run_streamed


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--python", default="python3", help="interpreter for the new .venv")
  parser.add_argument("--out", type=pathlib.Path, default=REPO / "scripts" / "test_suite")
  return parser.parse_args()


def pytest_summary(output: str) -> tuple[float, str, list[dict]]:
  """pytest's seconds, its counts and its ``--durations`` rows, from test.sh's output.

  A test.sh that runs pytest more than once (a parallel pass, then a serial one) gives
  the sum of the passes' seconds, their counts joined by `` + ``, and all their slowest
  tests, slowest first."""
  passes = re.findall(r"^=* ?(\d+ passed.*) in ([\d.]+)s", output, re.MULTILINE)
  rows = re.findall(r"^([\d.]+)s (call|setup|teardown)\s+(\S+)$", output, re.MULTILINE)
  slowest = [{"seconds": float(s), "phase": p, "test": t} for s, p, t in rows]
  return (
    round(sum(float(seconds) for _, seconds in passes), 2),
    " + ".join(counts.strip(" =") for counts, _ in passes),
    sorted(slowest, key=lambda row: -row["seconds"]),
  )


def main():
  args = parse_args()
  started = datetime.datetime.now(datetime.UTC)
  env = clean_env()
  env["NEXUS_PYTHON"] = args.python
  version = re.fullmatch(r"python(\d+\.\d+)", args.python)
  if version and shutil.which("pyenv"):  # pyenv's shim needs to be told which install
    installed = subprocess.run(
      ["pyenv", "versions", "--bare"], capture_output=True, text=True, check=False
    ).stdout.split()
    matching = [v for v in installed if v.startswith(version.group(1) + ".")]
    if matching:
      env["PYENV_VERSION"] = matching[-1]
  with tempfile.TemporaryDirectory(prefix="nexus-test-suite-") as scratch:
    clone = pathlib.Path(scratch) / "clone"
    commit = clone_head(clone)
    begin = time.perf_counter()
    output = run_streamed(["bash", "scripts/test.sh", "--durations=15"], clone, env)
    wall = time.perf_counter() - begin
    interpreter = subprocess.run(
      [
        str(clone / ".venv" / "bin" / "python"),
        "-c",
        "import sys, jax; print(sys.version.split()[0], jax.__version__)",
      ],
      capture_output=True,
      text=True,
      check=True,
    ).stdout.split()
  env_seconds = float(re.search(r"\[env\] ready in (\d+) s", output).group(1))
  pytest_seconds, pytest_counts, slowest = pytest_summary(output)
  result = {
    "command": f"python -m scripts.test_suite --python {args.python}",
    "date": started.strftime("%Y-%m-%d %H:%M UTC"),
    "commit": commit,
    "cpu_cores": os.cpu_count(),
    "python": interpreter[0],
    "jax": interpreter[1],
    "wall_seconds": round(wall, 1),
    "env_seconds": env_seconds,
    "pytest_seconds": pytest_seconds,
    "pytest_counts": pytest_counts,
    "slowest": slowest,
  }
  rows = [f"| {s['seconds']:.1f} | {s['phase']} | `{s['test']}` |" for s in result["slowest"]]
  report = "\n".join(
    [
      f"# The test suite from a fresh clone, Python {result['python']}",
      "",
      f"Command: `{result['command']}` ({result['date']}, commit {commit}, "
      f"{result['cpu_cores']} CPU cores, jax {result['jax']}).",
      "",
      f"- wall time of `bash scripts/test.sh`: **{wall:.1f} s ({wall / 60:.1f} min)**",
      f"- environment (new .venv, pip install): {env_seconds:.0f} s",
      f"- pytest: {result['pytest_counts']} in {result['pytest_seconds']:.1f} s",
      "",
      "| seconds | phase | slowest tests |",
      "|---:|---|---|",
      *rows,
    ]
  )
  args.out.mkdir(parents=True, exist_ok=True)
  name = f"results-{'.'.join(result['python'].split('.')[:2])}"
  (args.out / f"{name}.md").write_text(report + "\n")
  write_report(args.out / f"{name}.json", result)


if __name__ == "__main__":
  main()
