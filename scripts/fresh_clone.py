"""What the README's two commands meet on a new machine: a clone of this repository's HEAD."""

import os
import pathlib
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[1]


def clone_head(destination: pathlib.Path) -> str:
  """Clones the committed HEAD into ``destination``; returns its short hash. Uncommitted
  changes stay behind (a note says so)."""
  git = lambda *args: subprocess.run(
    ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
  ).stdout.strip()
  if git("status", "--porcelain", "--untracked-files=no"):
    print("note: the work tree has uncommitted changes; the clone runs HEAD.", flush=True)
  subprocess.run(["git", "clone", "--quiet", str(REPO), str(destination)], check=True)
  return git("rev-parse", "--short", "HEAD")


def clean_env() -> dict[str, str]:
  """This process's environment without what would leak its own setup into the clone's."""
  leaks = ("VIRTUAL_ENV", "PYTHONPATH", "JAX_COMPILATION_CACHE_DIR", "XLA_FLAGS")
  return {key: value for key, value in os.environ.items() if key not in leaks}


def run_streamed(command: list[str], cwd: pathlib.Path, env: dict) -> str:
  """Runs ``command``, echoing its output as it comes; returns the output, or exits with
  its end when the command fails."""
  lines = []
  with subprocess.Popen(
    command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  ) as process:
    for line in process.stdout:
      lines.append(line)
      if "\r" not in line:  # progress bars redraw in place
        print(line, end="", flush=True)
  if process.returncode != 0:
    tail = "".join(lines)[-3000:]
    raise SystemExit(f"error: `{' '.join(command)}` failed ({process.returncode}):\n{tail}")
  return "".join(lines)
