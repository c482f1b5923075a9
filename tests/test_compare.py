"""The main job (train/compare.py): both runs, the Table-1 summary and the plots."""

import json
import math
import os
import pathlib
import re
import signal
import subprocess
import sys

import pytest

from tests.test_pretrain import REPO, checked, run_cli

pytestmark = pytest.mark.filterwarnings("ignore")
# The job trains its two runs side by side, each pinned to its share of the cores: such
# tests run in the suite's serial pass (tests/conftest.py), where every core is free.
side_by_side = pytest.mark.serial


def table_rows(summary: str) -> tuple[list[str], dict[str, list[float]]]:
  lines = [line for line in summary.splitlines() if line.startswith("|")]
  header = [cell.strip() for cell in lines[0].strip("|").split("|")]
  rows = {}
  for line in lines[2:]:
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    rows[cells[0]] = [float(cell) for cell in cells[1:]]
  return header[1:], rows


@pytest.fixture(scope="module")
def comparison(small_cache, tmp_path_factory):
  out = tmp_path_factory.mktemp("compare")
  result = checked(
    subprocess.run(
      [
        sys.executable,
        "-m",
        "train.compare",
        "--preset",
        "tiny",
        "--out",
        str(out),
        "--steps",
        "6",
        "--eval-every",
        "3",
        "--data",
        str(small_cache.root),
        "--no-progress",
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=600,
      check=False,
      env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"},
    )
  )
  (run_dir,) = out.iterdir()
  return run_dir, result.stdout


def metrics_of(run: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def final_eval(run: pathlib.Path) -> dict:
  records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  return [r for r in records if "gradient_cosine/mean" in r][-1]


@side_by_side
def test_summary_table_holds_both_runs_measured_losses(comparison):
  run_dir, stdout = comparison
  summary = (run_dir / "summary.md").read_text()
  assert summary.strip() in stdout  # printed at the end
  header, rows = table_rows(summary)
  assert set(rows) == {"AdamW", "AdamW + Nexus", "Nexus - AdamW"}
  for label, name in (("AdamW", "adamw"), ("AdamW + Nexus", "nexus")):
    record = final_eval(run_dir / name)
    values = dict(zip(header, rows[label]))
    validation = [record[f"validation/{d}/loss"] for d in ("prose", "code", "math", "technical")]
    heldout = [v for k, v in record.items() if k.startswith("heldout/") and k.endswith("/loss")]
    training = [record[f"train/{d}/loss"] for d in ("prose", "code", "math", "technical")]
    # Equal mixture weights: the pretraining loss is the plain mean of the domains.
    assert math.isclose(values["pretrain (val)"], sum(validation) / 4, abs_tol=1e-4)
    assert math.isclose(values["train"], sum(training) / 4, abs_tol=1e-4)
    assert math.isclose(values["held-out mean"], sum(heldout) / len(heldout), abs_tol=1e-4)
    assert math.isclose(values["code (val)"], record["validation/code/loss"], abs_tol=1e-4)
    assert math.isclose(values["grad cosine"], record["gradient_cosine/mean"], abs_tol=1e-4)
  for column, nexus, adamw, difference in zip(
    header, rows["AdamW + Nexus"], rows["AdamW"], rows["Nexus - AdamW"]
  ):
    assert math.isclose(difference, nexus - adamw, abs_tol=2e-4), column


@side_by_side
def test_both_runs_share_everything_but_the_optimizer(comparison):
  run_dir, _ = comparison
  configs = {
    name: json.loads((run_dir / name / "config.json").read_text()) for name in ("adamw", "nexus")
  }
  assert configs["adamw"]["optimizer"] == "adamw" and configs["nexus"]["optimizer"] == "nexus"
  differing = {k for k in configs["adamw"] if configs["adamw"][k] != configs["nexus"][k]}
  assert differing == {"optimizer", "out"}


@side_by_side
def test_plots_are_pngs_and_checkpoints_load_in_train_evaluate(comparison, tmp_path):
  run_dir, _ = comparison
  for name in ("curves.png", "same_loss.png"):
    assert (run_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  text = tmp_path / "text.txt"
  text.write_text("def add(a, b):\n    return a + b\n" * 8)
  result = checked(
    run_cli(
      ["--checkpoint", run_dir / "nexus", "--text-file", text, "--json"], module="train.evaluate"
    )
  )
  assert json.loads(result.stdout.strip().splitlines()[-1])["step"] == 6


def test_flags_that_the_job_sets_are_refused(tmp_path):
  from train import compare

  assert compare.main(["--optimizer", "nexus", "--out", str(tmp_path)]) == 2
  assert not any(tmp_path.iterdir())


@side_by_side
def test_summary_header_names_the_command_and_date(comparison):
  run_dir, _ = comparison
  summary = (run_dir / "summary.md").read_text()
  assert "Command: `python -m train.compare --preset tiny" in summary
  assert re.search(r"Date: \d{4}-\d{2}-\d{2} \d{2}:\d{2}", summary)


@side_by_side
def test_time_breakdown_accounts_for_each_run(comparison):
  run_dir, stdout = comparison
  times = json.loads((run_dir / "time.json").read_text())
  assert set(times["runs"]) == {"adamw", "nexus"}
  for name, parts in times["runs"].items():
    assert all(value >= 0 for value in parts.values()), parts
    # 6 steps, evaluated at 3 and 6: each evaluation's seconds, as metrics.jsonl logged
    # them as it went, add up to the breakdown's evaluation.
    evaluations = [r for r in metrics_of(run_dir / name) if "eval_seconds" in r]
    assert [r["step"] for r in evaluations] == [3, 6]
    assert abs(evaluations[-1]["eval_seconds"] - parts["eval"]) <= 0.1, parts
    assert 0 < evaluations[0]["eval_seconds"] < parts["eval"]
    # The training loop's wall clock at the last evaluation is the steps and evaluations.
    loop = parts["first_step"] + parts["train"] + parts["eval"]
    assert evaluations[-1]["seconds"] <= loop + 0.2 and parts["data"] + parts["setup"] < 60
  totals = [p["total"] for p in times["runs"].values()]
  if times["jobs"] == 2:  # side by side, after the data were prepared once
    assert times["wall_seconds"] >= times["data_before_runs_seconds"] + max(totals)
    assert all((run_dir / name / "log.txt").stat().st_size > 0 for name in times["runs"])
  else:
    assert times["wall_seconds"] >= sum(totals)
  assert (run_dir / "time.md").read_text().strip() in stdout


@side_by_side
def test_a_failing_run_stops_the_job_with_its_log(small_cache, tmp_path, capsys):
  from train import compare

  flags = ["--preset", "tiny", "--data", str(small_cache.root), "--mesh", "data=3"]
  assert compare.main([*flags, "--out", str(tmp_path), "--jobs", "2", "--no-progress"]) != 0
  err = capsys.readouterr().err
  assert "run failed; its log.txt ends:" in err and "data=3" in err, err[-2000:]


def test_runs_in_turn_train_the_same_steps_in_this_process(small_cache, tmp_path, capsys):
  """--jobs 1: both runs through train.pretrain in this process, one after the other; a
  run's bad flag is its one-line error and stops the job."""
  from train import compare

  flags = ["--preset", "tiny", "--data", str(small_cache.root), "--steps", "2", "--jobs", "1"]
  flags += ["--eval-every", "2", "--no-progress"]
  assert compare.main([*flags, "--out", str(tmp_path / "good")]) == 0
  (run_dir,) = (tmp_path / "good").iterdir()
  for optimizer in ("adamw", "nexus"):
    assert [record["step"] for record in metrics_of(run_dir / optimizer)][-1] == 2
  assert '"jobs": 1' in (run_dir / "time.json").read_text()
  capsys.readouterr()
  assert compare.main([*flags, "--mesh", "data=3", "--out", str(tmp_path / "bad")]) == 2
  assert capsys.readouterr().err.strip().startswith("error: ")


@side_by_side
def test_sigterm_stops_both_side_by_side_runs_at_a_checkpoint(small_cache, tmp_path):
  from tests.test_pretrain import wait_for

  flags = ["--preset", "tiny", "--data", small_cache.root, "--steps", 400, "--eval-every", 0]
  flags += ["--log-every", 1, "--checkpoint-every", 1000, "--out", tmp_path, "--jobs", 2]
  flags.append("--no-progress")
  job = run_cli(flags, module="train.compare", wait=False)
  logged = lambda: [
    path for path in tmp_path.glob("*/*/metrics.jsonl") if path.read_text().count("\n") >= 2
  ]
  wait_for(lambda: len(logged()) == 2, job)
  job.send_signal(signal.SIGTERM)
  _, err = job.communicate(timeout=300)
  assert job.returncode == 128 + signal.SIGTERM, err[-3000:]
  for run in ("adamw", "nexus"):
    assert f"SIGTERM: the {run} run saved a checkpoint" in err, err[-3000:]
  for run in ("adamw", "nexus"):
    (run_dir,) = tmp_path.glob(f"*/{run}")
    assert "SIGTERM: saved checkpoint" in (run_dir / "log.txt").read_text()
    saved = [int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()]
    assert saved and max(saved) < 400


def test_start_pinned_runs_the_module_on_its_cores_with_its_argv(tmp_path, monkeypatch):
  from train.processes import core_shares, start_pinned

  (tmp_path / "affinity_probe.py").write_text(
    "import json, os, sys\nprint(json.dumps([sorted(os.sched_getaffinity(0)), sys.argv]))\n"
  )
  monkeypatch.setenv("PYTHONPATH", str(tmp_path))
  first_core = core_shares(1)[0][:1]
  with (tmp_path / "log.txt").open("w") as log:
    assert start_pinned("affinity_probe", ["--flag", "1"], first_core, log).wait() == 0
  cores, argv = json.loads((tmp_path / "log.txt").read_text())
  assert cores == first_core
  assert argv[1:] == ["--flag", "1"]
  assert sorted(sum(core_shares(2), [])) == sorted(os.sched_getaffinity(0))
