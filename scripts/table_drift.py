"""How far two main-job results differ: the summary tables cell by cell, and, given the
run folders, the training loss step by step.

  python -m scripts.table_drift BEFORE AFTER [--tolerance 2e-4]

BEFORE and AFTER are ``train.compare`` output folders (``results/<timestamp>/``) or
Markdown files holding its table (``summary.md``, or the README, whose table is the
committed run's). Prints, for each row, the largest absolute difference of a cell and
where; with two run folders, the training-loss difference of each optimizer at every 10th
logged step, which shows whether a difference was in the losses' arithmetic (there from
step 1) or grew through training. The last line is JSON; the exit status is 1 when a cell
differs by more than ``--tolerance``.
"""

import argparse
import json
import pathlib
import sys

ROWS = ("AdamW", "AdamW + Nexus", "Nexus - AdamW")


def table(path: pathlib.Path) -> tuple[list[str], dict[str, list[float]]]:
  """The column names and each row's cells of the first main-job table in ``path``."""
  source = path / "summary.md" if path.is_dir() else path
  if not source.is_file():
    raise SystemExit(f"error: {source} does not exist; give a train.compare output folder")
  lines = [line for line in source.read_text().splitlines() if line.startswith("| ")]
  header = next((line for line in lines if line.startswith("| optimizer |")), None)
  if header is None:
    raise SystemExit(f"error: {source} holds no main-job table (its '| optimizer |' header)")
  columns = [cell.strip() for cell in header.strip("|").split("|")][1:]
  rows = {}
  for line in lines:
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    if cells[0] in ROWS and cells[0] not in rows:
      rows[cells[0]] = [float(cell) for cell in cells[1:]]
  missing = [row for row in ROWS if row not in rows]
  if missing:
    raise SystemExit(f"error: {path} has no main-job table row {missing[0]!r}")
  return columns, rows


def cell_drift(before: pathlib.Path, after: pathlib.Path) -> dict[str, dict]:
  """Per row: the largest |after - before| over the cells, and its column."""
  columns, old = table(before)
  new_columns, new = table(after)
  if new_columns != columns:
    raise SystemExit(f"error: the tables have different columns: {columns} and {new_columns}")
  drift = {}
  for row in ROWS:
    differences = [abs(b - a) for a, b in zip(old[row], new[row])]
    worst = max(range(len(columns)), key=differences.__getitem__)
    drift[row] = {"max_abs": round(differences[worst], 6), "column": columns[worst]}
  return drift


def train_losses(run: pathlib.Path) -> dict[int, float]:
  records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
  return {r["step"]: r["train_loss"] for r in records if "train_loss" in r}


def has_runs(folder: pathlib.Path) -> bool:
  """Whether ``folder`` holds the two runs' logs (a ``train.compare`` output folder does;
  ``docs/main_run/``, the committed table and plots, does not)."""
  return all((folder / optimizer / "metrics.jsonl").is_file() for optimizer in ("adamw", "nexus"))


def loss_drift(before: pathlib.Path, after: pathlib.Path) -> dict[str, dict[int, float]]:
  """Per optimizer: after's training loss minus before's at every 10th shared step."""
  drift = {}
  for optimizer in ("adamw", "nexus"):
    old, new = train_losses(before / optimizer), train_losses(after / optimizer)
    steps = sorted(set(old) & set(new))
    drift[optimizer] = {s: new[s] - old[s] for s in steps if s == steps[0] or s % 10 == 0}
  return drift


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("before", type=pathlib.Path)
  parser.add_argument("after", type=pathlib.Path)
  parser.add_argument("--tolerance", type=float, default=2e-4)
  args = parser.parse_args(argv)
  result = {"cells": cell_drift(args.before, args.after), "tolerance": args.tolerance}
  for row, worst in result["cells"].items():
    print(f"{row:>15}: largest cell difference {worst['max_abs']:.4f} ({worst['column']})")
  if has_runs(args.before) and has_runs(args.after):
    result["train_loss"] = loss_drift(args.before, args.after)
    for optimizer, by_step in result["train_loss"].items():
      steps = ", ".join(f"step {s}: {d:+.2e}" for s, d in by_step.items())
      print(f"{optimizer:>15}: training-loss difference {steps}")
  result["within_tolerance"] = all(
    worst["max_abs"] <= args.tolerance for worst in result["cells"].values()
  )
  print(json.dumps(result))
  return 0 if result["within_tolerance"] else 1


if __name__ == "__main__":
  sys.exit(main())
