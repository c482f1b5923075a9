"""The example and the benchmark run end to end and print what they promise."""

import json
import math
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(*args, timeout=300):
  out = subprocess.run(
    [sys.executable, "-m", *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=timeout,
    check=False,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


def _check_overhead_json(stdout):
  result = json.loads(stdout.strip().splitlines()[-1])
  for key in ("time_ratio", "memory_ratio"):
    assert math.isfinite(result[key]) and result[key] > 0, result
  # Nexus needs what accumulation needs plus about one parameter-sized buffer, not K of them.
  extra = result["temp_bytes"]["nexus"] - result["temp_bytes"]["accumulation"]
  assert -0.05 * result["temp_bytes"]["accumulation"] <= extra <= 1.25 * 4 * result["params"]


def test_overhead_benchmark_quick():
  _check_overhead_json(_run("benchmarks.overhead", "--quick"))


@pytest.mark.slow
def test_overhead_benchmark_full_size():
  _check_overhead_json(_run("benchmarks.overhead", timeout=900))


def test_train_step_benchmark_quick(tmp_path):
  stdout = _run(
    "benchmarks.train_step",
    "--preset",
    "tiny",
    "--rounds",
    "1",
    "--matmul-size",
    "256",
    "--out",
    str(tmp_path),
  )
  report = json.loads(stdout.strip().splitlines()[-1])
  assert (tmp_path / "train_step-tiny-cpu.json").exists()
  rows = report["optimizers"]
  assert set(rows) == {"adamw", "nexus", "nexus-multisteps"}
  for row in rows.values():
    assert row["median_step_ms"] > 0 and 0 < row["mfu"] < 2 and row["tokens_per_s"] > 0
  # The Llama step: Nexus's extra temp is at most about one float32 copy of the params.
  extra_mib = rows["nexus"]["temp_mib"] - rows["adamw"]["temp_mib"]
  assert extra_mib <= 1.25 * 4 * report["params"] / 2**20


def test_quickstart_trains_and_reports():
  stdout = _run("examples.quickstart", "--steps", "6", "--log-every", "3", "--seq-len", "32")
  rows = [line.split() for line in stdout.splitlines() if line.strip()[:1].isdigit()]
  assert [int(r[0]) for r in rows] == [3, 6]
  first, last = float(rows[0][1]), float(rows[-1][1])
  assert math.isfinite(last) and last < first  # inner loss (bits per byte) went down
  assert "cross-source gradient cosine" in stdout
  assert "skipped inner steps: 0" in stdout


def test_quickstart_rejects_bad_flags():
  out = subprocess.run(
    [sys.executable, "-m", "examples.quickstart", "--inner-lr", "0"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    check=False,
  )
  assert out.returncode == 2 and "--inner-lr must be > 0" in out.stderr


@pytest.mark.slow  # builds the default corpus on first use (about 80 s)
def test_data_pipeline_benchmark_reports_a_loader_faster_than_the_model(tmp_path):
  stdout = _run(
    "benchmarks.data_pipeline",
    "--steps",
    "20",
    "--repeats",
    "1",
    "--out",
    str(tmp_path),
    timeout=900,
  )
  report = json.loads(stdout.strip().splitlines()[-1])
  assert report["loader_over_model"] > 10
  assert report["forward_backward_us_per_token"] > 0
  saved = json.loads((tmp_path / "data_pipeline.json").read_text())
  assert {row["set"] for row in saved["corpus"]} >= {"train/prose", "heldout/milton"}


def test_compiled_memory_benchmark_shards_the_state_over_the_mesh(tmp_path):
  stdout = _run(
    "benchmarks.compiled_memory",
    "--presets",
    "tiny",
    "--mesh",
    "fsdp=4",
    "--micro-batch-size",
    "8",
    "--seq-len",
    "64",
    "--out",
    str(tmp_path),
  )
  report = json.loads(stdout.strip().splitlines()[-1])
  assert report["devices"] == 8 and report["mesh"]["fsdp"] == 4
  rows = report["presets"]["tiny"]
  for row in rows.values():
    # Parameters, AdamW's two moments and the batch, split four ways (norm scales and
    # small leaves replicate, so allow a margin), never the whole state on each device.
    state_bytes = 3 * 4 * row["params"]
    assert state_bytes / 4 <= row["argument_size_in_bytes"] <= 0.5 * state_bytes
    assert row["temp_size_in_bytes"] > 0
  assert rows["adamw"]["temp_over_accumulation"] == 1.0
  assert 0.9 <= rows["nexus"]["temp_over_accumulation"] <= 1.5


def test_bf16_fidelity_benchmark_reports_each_mode(tmp_path, small_cache, monkeypatch):
  from studies.bf16_fidelity import cli, fidelity  # pylint: disable=import-outside-toplevel

  monkeypatch.setattr(fidelity.corpus_lib, "ensure_default_cache", lambda: small_cache)
  argv = ["--sizes", "tiny", "--batch", "2", "--seq-len", "32", "--gamma-scales", "10"]
  assert cli.main([*argv, "--out", str(tmp_path)]) == 0
  report = json.loads((tmp_path / "results.json").read_text())
  (size,) = report["sizes"]
  assert set(size["modes"]) == {
    "bf16-compute",
    "bf16-compute (gamma 0.1)",
    "bf16-params",
    "bf16-params+fp32",
    "bf16-params+sr",
  }
  for row in size["modes"].values():
    assert all(math.isfinite(row[key]) for key in ("survival", "cosine", "to_fp32", "first_err"))
  assert (tmp_path / "fidelity.png").stat().st_size > 10_000
  assert "| tiny |" in (tmp_path / "results.md").read_text()


def test_bf16_fidelity_report_only_regenerates_the_committed_table(tmp_path):
  from studies.bf16_fidelity import cli  # pylint: disable=import-outside-toplevel

  committed = ROOT / "studies" / "bf16_fidelity" / "results"
  (tmp_path / "results.json").write_bytes((committed / "results.json").read_bytes())
  assert cli.main(["--report-only", "--out", str(tmp_path)]) == 0
  for name in ("results.md", "results.json"):
    assert (tmp_path / name).read_bytes() == (committed / name).read_bytes(), name
  assert (tmp_path / "fidelity.png").stat().st_size > 10_000


@pytest.mark.slow
def test_torch_reference_benchmark_quick(tmp_path):
  pytest.importorskip("torch", reason="PyTorch comes with the bench extra on Python 3.11")
  stdout = _run(
    "benchmarks.torch_reference",
    "--preset",
    "tiny",
    "--rounds",
    "1",
    "--no-compile",
    "--out",
    str(tmp_path),
  )
  report = json.loads(stdout.strip().splitlines()[-1])
  assert (tmp_path / "torch_reference-tiny.json").exists()
  assert report["agreement"]["relative_error"] <= 1e-4
  assert set(report["implementations"]) == {"nexus-optax", "torch-eager"}
  for row in report["implementations"].values():
    assert row["tokens_per_s"] > 0 and row["nexus_optax_speedup"] > 0
  assert report["breakdown"]["jax_forward_backward_ms"] > report["breakdown"]["jax_forward_ms"] > 0


def test_second_order_check_prints_the_table_in_docs_math(tmp_path):
  stdout = _run("studies.second_order", "--seeds", "0", "--out", str(tmp_path))
  rows = [line for line in stdout.splitlines() if line.startswith("| 0.")]
  assert len(rows) == 3, stdout
  document = (ROOT / "docs" / "math.md").read_text()
  for row in rows:
    assert row in document, row
  # The expansion's residual halves with gamma; Eq. 12's does not shrink.
  table = json.loads(stdout.strip().splitlines()[-1])["table"]
  ratios = [a / b for a, b in zip(table["orders_expansion"], table["orders_expansion"][1:])]
  assert all(1.8 < ratio < 2.2 for ratio in ratios), table
  assert min(table["iid_eq12_autodiff"]) > 0.3, table
  assert json.loads((tmp_path / "results.json").read_text()) == json.loads(
    stdout.strip().splitlines()[-1]
  )


def test_second_order_report_only_regenerates_the_committed_table(tmp_path):
  from studies.second_order import cli  # pylint: disable=import-outside-toplevel

  committed = ROOT / "studies" / "second_order" / "results"
  (tmp_path / "results.json").write_bytes((committed / "results.json").read_bytes())
  assert cli.main(["--report-only", "--out", str(tmp_path)]) == 0
  assert (tmp_path / "results.md").read_bytes() == (committed / "results.md").read_bytes()
  # The committed sweep is the one docs/math.md quotes.
  document = (ROOT / "docs" / "math.md").read_text()
  report = (committed / "results.md").read_text()
  for row in (line for line in report.splitlines() if line.startswith("| 0.")):
    assert row in document, row


def _fake_python(
  path: pathlib.Path, version: str, log: pathlib.Path, pip_is_old: bool = False
) -> pathlib.Path:
  """An interpreter stand-in: answers env.sh's version and pip queries, logs anything else
  and fails."""
  path.parent.mkdir(parents=True, exist_ok=True)
  pip_check = 'case "$2" in *version\\(\\"pip\\"\\)*) exit 1;; esac\n' if pip_is_old else ""
  path.write_text(
    f'#!/bin/sh\nif [ "$1" = "-c" ]; then {pip_check}echo {version}; exit 0; fi\n'
    f'echo "$0 $*" >> {log}\nexit 3\n'
  )
  path.chmod(0o755)
  return path


@pytest.mark.parametrize("venv_version", [None, "3.11", "3.12"])
def test_env_sh_makes_venv_with_the_named_python_and_only_then(tmp_path, venv_version):
  root, log = tmp_path / "repo", tmp_path / "calls.txt"
  (root / "scripts").mkdir(parents=True)
  (root / "scripts" / "env.sh").write_text((ROOT / "scripts" / "env.sh").read_text())
  python = _fake_python(tmp_path / "bin" / "python3.12", "3.12", log)
  if venv_version:
    _fake_python(root / ".venv" / "bin" / "python", venv_version, log)
  run = subprocess.run(
    ["bash", "-c", "source scripts/env.sh test"],
    cwd=root,
    env={"PATH": "/usr/bin:/bin", "NEXUS_PYTHON": str(python)},
    capture_output=True,
    text=True,
    check=False,
  )
  assert run.returncode == 3  # the first call env.sh makes to a stand-in ends it
  first_call = log.read_text().splitlines()[0]
  if venv_version == "3.12":
    pip = "-m pip install --quiet --disable-pip-version-check --no-compile"
    assert (
      first_call == f"{root}/.venv/bin/python {pip} -e {root} --group {root}/pyproject.toml:test"
    )
  else:
    assert first_call == f"{python} -m venv --clear {root}/.venv"
    assert "creating" in run.stdout


def _source_env_sh(root: pathlib.Path, python: pathlib.Path, groups: str):
  return subprocess.run(
    ["bash", "-c", f"source scripts/env.sh {groups}"],
    cwd=root,
    env={"PATH": "/usr/bin:/bin", "NEXUS_PYTHON": str(python)},
    capture_output=True,
    text=True,
    check=False,
  )


def test_env_sh_installs_each_named_group_and_upgrades_a_pip_older_than_25_1(tmp_path):
  root, log = tmp_path / "repo", tmp_path / "calls.txt"
  (root / "scripts").mkdir(parents=True)
  (root / "scripts" / "env.sh").write_text((ROOT / "scripts" / "env.sh").read_text())
  python = _fake_python(tmp_path / "bin" / "python3.12", "3.12", log)
  _fake_python(root / ".venv" / "bin" / "python", "3.12", log)
  assert _source_env_sh(root, python, "train,bench").returncode == 3
  groups = f"--group {root}/pyproject.toml:train --group {root}/pyproject.toml:bench"
  assert log.read_text().splitlines()[0].endswith(f"-e {root} {groups}")
  log.unlink()
  _fake_python(root / ".venv" / "bin" / "python", "3.12", log, pip_is_old=True)
  assert _source_env_sh(root, python, "test").returncode == 3
  upgrade = "-m pip install --quiet --disable-pip-version-check --upgrade pip>=25.1"
  assert log.read_text().splitlines()[0] == f"{root}/.venv/bin/python {upgrade}"


def test_env_sh_names_the_fix_for_a_python_that_does_not_run(tmp_path):
  run = subprocess.run(
    ["bash", "-c", f"source {ROOT}/scripts/env.sh test"],
    env={"PATH": "/usr/bin:/bin", "NEXUS_PYTHON": str(tmp_path / "no-such-python")},
    capture_output=True,
    text=True,
    check=False,
  )
  assert run.returncode == 1
  assert "set NEXUS_PYTHON to an installed Python" in run.stderr.splitlines()[-1]


def test_speedup_figures_come_from_fresh_processes_on_one_core_and_a_failure_stops():
  from scripts.test_speedups import seconds  # pylint: disable=import-outside-toplevel

  code = "import os, random; print(random.choice([0.1, 0.3]) * len(os.sched_getaffinity(0)))"
  assert seconds(code, repeats=3) in (0.1, 0.3)  # the median of three, each on one core
  assert seconds("import os; print(len(os.sched_getaffinity(0)))", repeats=1) == 1.0
  with pytest.raises(SystemExit, match="a measurement failed"):
    seconds("raise SystemExit(3)", repeats=1)
