"""The pretraining CLI: bad input, the step against NumPy, sharding, multi-process, resume.

End-to-end runs go through ``python -m train.pretrain`` in subprocesses (fake CPU devices
need their own process) on the ``tiny`` preset and the small test corpus.
"""

import json
import math
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nexus_optax as nx
from tests.conftest import xla_flags
from train import parallel
from train.config import ConfigError, TrainConfig
from train.optimizers import (
  ACCUMULATE,
  NEXUS_MULTISTEPS,
  NEXUS_SCAN,
  learning_rate_schedule,
  muon_dimension_numbers,
)
from train.pretrain import main as pretrain_main
from train.step import TrainState, make_train_step, schedule_counts

REPO = pathlib.Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5


def run_cli(args, devices=1, env=None, module="train.pretrain", wait=True):
  environment = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=xla_flags(devices),
    **(env or {}),
  )
  command = [sys.executable, "-m", module, *map(str, args)]
  if module == "train.pretrain":
    command.append("--no-progress")
  if not wait:
    return subprocess.Popen(
      command, cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
  return subprocess.run(
    command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=600, check=False
  )


def tiny_args(cache, out, **overrides):
  values = {
    "preset": "tiny",
    "optimizer": "nexus",
    "steps": 8,
    "checkpoint-every": 4,
    "eval-every": 0,
    "log-every": 1,
    "mesh": "data=1",
    "data": cache.root,
    "out": out,
  }
  values.update(overrides)
  return [item for key, value in values.items() for item in (f"--{key}", value)]


def losses(out) -> dict[int, float]:
  lines = pathlib.Path(out, "metrics.jsonl").read_text().splitlines()
  return {
    record["step"]: record["train_loss"]
    for record in map(json.loads, lines)
    if "train_loss" in record
  }


def checked(result):
  assert result.returncode == 0, result.stderr[-4000:]
  return result


def final_params(out, step, reference_run):
  """Params of a checkpoint, onto this process's one device (the reference run's layout)."""
  import orbax.checkpoint as ocp

  path = lambda run: pathlib.Path(run).absolute() / "checkpoints" / str(step) / "state"
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
    checkpointer.restore(path(reference_run)),
  )
  return [
    np.asarray(leaf) for leaf in jax.tree.leaves(checkpointer.restore(path(out), target)["params"])
  ]


@pytest.fixture(scope="module")
def reference_run(small_cache, tmp_path_factory):
  """The single-process, single-device run every distributed run must reproduce."""
  out = tmp_path_factory.mktemp("runs") / "reference"
  checked(run_cli(tiny_args(small_cache, out)))
  return out


# ---------------------------------------------------------------- bad input, in-process


def expect_error(argv, message, capsys):
  code = pretrain_main([*map(str, argv), "--no-progress"])
  err = capsys.readouterr().err.strip()
  assert code == 2, err
  assert err.startswith("error: ") and len(err.splitlines()) == 1, err
  assert message in err, err


@pytest.mark.parametrize(
  "argv,message",
  [
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--optimizer", "adam"], "unknown optimizer 'adam'; choose from adamw, nexus"),
    (["--schedule", "linear"], "unknown schedule 'linear'; choose wsd or cosine"),
    (["--microbatches", "0"], "--microbatches must be an integer >= 1"),
    (["--inner-lr", "0"], "--inner-lr must be a finite number > 0"),
    (["--inner-lr", "-0.01"], "--inner-lr must be a finite number > 0"),
    (["--steps", "0"], "--steps must be an integer >= 1"),
    (["--mesh", "data=3"], "needs 3 devices, which does not divide the 1 available"),
    (["--mesh", "pipeline=2"], "bad --mesh item 'pipeline=2'"),
    (["--num-processes", "2"], "needs --coordinator-address, --num-processes and --process-id"),
  ],
)
def test_bad_flags_get_a_one_line_error(argv, message, capsys, tmp_path):
  expect_error(["--preset", "tiny", "--out", tmp_path / "run", *argv], message, capsys)


@pytest.mark.parametrize(
  "mixture,message",
  [
    ("prose:1", "malformed mixture item 'prose:1'; write name=weight"),
    ("prose=0", "weight of 'prose' must be a finite number > 0"),
    ("prose=-1,code=1", "weight of 'prose' must be a finite number > 0"),
    ("poetry=1", "unknown source 'poetry'"),
  ],
)
def test_bad_mixture_gets_a_one_line_error(mixture, message, small_cache, capsys, tmp_path):
  expect_error(tiny_args(small_cache, tmp_path / "run", mixture=mixture), message, capsys)


def test_out_dir_and_resume_errors(small_cache, reference_run, capsys, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  expect_error(tiny_args(small_cache, blocker / "run"), "is not writable", capsys)
  expect_error(
    [*tiny_args(small_cache, tmp_path / "empty"), "--resume"], "--resume: no checkpoint in", capsys
  )
  expect_error(
    tiny_args(small_cache, reference_run), "already holds checkpoints; pass --resume", capsys
  )
  expect_error(
    [*tiny_args(small_cache, reference_run, optimizer="adamw"), "--resume"],
    "the checkpoint's run differs (optimizer: 'nexus' -> 'adamw')",
    capsys,
  )


def test_a_mesh_that_does_not_divide_the_model_or_batch_is_refused():
  from flax import nnx

  from models import DEFAULT_RULES, PRESETS, Llama

  abstract = nnx.split(nnx.eval_shape(lambda: Llama(PRESETS["tiny"], rngs=nnx.Rngs(0))), nnx.Param)[
    1
  ]
  three_way = types.SimpleNamespace(shape={"data": 1, "fsdp": 1, "tensor": 3})
  with pytest.raises(ConfigError, match="tensor=3 does not divide dimension 2 .*key"):
    parallel.check_model_fits_mesh(abstract, three_way, DEFAULT_RULES)
  with pytest.raises(ConfigError, match="fsdp=5 does not divide dimension 1"):
    parallel.check_model_fits_mesh(
      abstract, types.SimpleNamespace(shape={"data": 1, "fsdp": 5, "tensor": 1}), DEFAULT_RULES
    )
  with pytest.raises(ConfigError, match="--micro-batch-size 6 is not divisible .* data x fsdp = 4"):
    parallel.process_batch_rows(types.SimpleNamespace(shape={"data": 2, "fsdp": 2, "tensor": 1}), 6)
  assert parallel.parse_mesh("tensor=2,data=-1", 8) == {"data": 4, "fsdp": 1, "tensor": 2}


def test_compilation_cache_flag_sets_disables_or_defaults_the_cache(tmp_path, monkeypatch):
  from train.pretrain import use_compilation_cache

  names = ("jax_compilation_cache_dir", "jax_enable_compilation_cache")
  names += ("jax_compilation_cache_max_size",)
  saved = {name: getattr(jax.config, name) for name in names}
  try:
    use_compilation_cache(None)  # the session's $JAX_COMPILATION_CACHE_DIR stays
    assert jax.config.jax_compilation_cache_dir == saved["jax_compilation_cache_dir"]
    use_compilation_cache(str(tmp_path / "mine"))
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "mine")
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_compilation_cache_max_size", -1)
    monkeypatch.setenv("NEXUS_CORPUS_DIR", str(tmp_path))
    use_compilation_cache(None)
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
    assert jax.config.jax_compilation_cache_max_size == 2 << 30
    use_compilation_cache("none")
    assert jax.config.jax_enable_compilation_cache is False
  finally:
    for name, value in saved.items():
      jax.config.update(name, value)


def test_config_rejects_bad_values_when_built():
  with pytest.raises(ConfigError, match="--seq-len 512 exceeds the tiny model's max_seq_len 128"):
    TrainConfig(model="tiny", seq_len=512)
  with pytest.raises(ConfigError, match="--warmup-fraction plus --decay-fraction exceeds 1"):
    TrainConfig(warmup_fraction=0.5, decay_fraction=0.6)
  assert TrainConfig(optimizer="muon").resolved_weight_decay == 0.1  # Table 6
  assert TrainConfig(optimizer="nexus").resolved_weight_decay == 0.2


# ---------------------------------------------------------------- the step against NumPy


def softmax_loss(params, batch):
  logits = batch["x"] @ params["w"] + params["b"]
  return -jnp.mean(jnp.sum(batch["y"] * jax.nn.log_softmax(logits), axis=-1))


def start_state(tx, problem):
  """The problem's float32 params and a TrainState at step 0."""
  params = {k: jnp.asarray(v, jnp.float32) for k, v in problem.params.items()}
  step, skipped = jnp.zeros([], jnp.int32), jnp.zeros([], jnp.int32)
  return params, TrainState(step, params, tx.init(params), jax.random.PRNGKey(0), skipped)


def one_step(kind, tx, problem, order):
  params, state = start_state(tx, problem)
  step = jax.jit(make_train_step(softmax_loss, tx, kind))
  microbatches = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), problem.microbatches(order))
  return step(state, microbatches)


@pytest.mark.parametrize("kind", [ACCUMULATE, NEXUS_SCAN, NEXUS_MULTISTEPS])
def test_each_step_kind_matches_numpy(kind, problem):
  order, gamma = [0, 2, 1], 0.05
  if kind == ACCUMULATE:
    tx = optax.sgd(1.0)
    direction = {
      k: np.mean([problem.numpy_grad(problem.params, s)[k] for s in order], axis=0)
      for k in problem.params
    }
  else:
    tx = (
      optax.chain(nx.nexus(gamma), optax.sgd(1.0))
      if kind == NEXUS_SCAN
      else nx.nexus_multisteps(optax.sgd(1.0), every_k=3, inner_lr=gamma)
    )
    direction = problem.numpy_nexus(problem.params, order, gamma)
  state, metrics = one_step(kind, tx, problem, order)
  for key in problem.params:
    np.testing.assert_allclose(
      state.params[key], problem.params[key] - direction[key], rtol=2e-5, atol=2e-6
    )
  if kind == ACCUMULATE:
    expected = np.mean([problem.numpy_loss(problem.params, s) for s in order])
    np.testing.assert_allclose(metrics["train_loss"], expected, rtol=1e-5)
  assert int(state.step) == 1 and int(state.skipped_steps) == 0


@pytest.mark.parametrize("kind", [ACCUMULATE, NEXUS_SCAN])
def test_a_non_finite_step_is_skipped_and_counted(kind, problem):
  tx = optax.chain(nx.nexus(0.05), optax.adam(0.1)) if kind == NEXUS_SCAN else optax.adam(0.1)
  poisoned = problem.microbatches([0, 1, 2])
  poisoned["x"][:] = np.nan  # every micro-batch: Nexus skips single ones on its own
  params, state = start_state(tx, problem)
  step = jax.jit(make_train_step(softmax_loss, tx, kind))
  after, metrics = step(state, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), poisoned))
  assert not bool(metrics["finite"]) and int(after.skipped_steps) == 1
  for key in params:
    np.testing.assert_array_equal(after.params[key], params[key])
  clean = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), problem.microbatches([0, 1, 2]))
  moved, _ = step(after, clean)
  assert int(moved.skipped_steps) == 1
  assert all(
    np.isfinite(v).all() and not np.array_equal(v, params[k]) for k, v in moved.params.items()
  )


@pytest.mark.parametrize("kind", [ACCUMULATE, NEXUS_SCAN, NEXUS_MULTISTEPS])
def test_after_skipped_steps_the_logged_lr_is_the_applied_one_and_wsd_ends_at_its_floor(
  kind, problem
):
  config = TrainConfig(
    lr=0.5, steps=12, warmup_fraction=0.25, decay_fraction=0.5, final_lr_fraction=0.1
  )
  schedule = learning_rate_schedule(config)
  tx = {
    ACCUMULATE: optax.sgd(schedule),
    NEXUS_SCAN: optax.chain(nx.nexus(0.05), optax.sgd(schedule)),
    NEXUS_MULTISTEPS: nx.nexus_multisteps(optax.sgd(schedule), every_k=3, inner_lr=0.05),
  }[kind]
  params, state = start_state(tx, problem)
  step = jax.jit(make_train_step(softmax_loss, tx, kind))
  order, gamma, poisoned_steps = [0, 1, 2], 0.05, {3, 7, 8}
  clean = problem.microbatches(order)
  poisoned = problem.microbatches(order)
  poisoned["x"][:] = np.nan  # every micro-batch: Nexus skips single ones on its own
  for number in range(1, config.steps + 1):
    batches = poisoned if number in poisoned_steps else clean
    before = jax.tree.map(np.asarray, state.params)
    state, metrics = step(state, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), batches))
    logged_lr = float(schedule(number - 1))  # what train.pretrain logs for step `number`
    assert [int(c) for c in schedule_counts(state.opt_state)] == [number] == [int(state.step)]
    # Nexus's own count (its inner_lr schedule's argument) advances with the step too.
    is_nexus = lambda n: isinstance(n, (nx.NexusState, nx.NexusMultiStepsState))  # noqa: E731
    nexus_counts = [
      node.outer_count if isinstance(node, nx.NexusMultiStepsState) else node.count
      for node in jax.tree.leaves(state.opt_state, is_leaf=is_nexus)
      if is_nexus(node)
    ]
    assert [int(c) for c in nexus_counts] == ([] if kind == ACCUMULATE else [number])
    assert bool(metrics["skipped"]) == (number in poisoned_steps)
    if number in poisoned_steps:
      assert all(np.array_equal(state.params[k], before[k]) for k in before)
      continue
    # Plain SGD: the update is -lr * direction, with the direction in float64 NumPy.
    if kind == ACCUMULATE:
      direction = {
        k: np.mean([problem.numpy_grad(before, s)[k] for s in order], axis=0) for k in before
      }
    else:
      direction = problem.numpy_nexus(before, order, gamma)
    applied = [
      np.asarray(before[k] - state.params[k], np.float64).ravel() / direction[k].ravel()
      for k in before
    ]
    np.testing.assert_allclose(np.concatenate(applied), logged_lr, rtol=2e-3)
  assert int(state.skipped_steps) == len(poisoned_steps)
  # The last update took the last decay step, and the schedule now stands at its floor
  # (the schedule reaches it at count `steps`, so no update is wasted at the floor).
  assert math.isclose(logged_lr, float(schedule(config.steps - 1)), rel_tol=1e-6)
  (count,) = schedule_counts(state.opt_state)
  assert math.isclose(float(schedule(count)), config.lr * config.final_lr_fraction, rel_tol=1e-6)


def test_a_skipped_nexus_step_reports_its_own_attempt(problem):
  tx = optax.chain(nx.nexus(0.05), optax.adam(0.1))
  params, state = start_state(tx, problem)
  step = jax.jit(make_train_step(softmax_loss, tx, NEXUS_SCAN))
  to_jax = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)  # noqa: E731
  state, first = step(state, to_jax(problem.microbatches([0, 1, 2])))
  poisoned = problem.microbatches([0, 1, 2])
  poisoned["x"][:] = np.nan
  _, metrics = step(state, to_jax(poisoned))
  assert bool(metrics["skipped"]) and not bool(first["skipped"])
  # The discarded attempt skipped all three inner steps; the kept state's metrics did not.
  assert int(metrics["nexus/skipped_steps"]) == 3 and int(first["nexus/skipped_steps"]) == 0
  assert np.isnan(float(metrics["nexus/inner_loss"]))


def test_wsd_and_cosine_schedules_follow_their_formulas():
  wsd = learning_rate_schedule(TrainConfig(lr=2.0, steps=1000))  # warmup 10, decay 100
  for step, want in [(0, 0.2), (4, 1.0), (9, 2.0), (500, 2.0), (900, 2.0), (950, 1.0), (999, 0.02)]:
    assert math.isclose(float(wsd(step)), want, rel_tol=1e-5), step
  cosine = learning_rate_schedule(
    TrainConfig(lr=2.0, steps=1010, schedule="cosine", warmup_fraction=10 / 1010)
  )
  for step in (10, 300, 510, 1009):
    want = 1.0 + math.cos(math.pi * (step - 10) / 1000)
    assert math.isclose(float(cosine(step)), want, rel_tol=1e-4, abs_tol=1e-6), step


def test_muon_orthogonalizes_every_block_matrix_over_its_non_layer_axes():
  from flax import nnx

  from models import PRESETS, Llama

  params = nnx.to_pure_dict(
    nnx.state(nnx.eval_shape(lambda: Llama(PRESETS["tiny"], rngs=nnx.Rngs(0))), nnx.Param)
  )
  dims = muon_dimension_numbers(params)
  flat = dict(
    jax.tree_util.tree_leaves_with_path(
      dims, is_leaf=lambda x: x is None or isinstance(x, optax.contrib.MuonDimensionNumbers)
    )
  )
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    name = jax.tree_util.keystr(path)
    spec = flat[path]
    if "norm" in name or "blocks" not in name:
      assert spec is None, name
      continue
    axes = set(np.atleast_1d(spec.reduction_axis)) | set(np.atleast_1d(spec.output_axis))
    assert axes == set(range(1, leaf.ndim)), name  # axis 0 stacks the layers


# ---------------------------------------------------------------- end to end


def test_a_2x2x2_mesh_matches_one_device_and_restores_onto_another_mesh(
  small_cache, reference_run, tmp_path
):
  reference = losses(reference_run)
  out = tmp_path / "mesh"
  checked(run_cli(tiny_args(small_cache, out, mesh="data=2,fsdp=2,tensor=2"), devices=8))
  sharded = losses(out)
  assert sorted(sharded) == list(range(1, 9))
  assert max(abs(sharded[s] - reference[s]) for s in reference) < TOLERANCE
  shutil.rmtree(out / "checkpoints" / "8")  # as if preempted after step 4's checkpoint
  result = checked(
    run_cli([*tiny_args(small_cache, out, mesh="fsdp=4,tensor=2"), "--resume"], devices=8)
  )
  assert "resumed from checkpoint 4" in result.stdout
  resumed = losses(out)
  assert sorted(resumed) == list(range(1, 9))  # the log was cut back to step 4, then continued
  assert max(abs(resumed[s] - reference[s]) for s in range(5, 9)) < TOLERANCE
  # Adam divides by sqrt(v), so where a gradient is near zero the summation-order noise of
  # another mesh moves an element by more than 1e-5; params are compared tensor by tensor
  # in norm (a misplaced shard or a wrong restore would be off by order one).
  for a, b in zip(
    final_params(out, 8, reference_run), final_params(reference_run, 8, reference_run)
  ):
    assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(b)


def free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


@pytest.mark.serial  # two JAX processes, one per core
def test_two_processes_train_together_and_resume_in_one(small_cache, reference_run, tmp_path):
  out = tmp_path / "two"
  address = f"127.0.0.1:{free_port()}"
  workers = [
    run_cli(
      [
        *tiny_args(small_cache, out, mesh="data=-1"),
        "--coordinator-address",
        address,
        "--num-processes",
        2,
        "--process-id",
        index,
      ],
      wait=False,
    )
    for index in range(2)
  ]
  outputs = [worker.communicate(timeout=600) for worker in workers]
  for worker, (_, err) in zip(workers, outputs):
    assert worker.returncode == 0, err[-4000:]
  assert "2 process(es)" in outputs[0][0] and "'data': 2" in outputs[0][0]
  reference = losses(reference_run)
  together = losses(out)
  assert sorted(together) == list(range(1, 9))
  assert max(abs(together[s] - reference[s]) for s in reference) < TOLERANCE
  shutil.rmtree(out / "checkpoints" / "8")
  checked(run_cli([*tiny_args(small_cache, out), "--resume"]))
  alone = losses(out)
  assert max(abs(alone[s] - reference[s]) for s in range(5, 9)) < TOLERANCE


def wait_for(predicate, process, timeout=300):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return
    if process.poll() is not None:
      raise AssertionError(f"the run ended first: {process.stderr.read()[-3000:]}")
    time.sleep(0.02)
  raise AssertionError("timed out")


def logged_steps(out) -> int:
  path = pathlib.Path(out, "metrics.jsonl")
  return len(path.read_text().splitlines()) if path.exists() else 0


def test_sigkill_sigterm_and_a_corrupt_checkpoint_all_resume_exactly(small_cache, tmp_path):
  args = dict(steps=48, **{"checkpoint-every": 8, "eval-every": 24, "micro-batch-size": 8})
  reference = tmp_path / "uninterrupted"
  checked(run_cli(tiny_args(small_cache, reference, **args)))

  out = tmp_path / "interrupted"
  run = run_cli(tiny_args(small_cache, out, **args), wait=False)
  wait_for(lambda: (out / "checkpoints" / "8" / "commit_success.txt").exists(), run)
  run.send_signal(signal.SIGKILL)
  run.wait()
  killed_at = logged_steps(out)
  assert killed_at < 44

  run = run_cli([*tiny_args(small_cache, out, **args), "--resume"], wait=False)
  # The log is cut back to the checkpoint on resume, so growing past where the killed run
  # stopped means the resumed run is in its loop, with the SIGTERM handler installed.
  wait_for(lambda: logged_steps(out) > killed_at + 2, run)
  run.send_signal(signal.SIGTERM)
  stdout, _ = run.communicate(timeout=300)
  assert run.returncode == 0 and "SIGTERM: saved checkpoint" in stdout, stdout[-2000:]
  stopped_at = int(stdout.split("SIGTERM: saved checkpoint ")[1].split()[0])
  assert stopped_at < 48

  latest = max(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
  for file in (out / "checkpoints" / str(latest) / "state").rglob("*"):
    if file.is_file():
      file.write_bytes(b"\0garbage")
  result = checked(run_cli([*tiny_args(small_cache, out, **args), "--resume"]))
  assert f"checkpoint {latest} is unreadable" in result.stdout
  assert (out / "corrupt").is_dir()

  want, got = losses(reference), losses(out)
  assert sorted(got) == list(range(1, 49))
  assert got == want  # bit-exact: same data, same state, same compiled step
  for a, b in zip(final_params(out, 48, reference), final_params(reference, 48, reference)):
    np.testing.assert_array_equal(a, b)
  final = lambda path: json.loads(pathlib.Path(path, "metrics.jsonl").read_text().splitlines()[-1])
  assert final(out)["validation/prose/loss"] == final(reference)["validation/prose/loss"]


def test_evaluate_scores_a_text_file_like_the_model_loss(reference_run, tmp_path):
  from flax import nnx

  from models import PRESETS, Llama, next_token_loss

  seq_len = 64
  text = (
    "It is a truth universally acknowledged, that a single man in possession of a good "
    "fortune, must be in want of a wife. "
  ) * 4
  text = text[: 3 * seq_len]  # ASCII: after the leading end-of-document token, three windows
  path = tmp_path / "mine.txt"
  path.write_text(text)
  result = checked(
    run_cli(
      ["--checkpoint", reference_run, "--text-file", path, "--name", "austen", "--json"],
      module="train.evaluate",
    )
  )
  scored = json.loads(result.stdout.strip().splitlines()[-1])
  assert scored["name"] == "austen" and scored["step"] == 8 and scored["tokens"] == 3 * seq_len
  assert scored["bytes"] == 3 * seq_len

  model = Llama(PRESETS["tiny"], rngs=nnx.Rngs(0))
  graphdef, _ = nnx.split(model, nnx.Param)
  params = jax.tree.unflatten(
    jax.tree.structure(nnx.to_pure_dict(nnx.state(model, nnx.Param))),
    final_params(reference_run, 8, reference_run),
  )
  stream = np.append(256, np.frombuffer(text.encode(), np.uint8)).astype(np.int32)
  windows = np.stack([stream[i * seq_len : (i + 1) * seq_len + 1] for i in range(3)])
  want = float(next_token_loss(nnx.merge(graphdef, params), jnp.asarray(windows)))
  assert math.isclose(scored["loss"], want, rel_tol=1e-5)
  assert math.isclose(scored["bpb"], want / math.log(2), rel_tol=1e-5)

  bad = tmp_path / "latin1.txt"
  bad.write_bytes("café".encode("latin-1"))
  result = run_cli(["--checkpoint", reference_run, "--text-file", bad], module="train.evaluate")
  assert result.returncode == 2 and result.stderr.strip().startswith("error: ")
  assert "is not UTF-8" in result.stderr and "Traceback" not in result.stderr
