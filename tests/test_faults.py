"""Faults injected for real into ``python -m train.pretrain``: processes killed or stopped,
a SIGTERM on a pod, writes that fail, non-finite steps; then ``--resume``.

Every multi-process run here is two gloo processes on CPU, each a supervisor with its
worker child (:mod:`train.peers`); a "lost node" kills the supervisor (its worker dies
with it), an out-of-memory kill or a stop hits the worker.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.test_pretrain import (
  REPO,
  TOLERANCE,
  checked,
  expect_error,
  free_port,
  losses,
  run_cli,
  tiny_args,
  wait_for,
)
from train.peers import PEER_LOST_EXIT

PEER_TIMEOUT = 5
# Long enough that a peer is lost mid-run, short enough that a resumed run ends quickly.
LONG = {"steps": 40, "checkpoint-every": 8}


def complete_steps(out) -> list[int]:
  directory = pathlib.Path(out, "checkpoints")
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def launch_two(cache, out, *extra, **overrides):
  """The two processes of one run (supervisors), sharing a fresh coordinator port."""
  address = f"127.0.0.1:{free_port()}"
  args = tiny_args(cache, out, mesh="data=-1", **{**LONG, **overrides})
  flags = ["--coordinator-address", address, "--num-processes", 2, "--peer-timeout"]
  return [
    run_cli([*args, *extra, *flags, PEER_TIMEOUT, "--process-id", index], wait=False)
    for index in range(2)
  ]


def worker_of(supervisor: subprocess.Popen) -> int:
  """The pid of a supervisor's worker child, once it has started."""
  children = pathlib.Path(f"/proc/{supervisor.pid}/task/{supervisor.pid}/children")
  wait_for(lambda: children.read_text().split(), supervisor, timeout=60)
  return int(children.read_text().split()[0])


def finish(processes, timeout=300):
  return [(p, *p.communicate(timeout=timeout)) for p in processes]


@pytest.fixture(scope="module")
def short_run(small_cache, tmp_path_factory):
  """An uninterrupted 8-step run with checkpoints 4 and 8."""
  out = tmp_path_factory.mktemp("faults") / "short"
  checked(run_cli(tiny_args(small_cache, out)))
  return out


@pytest.fixture(scope="module")
def long_reference(small_cache, tmp_path_factory):
  """The uninterrupted one-process run that every interrupted run must reproduce."""
  out = tmp_path_factory.mktemp("faults") / "uninterrupted"
  checked(run_cli(tiny_args(small_cache, out, **LONG)))
  return losses(out)


def assert_resumed_exactly(out, reference, since: int):
  resumed = losses(out)
  assert sorted(resumed) == sorted(reference)
  assert max(abs(resumed[s] - reference[s]) for s in reference if s > since) < TOLERANCE


# ---------------------------------------------------------------- a lost peer

LOSSES = {
  # (whom, signal, when): the worker SIGKILLed is an out-of-memory kill; the supervisor
  # SIGKILLed, a lost node (its worker dies with it).
  "peer killed during a save": ("worker", 1, signal.SIGKILL, "saving"),
  "coordinator's node lost": ("supervisor", 0, signal.SIGKILL, "stepping"),
  "peer stopped": ("worker", 1, signal.SIGSTOP, "stepping"),
  "peer killed mid-step": ("worker", 1, signal.SIGKILL, "stepping"),
}


@pytest.mark.serial  # two JAX processes, one per core
@pytest.mark.parametrize(
  "case",
  [
    "peer killed during a save",
    "coordinator's node lost",
    "peer stopped",
    pytest.param("peer killed mid-step", marks=pytest.mark.slow),
  ],
)
def test_a_lost_process_stops_every_other_one_with_one_line(
  case, small_cache, long_reference, tmp_path
):
  whom, index, signum, when = LOSSES[case]
  out = tmp_path / "run"
  processes = launch_two(small_cache, out)
  checkpoints = out / "checkpoints"
  if when == "saving":  # orbax writes a checkpoint into a temporary folder, then renames it
    in_flight = lambda: any(
      "tmp" in p.name and int(p.name.split(".")[0]) >= 16 for p in checkpoints.glob("*")
    )
    wait_for(in_flight, processes[0], timeout=300)
  else:
    wait_for(lambda: (checkpoints / "8").is_dir(), processes[0], timeout=300)
  victim = worker_of(processes[index]) if whom == "worker" else processes[index].pid
  os.kill(victim, signum)
  lost_at = time.monotonic()
  survivor = processes[1 - index]
  _, _, err = finish([survivor])[0]
  seconds = time.monotonic() - lost_at
  os.kill(processes[index].pid, signal.SIGKILL)  # a stopped worker dies with it
  processes[index].wait()

  assert survivor.returncode == PEER_LOST_EXIT, err[-3000:]
  assert seconds < PEER_TIMEOUT + 15, seconds
  lines = err.strip().splitlines()
  who = "the coordinator (process 0 of 2)" if index == 0 else "process 1 of 2"
  assert lines[-1].startswith(f"error: {who} was lost ("), err[-3000:]
  assert "Traceback" not in err and "Check failure" not in err and "@ 0x" not in err
  newest = complete_steps(out)[-1]
  assert f"--resume to continue from checkpoint {newest} in {checkpoints}" in lines[-1]
  if when != "saving":
    return
  # The save in flight is left in its temporary folder, never renamed into place; the
  # relaunched run sets it aside and continues from the newest complete checkpoint.
  results = finish(launch_two(small_cache, out, "--resume"))
  for process, _, err in results:
    assert process.returncode == 0, err[-3000:]
  assert f"resumed from checkpoint {newest}" in results[0][1]
  assert not [p for p in checkpoints.iterdir() if "tmp" in p.name]
  assert_resumed_exactly(out, long_reference, since=newest)


# ---------------------------------------------------------------- preemption, elastic


@pytest.mark.serial  # two JAX processes, one per core
def test_sigterm_on_a_pod_saves_one_step_everywhere_and_a_run_grows_from_one_process_to_two(
  small_cache, long_reference, tmp_path
):
  out = tmp_path / "run"
  alone = run_cli(tiny_args(small_cache, out, **LONG), wait=False)
  wait_for(lambda: (out / "checkpoints" / "8").is_dir(), alone)
  alone.send_signal(signal.SIGKILL)
  alone.wait()
  first = complete_steps(out)[-1]

  processes = launch_two(small_cache, out, "--resume")  # one process, then two
  logged = lambda: max(losses(out), default=0) > first + 4
  wait_for(logged, processes[0], timeout=300)
  processes[1].send_signal(signal.SIGTERM)  # the supervisor passes it to its worker
  results = finish(processes)
  for process, _, err in results:
    assert process.returncode == 0, err[-3000:]
  stdout = results[0][1]
  assert "resumed from checkpoint" in stdout and "2 process(es)" in stdout
  stopped = int(re.search(r"SIGTERM: saved checkpoint (\d+)", stdout).group(1))
  assert first < stopped < LONG["steps"] and complete_steps(out)[-1] == stopped
  # Both processes wrote their shards of that one step, which orbax then renamed into place.
  shards = {p.name for p in (out / "checkpoints" / str(stopped) / "state").glob("ocdbt.*")}
  assert shards == {"ocdbt.process_0", "ocdbt.process_1"}

  for process, _, err in finish(launch_two(small_cache, out, "--resume")):
    assert process.returncode == 0, err[-3000:]
  assert_resumed_exactly(out, long_reference, since=first)


def copy_of(run, tmp_path) -> pathlib.Path:
  out = tmp_path / "copy"
  shutil.copytree(run, out)
  return out


def test_a_resume_refuses_what_would_change_the_run(small_cache, short_run, capsys, tmp_path):
  expect_error(
    [*tiny_args(small_cache, short_run, preset="tiny", model="demo"), "--resume"],
    "the checkpoint's run differs (model: 'tiny' -> 'demo')",
    capsys,
  )
  for what, field in (("tokenizer", ("tokenizer", "hash")), ("data spec", ("spec_hash",))):
    cache = copy_of(small_cache.root, tmp_path / what.replace(" ", "_"))
    manifest = json.loads((cache / "manifest.json").read_text())
    node = manifest
    for key in field[:-1]:
      node = node[key]
    node[field[-1]] = "0" * 64  # as a cache of other text or another tokenizer records
    (cache / "manifest.json").write_text(json.dumps(manifest))
    expect_error(
      [*tiny_args(small_cache, short_run, data=cache), "--resume"],
      f"has another {what} than the checkpoint's",
      capsys,
    )
  # Three devices cannot split the checkpoint's micro-batches of 4 rows.
  result = run_cli([*tiny_args(small_cache, short_run, mesh="data=3"), "--resume"], devices=3)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
    "error: --micro-batch-size 4 is not divisible by the mesh's data x fsdp = 3; "
    "use a multiple of 3."
  ]


# ---------------------------------------------------------------- non-finite steps, saves


def test_a_storm_of_skipped_steps_stops_the_run_at_its_checkpoint_from_before(
  small_cache, tmp_path
):
  out = tmp_path / "storm"
  args = tiny_args(small_cache, out, steps=30, **{"checkpoint-every": 4})
  result = run_cli([*args, "--max-skipped-steps", 5], env={"NEXUS_TEST_NONFINITE_STEPS": "7:100"})
  assert result.returncode == 3, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: the last 5 outer steps (7 to 11) were all skipped"), last
  assert f"The newest checkpoint is 4 in {out.absolute() / 'checkpoints'}." in last
  # Checkpoint 8 fell due amid the storm, and waited for a step that was not skipped.
  assert complete_steps(out) == [4]
  records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if r["skipped"]] == [7, 8, 9, 10, 11]
  assert max(r["step"] for r in records) <= 12


def test_a_failed_save_stops_the_run_and_leaves_the_previous_checkpoint_the_latest(
  small_cache, short_run, tmp_path
):
  out = copy_of(short_run, tmp_path)
  shutil.rmtree(out / "checkpoints" / "8")  # as if stopped after checkpoint 4
  command = [
    *map(str, [*tiny_args(small_cache, out), "--resume", "--compilation-cache", "none"]),
    "--no-progress",
  ]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  # Writes past 250 kB fail with EFBIG (SIGXFSZ ignored, as it would kill the run), so
  # orbax's real asynchronous write of checkpoint 8's arrays (about 1 MB) fails.
  limited = 'ulimit -f 250 && trap "" XFSZ && exec "$0" "$@"'
  result = subprocess.run(
    ["bash", "-c", limited, sys.executable, "-m", "train.pretrain", *command],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 3, result.stderr[-3000:]
  # tensorstore's cancelled writes may print "Event loop is closed" around the one line.
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1, result.stderr[-3000:]
  last = errors[0]
  checkpoints = out.absolute() / "checkpoints"
  assert last.startswith(f"error: checkpoint 8 could not be written to {checkpoints} (File too")
  assert re.search(r"\d+\.\d\d GB free there\)", last), last
  assert "the newest complete checkpoint is 4" in last
  assert complete_steps(out) == [4]  # the failed one is still in its temporary folder

  checked(run_cli([*tiny_args(small_cache, out), "--resume"]))
  assert complete_steps(out) == [4, 8]
  assert losses(out) == losses(short_run)
