"""The test harness itself (tests/conftest.py): scripts/test.sh's two passes, the shared
compilation cache and the session fixtures that pytest-xdist workers build once."""

import os
import pathlib
import subprocess
import sys
import threading
import time

import jax
from conftest import TEST_XLA_FLAGS, built_once, xdist_worker_index

ROOT = pathlib.Path(__file__).resolve().parents[1]
SERIAL_FILES = ["tests/test_compare.py", "tests/test_pretrain.py"]


def collected(*flags) -> set[str]:
  out = subprocess.run(
    [sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:xdist", *flags, *SERIAL_FILES],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
  return {line for line in out.stdout.splitlines() if line.startswith("tests/")}


def test_the_two_passes_split_the_suite_by_the_serial_mark():
  everything, parallel, serial = (
    collected(),
    collected("--pass", "parallel"),
    collected("--pass", "serial"),
  )
  assert parallel | serial == everything and not parallel & serial
  assert "tests/test_pretrain.py::test_two_processes_train_together_and_resume_in_one" in serial
  assert "tests/test_compare.py::test_summary_table_holds_both_runs_measured_losses" in serial
  assert "tests/test_compare.py::test_flags_that_the_job_sets_are_refused" in parallel
  assert "tests/test_pretrain.py::test_config_rejects_bad_values_when_built" in parallel


def test_a_worker_runs_on_one_core_and_every_process_shares_one_locked_cache():
  # A bounded cache is what makes JAX take its file lock around each read and write.
  assert jax.config.jax_compilation_cache_max_size > 0
  cache = jax.config.jax_compilation_cache_dir
  assert pathlib.Path(cache).is_dir()
  assert os.environ["JAX_COMPILATION_CACHE_DIR"] == cache  # what subprocesses inherit
  assert TEST_XLA_FLAGS in os.environ["XLA_FLAGS"]  # and the test compile flags with it
  if xdist_worker_index() is not None:
    assert len(os.sched_getaffinity(0)) == 1
    assert cache == os.environ["NEXUS_TEST_XLA_CACHE_DIR"]  # the controller's


def test_concurrent_callers_build_once_and_all_see_the_built_folder(tmp_path_factory):
  builds, seen = [], []

  def build(directory):
    time.sleep(0.2)  # long enough that the other callers arrive while it builds
    (directory / "payload").write_text("built")
    builds.append(directory)

  def call():
    seen.append((built_once(tmp_path_factory, "harness-check", build) / "payload").read_text())

  tmp_path_factory.getbasetemp()  # made lazily, and not thread-safe: made before the threads
  threads = [threading.Thread(target=call) for _ in range(4)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert len(builds) == 1 and seen == ["built"] * 4
