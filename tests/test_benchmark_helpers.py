"""The benchmarks' shared timing loop, flags and report line (on a fake clock), and the
test-suite timing script's reading of pytest's output."""

import argparse
import json
import pathlib

import pytest

from benchmarks.common import (
  add_batch_flags,
  add_out_flag,
  batch_overrides,
  paired_ratio,
  print_rounds,
  summarize,
  time_calls,
  time_rounds,
  write_report,
)
from scripts.test_suite import pytest_summary

ROOT = pathlib.Path(__file__).resolve().parents[1]


class FakeClock:
  """A clock that a measured call advances by the next of its scripted durations."""

  def __init__(self, durations):
    self.now = 100.0
    self.durations = iter(durations)
    self.calls = []

  def __call__(self):
    return self.now

  def run(self, name):
    self.calls.append(name)
    self.now += next(self.durations)


def test_time_rounds_drops_the_warm_up_and_gives_median_min_and_paired_ratio():
  # Call order is a, b in each of 2 warm-up rounds, then 3 timed rounds.
  clock = FakeClock([10.0, 20.0, 9.0, 20.0, 3.0, 6.0, 1.0, 4.0, 2.0, 8.0])
  logged = []
  times = time_rounds(
    clock.run, ["a", "b"], 3, warmup=2, log=lambda n, e: logged.append((n, e)), clock=clock
  )
  assert clock.calls == ["a", "b"] * 5
  assert times == {"a": [3.0, 1.0, 2.0], "b": [6.0, 4.0, 8.0]}
  assert [n for n, _ in logged] == [-1, 0, 1, 2, 3]
  assert logged[0][1] == {"a": 10.0, "b": 20.0} and logged[3][1] == {"a": 1.0, "b": 4.0}
  assert summarize(times["a"]) == (2.0, 1.0)
  assert summarize(times["b"]) == (6.0, 4.0)
  # The median of the per-round ratios 3/6, 1/4, 2/8, not median(a) / median(b) = 1/3.
  assert paired_ratio(times["a"], times["b"]) == pytest.approx(0.25)
  assert paired_ratio([1.0, 1.0, 9.0], [1.0, 2.0, 3.0]) == pytest.approx(1.0)


def test_summarize_takes_the_middle_pair_of_an_even_count():
  assert summarize([4.0, 1.0, 3.0, 2.0]) == (2.5, 1.0)


def test_time_calls_untimed_warm_up_then_repeats():
  clock = FakeClock([50.0, 0.25, 0.5, 0.125])
  summary = time_calls(lambda: clock.run("fn"), 3, clock=clock)
  assert clock.calls == ["fn"] * 4
  assert summary.median == 0.25 and summary.min == 0.125


def test_print_rounds_prints_only_timed_rounds(capsys):
  log = print_rounds(3)
  log(0, {"a": 1.0})
  log(2, {"a": 0.0123, "b": 0.5})
  assert capsys.readouterr().out == "round 2/3: a 12.3 ms, b 500.0 ms\n"
  print_rounds(3, digits=0)(1, {"a": 0.0123})
  assert capsys.readouterr().out == "round 1/3: a 12 ms\n"


def test_flags_default_to_the_gitignored_out_folder_and_preset_batch(tmp_path, capsys):
  parser = argparse.ArgumentParser()
  add_out_flag(parser, "train_step")
  add_batch_flags(parser)
  args = parser.parse_args([])
  assert args.out == ROOT / "benchmarks" / "out" / "train_step"
  assert "/benchmarks/out/" in (ROOT / ".gitignore").read_text()
  assert batch_overrides(args) == {}
  args = parser.parse_args(["--seq-len", "64", "--microbatches", "2"])
  assert batch_overrides(args) == {"seq_len": 64, "microbatches": 2}

  write_report(tmp_path / "sub" / "r.json", {"x": 1, "big": [1, 2]}, print_without=("big",))
  assert json.loads((tmp_path / "sub" / "r.json").read_text()) == {"x": 1, "big": [1, 2]}
  assert capsys.readouterr().out.splitlines()[-1] == '{"x": 1}'


def test_test_suite_timing_sums_the_pytest_passes_of_test_sh():
  one_pass = (
    "[env] ready in 54 s\n"
    "============================= slowest 15 durations =============================\n"
    "66.60s call     tests/test_confirm.py::test_quick\n"
    "31.40s call     tests/test_pretrain.py::test_kill\n"
    "=========== 320 passed, 3 deselected in 553.04s (0:09:13) ===========\n"
  )
  assert pytest_summary(one_pass) == (
    553.04,
    "320 passed, 3 deselected",
    [
      {"seconds": 66.6, "phase": "call", "test": "tests/test_confirm.py::test_quick"},
      {"seconds": 31.4, "phase": "call", "test": "tests/test_pretrain.py::test_kill"},
    ],
  )
  second_pass = (
    "12.50s setup    tests/test_sharding.py::test_mesh\n======= 9 passed in 40.5s =======\n"
  )
  seconds, counts, slowest = pytest_summary(one_pass + second_pass)
  assert seconds == 593.54 and counts == "320 passed, 3 deselected + 9 passed"
  assert [row["seconds"] for row in slowest] == [66.6, 31.4, 12.5]
