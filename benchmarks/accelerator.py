"""The first run on a GPU or a TPU: one prepared command, stage by stage, within a budget.

A person with one accelerator runs, once::

  python -m benchmarks.accelerator --out DIR [--budget-s 480]

and gets ``DIR/accelerator.json`` and ``DIR/accelerator.md``, rewritten as each stage ends,
so that a run cut off keeps what it measured. The stages, in order:

  environment  device kind and count, jax, jaxlib and the CUDA or TPU plugin's versions,
               device memory, the nominal bf16 peak of the chip when it is known;
  tests        the pytest marker ``accelerator`` (bf16 paths, fused attention, stochastic
               rounding, sharding over the real devices): pass, fail and skip counts;
  step         the 130M model at bf16 compute with float32 parameters, Nexus against
               gradient accumulation at the same K and micro-batch: ``time_ratio`` (median of
               per-round ratios, interleaved), ``mfu`` against a bf16 matmul peak measured in
               the same process and against the nominal peak, ``memory_ratio`` of the peak
               bytes (``memory_stats()``, each optimizer in a fresh process, as the peak
               never resets), tokens/s, compile times, and the top device ops of a profiled
               Nexus step;
  attention    ``jax.nn.dot_product_attention`` (``"cudnn"`` on a GPU, ``"xla"`` elsewhere)
               against the model's own XLA attention: the maximum relative error of the loss
               and of the gradients, and the fused kernel's custom call in the compiled HLO;
  largest      if the budget has time left: the largest preset whose compiled step fits one
               device (from ``memory_analysis()``), with its step time and MFU.

Each stage runs in its own child process (``--worker``), with a time limit from the
remaining budget shared among the stages left in proportion to their planned shares:
a TPU admits one process at a time, a GPU's allocator keeps its peak for the life of a
process, and a stage that hangs or dies costs its own share only. The children share a
persistent compilation cache, so the memory children do not compile the step again.

``--dry-run`` takes the same code path with the ``tiny`` preset at bf16 compute, short
rounds and a budget of 280 s, and with two host devices for the tests' sharding; peak
memory then comes from ``compiled.memory_analysis()``, as the CPU's ``memory_stats()``
is empty. ``tests/test_accelerator.py`` runs a shortened dry run in the default suite.

The script imports nothing beyond jax, flax, optax, chex, numpy and pytest (no grain, no
``scripts/env.sh``) and reads only synthetic tokens, so it runs on a bare device machine.
"""

import argparse
import collections
import dataclasses
import gzip
import importlib.metadata
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree

# Importing JAX starts no backend: that happens in the children, at their first device call.
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from flax import nnx

from benchmarks.common import add_out_flag, paired_ratio, summarize, time_rounds, write_json
from benchmarks.train_step import matmul_peak_flops
from models import Llama, get_preset, next_token_loss
from train import parallel
from train.build import build_training
from train.presets import get_run_preset

ROOT = pathlib.Path(__file__).resolve().parents[1]
STAGES = ("environment", "tests", "step", "attention", "largest")
# Planned shares of the budget (the device run's 480 s: 19, 96, 192, 53, 120 s), each at
# least MIN_STAGE_S. Unused time passes on to the stages after, in proportion to their shares.
SHARES = {"environment": 0.04, "tests": 0.20, "step": 0.40, "attention": 0.11, "largest": 0.25}
MIN_STAGE_S = 15.0
# Dense bf16 FLOP/s per chip from the vendors' data sheets, by a substring of
# ``device_kind`` (lower case), most specific first.
NOMINAL_BF16_PEAKS = (
  ("h100 pcie", 756e12),
  ("h100", 989.4e12),
  ("h200", 989.4e12),
  ("gh200", 989.4e12),
  ("b200", 2250e12),
  ("a100", 312e12),
  ("l4", 121e12),
  ("tpu v6 lite", 918e12),
  ("tpu v5 lite", 197e12),
  ("tpu v5p", 459e12),
  ("tpu v5", 459e12),
  ("tpu v4", 275e12),
  ("tpu v3", 123e12),
)
ACCUMULATION, NEXUS = "adamw", "nexus"
CUDNN_CALL = re.compile(r'custom_call_target="([^"]*(?:cudnn|fmha)[^"]*)"', re.IGNORECASE)
RESULT_JSON, RESULT_MD = "accelerator.json", "accelerator.md"


@dataclasses.dataclass(frozen=True)
class Plan:
  """What the stages run: the device run's sizes, or the dry run's.

  Attributes:
    dry_run: the CPU rehearsal.
    preset: model and run preset of the step and attention stages.
    micro_batch_size, seq_len, microbatches: the step stage's batch (K micro-batches).
    attention_batch: sequences of the attention stage's one batch.
    rounds: the most timed rounds of the step stage (fewer when the time limit says so).
    matmul_size: side of the square bf16 matmul whose best time is the measured peak.
    largest: candidate presets of the largest stage, largest first.
    test_filter: a pytest ``-k`` expression narrowing the test stage (the suite's dry run).
    test_host_devices: host CPU devices the tests see on CPU, so that sharding is exercised.
  """

  dry_run: bool
  preset: str
  micro_batch_size: int
  seq_len: int
  microbatches: int
  attention_batch: int
  rounds: int
  matmul_size: int
  largest: tuple[str, ...]
  test_filter: str | None = None
  test_host_devices: int = 2


DEVICE_PLAN = Plan(
  dry_run=False,
  preset="130m",
  micro_batch_size=16,
  seq_len=4096,
  microbatches=4,
  attention_batch=4,
  rounds=10,
  matmul_size=8192,
  largest=("2.3b", "1.2b", "520m", "300m", "130m"),
)
DRY_RUN_PLAN = Plan(
  dry_run=True,
  preset="tiny",
  micro_batch_size=4,
  seq_len=64,
  microbatches=4,
  attention_batch=2,
  rounds=3,
  matmul_size=512,
  largest=("mini", "tiny"),
)


def nominal_bf16_peak(device_kind: str) -> float | None:
  """The chip's dense bf16 FLOP/s from its data sheet, or None for a kind not listed.

  Example:
    >>> nominal_bf16_peak("NVIDIA H200"), nominal_bf16_peak("cpu")
    (989400000000000.0, None)
  """
  kind = device_kind.lower()
  return next((peak for name, peak in NOMINAL_BF16_PEAKS if name in kind), None)


def budget_shares(remaining_s: float, stages) -> dict[str, float]:
  """The seconds (to 0.1 s) each of ``stages`` may take out of ``remaining_s``, by its share.

  Example:
    >>> budget_shares(60.0, ["tests", "step"])
    {'tests': 20.0, 'step': 40.0}
  """
  total = sum(SHARES[stage] for stage in stages)
  return {stage: round(remaining_s * SHARES[stage] / total, 1) for stage in stages}


# ---------------------------------------------------------------------------------------
# The children: one stage each, in a fresh process.


def _one_device_mesh():
  return parallel.make_mesh(parallel.parse_mesh("data=1", jax.device_count()), False)


def _model_config(preset: str):
  return get_preset(preset, compute_dtype="bfloat16", param_dtype="float32")


def _trainings(plan: Plan, preset: str, optimizers):
  """``build_training`` of the CLI's own step for each optimizer, on one device."""
  mesh = _one_device_mesh()
  batch = dict(
    micro_batch_size=plan.micro_batch_size, seq_len=plan.seq_len, microbatches=plan.microbatches
  )
  model_config = _model_config(preset)
  run_preset = plan.preset if preset in ("tiny", "mini", "demo") else preset
  return {
    name: build_training(
      get_run_preset(run_preset, optimizer=name, **batch), mesh, model_config=model_config
    )
    for name in optimizers
  }


def _synthetic_tokens(plan: Plan, training, seed: int = 0):
  shape = (plan.microbatches, plan.micro_batch_size, plan.seq_len + 1)
  tokens = np.random.default_rng(seed).integers(0, 257, shape).astype(np.int32)
  return jax.device_put(tokens, training.batch_sharding)


def _compiled(step, *args) -> tuple:
  """``(compiled, lower_s, compile_s)`` of a jitted function at ``args``."""
  start = time.perf_counter()
  lowered = step.lower(*args)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  return compiled, lowered_at - start, time.perf_counter() - lowered_at


def _program_bytes(compiled) -> dict:
  """XLA's buffer sizes of one compiled program, and the bytes it holds at once:
  arguments and outputs not aliased to them, plus its temporaries."""
  analysis = compiled.memory_analysis()
  sizes = {
    name: int(getattr(analysis, f"{name}_size_in_bytes"))
    for name in ("argument", "output", "alias", "temp", "generated_code")
  }
  sizes["peak"] = sizes["argument"] + sizes["output"] - sizes["alias"] + sizes["temp"]
  return sizes


def _flops(compiled) -> float | None:
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list) else analysis
  flops = (analysis or {}).get("flops")
  return float(flops) if flops else None


def _device_memory_limit() -> tuple[int, str]:
  """Bytes one device may hold, and where the figure comes from."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if stats.get("bytes_limit"):
    return int(stats["bytes_limit"]), "memory_stats bytes_limit"
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "host memory (no memory_stats)"


def environment_worker(plan: Plan, deadline: float, result: dict, save) -> None:
  devices = jax.local_devices()
  device = devices[0]
  plugins = sorted(
    f"{dist.metadata['Name']} {dist.version}"
    for dist in importlib.metadata.distributions()
    if re.match(r"^(jax[-_](cuda|rocm)\d*[-_](plugin|pjrt)|libtpu.*)$", dist.metadata["Name"] or "")
  )
  limit, limit_source = _device_memory_limit()
  result.update(
    platform=device.platform,
    device_kind=device.device_kind,
    device_count=jax.device_count(),
    local_device_count=len(devices),
    process_count=jax.process_count(),
    jax=jax.__version__,
    jaxlib=jaxlib.__version__,
    platform_version=str(device.client.platform_version),
    plugins=plugins,
    device_memory_bytes=limit,
    device_memory_source=limit_source,
    nominal_bf16_peak_flops=nominal_bf16_peak(device.device_kind),
    python=platform.python_version(),
    host_cpus=os.cpu_count(),
  )
  save()
  try:  # it also runs nvidia-smi where there is one
    result["environment_info"] = jax.print_environment_info(return_string=True)
  except Exception as error:
    result["environment_info"] = f"{type(error).__name__}: {error}"[:300]


def tests_files() -> list[pathlib.Path]:
  """The test modules that hold tests marked ``accelerator``."""
  marked = re.compile(r"^(pytestmark = .*\baccelerator\b|@pytest\.mark\.accelerator\b)", re.M)
  return [p for p in sorted((ROOT / "tests").glob("test_*.py")) if marked.search(p.read_text())]


def junit_counts(xml_text: str) -> dict:
  """Passed, failed, errors and skipped of a pytest ``--junitxml`` report, and the failed
  tests' names with the first line of their message."""
  root = ElementTree.fromstring(xml_text)
  counts = collections.Counter()
  failures = []
  for case in root.iter("testcase"):
    outcome = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
    kind = {"failure": "failed", "error": "errors", "skipped": "skipped"}.get(
      getattr(outcome, "tag", None), "passed"
    )
    counts[kind] += 1
    if kind in ("failed", "errors"):
      message = (outcome.get("message") or "").strip().splitlines()
      failures.append(
        f"{case.get('classname')}::{case.get('name')}: {message[0] if message else ''}"
      )
  return {kind: counts[kind] for kind in ("passed", "failed", "errors", "skipped")} | {
    "failures": failures
  }


def run_tests_stage(plan: Plan, platform_name: str | None, limit_s: float) -> dict:
  """The ``accelerator`` tests in one pytest process (no backend is open in this one)."""
  files = tests_files()
  with tempfile.TemporaryDirectory(prefix="nexus-accelerator-tests-") as scratch:
    xml = pathlib.Path(scratch) / "junit.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    command += ["-m", "accelerator and not slow", f"--junitxml={xml}", "-o", "addopts="]
    command += ["-k", plan.test_filter] if plan.test_filter else []
    env = dict(os.environ)
    if platform_name == "cpu":
      forced = f"--xla_force_host_platform_device_count={plan.test_host_devices}"
      env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {forced}".strip()
    else:  # the tests' fast CPU code generation is not what a device user compiles
      env["NEXUS_TEST_XLA_OPT_LEVEL"] = "2"
    start = time.perf_counter()
    try:
      out = subprocess.run(
        command + [str(p.relative_to(ROOT)) for p in files],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=limit_s,
        check=False,
      )
    except subprocess.TimeoutExpired:
      return {"status": f"timed out after {limit_s:.0f} s", "files": [p.name for p in files]}
    result = {"seconds": round(time.perf_counter() - start, 1), "files": [p.name for p in files]}
    if not xml.exists():
      tail = (out.stdout + out.stderr).strip().splitlines()[-5:]
      return result | {"status": f"pytest exited {out.returncode}: {' | '.join(tail)}"}
    counts = junit_counts(xml.read_text())
  ok = counts["failed"] == counts["errors"] == 0 and counts["passed"] > 0
  return result | counts | {"status": "ok" if ok else "failed", "pytest_exit": out.returncode}


def profile_top_ops(run, top: int = 10) -> list[dict]:
  """The ops that took longest in one ``run()`` under ``jax.profiler``: device ops where the
  trace has a device, else the XLA threads' ops (CPU), summed by name."""
  with tempfile.TemporaryDirectory(prefix="nexus-accelerator-profile-") as folder:
    with jax.profiler.trace(folder, create_perfetto_trace=True):
      run()
    traces = sorted(pathlib.Path(folder).rglob("perfetto_trace.json.gz"))
    if not traces:
      return []
    with gzip.open(traces[-1], "rt") as file:
      trace = json.load(file)
  return summarize_trace(trace, top)


def summarize_trace(trace, top: int = 10) -> list[dict]:
  """Total microseconds per op name of a Chrome/Perfetto trace's complete events, on the
  device processes if there are any (``/device:...``), else on threads other than Python's.

  Example:
    >>> meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}}]
    >>> ops = [{"ph": "X", "pid": 1, "tid": 2, "name": "gemm", "dur": 30.0},
    ...        {"ph": "X", "pid": 1, "tid": 2, "name": "gemm", "dur": 10.0}]
    >>> summarize_trace({"traceEvents": meta + ops})
    [{'op': 'gemm', 'us': 40.0, 'calls': 2, 'share': 1.0}]
  """
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  processes, threads = {}, {}
  for event in events:
    if event.get("ph") == "M" and event.get("name") == "process_name":
      processes[event["pid"]] = event["args"]["name"]
    if event.get("ph") == "M" and event.get("name") == "thread_name":
      threads[(event["pid"], event.get("tid"))] = event["args"]["name"]
  devices = {pid for pid, name in processes.items() if name.startswith("/device:")}

  def counted(event) -> bool:
    if devices:
      return event["pid"] in devices
    # On the host, XLA's ops are named like HLO (dot.155, fusion.3); the runtime's own
    # scopes around them are C++ names (ThunkExecutor::Execute) and Python's frames start
    # with "$".
    thread = threads.get((event["pid"], event.get("tid")), "")
    return thread != "python" and "::" not in event["name"] and not event["name"].startswith("$")

  totals, calls = collections.Counter(), collections.Counter()
  for event in events:
    if event.get("ph") == "X" and counted(event):
      totals[event["name"]] += float(event.get("dur", 0.0))
      calls[event["name"]] += 1
  whole = sum(totals.values()) or 1.0
  return [
    {"op": name, "us": round(us, 1), "calls": calls[name], "share": round(us / whole, 4)}
    for name, us in totals.most_common(top)
  ]


def step_worker(plan: Plan, deadline: float, result: dict, save) -> None:
  trainings = _trainings(plan, plan.preset, (ACCUMULATION, NEXUS))
  model_config = trainings[NEXUS].model_config
  tokens = _synthetic_tokens(plan, trainings[NEXUS])
  tokens_per_step = plan.microbatches * plan.micro_batch_size * plan.seq_len
  states = {name: t.init() for name, t in trainings.items()}
  steps, per_optimizer = {}, {}
  for name, training in trainings.items():
    steps[name], lower_s, compile_s = _compiled(training.step, states[name], tokens)
    per_optimizer[name] = {
      "lower_s": round(lower_s, 2),
      "compile_s": round(compile_s, 2),
      "xla_bytes": _program_bytes(steps[name]),
      "xla_flops": _flops(steps[name]),
    }
  model_flops = model_config.flops_per_token(plan.seq_len) * tokens_per_step
  result.update(
    preset=plan.preset,
    compute_dtype=model_config.compute_dtype,
    param_dtype=model_config.param_dtype,
    microbatches=plan.microbatches,
    micro_batch_size=plan.micro_batch_size,
    seq_len=plan.seq_len,
    tokens_per_step=tokens_per_step,
    model_flops_per_step=model_flops,
    optimizers=per_optimizer,
  )
  save()

  def one_step(name):
    states[name], metrics = steps[name](states[name], tokens)
    jax.block_until_ready(metrics)

  start = time.perf_counter()
  for name in steps:  # warm-up: first calls, autotuning
    one_step(name)
  round_s = time.perf_counter() - start
  peak = matmul_peak_flops(plan.matmul_size, jnp.bfloat16)
  nominal = nominal_bf16_peak(jax.local_devices()[0].device_kind)
  # Rounds from the warm-up's pace, leaving a fifth of the time left for the profile.
  fit = int((deadline - time.time()) * 0.8 / max(round_s, 1e-6)) - 1
  rounds = max(2, min(plan.rounds, fit))
  result["planned"] = {
    "step_s_at_measured_peak": model_flops / peak,
    "warmup_round_s": round(round_s, 3),
    "rounds": rounds,
  }
  times = time_rounds(one_step, tuple(steps), rounds, warmup=1)
  for name in steps:
    median = summarize(times[name]).median
    per_optimizer[name].update(
      median_step_s=round(median, 5),
      tokens_per_s=round(tokens_per_step / median, 1),
      mfu=round(model_flops / median / peak, 4),
      mfu_nominal=round(model_flops / median / nominal, 4) if nominal else None,
    )
  result.update(
    time_ratio=round(paired_ratio(times[NEXUS], times[ACCUMULATION]), 4),
    mfu=per_optimizer[NEXUS]["mfu"],
    mfu_nominal=per_optimizer[NEXUS]["mfu_nominal"],
    tokens_per_s=per_optimizer[NEXUS]["tokens_per_s"],
    measured_bf16_peak_flops=peak,
    nominal_bf16_peak_flops=nominal,
    rounds=rounds,
  )
  save()
  try:
    result["profile_top_ops"] = profile_top_ops(lambda: one_step(NEXUS))
  except Exception as error:  # a profiler missing on the device costs the trace only
    result["profile_error"] = f"{type(error).__name__}: {error}"[:300]


def memory_worker(plan: Plan, deadline: float, result: dict, save, optimizer: str) -> None:
  """The peak device bytes of two steps of ``optimizer`` in this fresh process."""
  training = _trainings(plan, plan.preset, (optimizer,))[optimizer]
  tokens = _synthetic_tokens(plan, training)
  state = training.init()
  compiled, _, compile_s = _compiled(training.step, state, tokens)
  for _ in range(2):
    state, metrics = compiled(state, tokens)
    jax.block_until_ready(metrics)
  stats = jax.local_devices()[0].memory_stats() or {}
  xla = _program_bytes(compiled)
  result.update(
    optimizer=optimizer,
    compile_s=round(compile_s, 2),
    peak_bytes=int(stats.get("peak_bytes_in_use") or xla["peak"]),
    source="memory_stats" if stats.get("peak_bytes_in_use") else "memory_analysis",
    xla_peak_bytes=xla["peak"],
  )


def attention_implementation(platform_name: str) -> str:
  """The fused path to hold against the model's own: cuDNN's flash attention on NVIDIA GPUs,
  ``jax.nn.dot_product_attention``'s XLA path elsewhere."""
  return "cudnn" if platform_name == "gpu" else "xla"


def _relative_errors(got, want) -> tuple[float, float]:
  """Loss's relative error, and the largest relative L2 error over the gradient's leaves, in
  float64 NumPy."""
  (loss, grads), (loss_ref, grads_ref) = jax.device_get(got), jax.device_get(want)
  loss_error = abs(float(loss) - float(loss_ref)) / abs(float(loss_ref))
  grad_error = max(
    float(np.linalg.norm(np.float64(g) - np.float64(r)) / np.linalg.norm(np.float64(r)))
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref))
  )
  return loss_error, grad_error


def attention_worker(plan: Plan, deadline: float, result: dict, save) -> None:
  platform_name = jax.local_devices()[0].platform
  implementation = attention_implementation(platform_name)
  base = _model_config(plan.preset)
  shape = (plan.attention_batch, plan.seq_len + 1)
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, 257, shape), np.int32)
  outputs, programs = {}, {}
  for name, impl in (("model", None), (implementation, implementation)):
    model = Llama(dataclasses.replace(base, attention_impl=impl), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    loss_and_grads = jax.jit(
      jax.value_and_grad(
        lambda p, graphdef=graphdef: next_token_loss(nnx.merge(graphdef, p), tokens)
      )
    )
    compiled, _, compile_s = _compiled(loss_and_grads, params)
    outputs[name] = jax.block_until_ready(compiled(params))
    start = time.perf_counter()
    jax.block_until_ready(compiled(params))
    programs[name] = {"compile_s": round(compile_s, 2), "step_s": time.perf_counter() - start}
    if impl is not None:
      calls = sorted(set(CUDNN_CALL.findall(compiled.as_text())))
    del model, params
  loss_error, grad_error = _relative_errors(outputs[implementation], outputs["model"])
  result.update(
    implementation=implementation,
    reference="models.llama.causal_attention (the XLA path)",
    compute_dtype=base.compute_dtype,
    batch=list(shape),
    loss_relative_error=loss_error,
    grad_max_relative_error=grad_error,
    fused_custom_calls=calls,
    fused_kernel_called=bool(calls) if implementation == "cudnn" else None,
    programs=programs,
  )


def largest_worker(plan: Plan, deadline: float, result: dict, save, peak: float | None) -> None:
  """The largest candidate whose compiled Nexus step fits one device, timed."""
  limit, source = _device_memory_limit()
  result.update(device_memory_bytes=limit, device_memory_source=source, tried={})
  for preset in plan.largest:
    training = _trainings(plan, preset, (NEXUS,))[NEXUS]
    tokens = jax.ShapeDtypeStruct(
      (plan.microbatches, plan.micro_batch_size, plan.seq_len + 1),
      jnp.int32,
      sharding=training.batch_sharding,
    )
    compiled, _, compile_s = _compiled(training.step, training.abstract_state, tokens)
    needed = _program_bytes(compiled)["peak"]
    fits = needed <= 0.9 * limit
    result["tried"][preset] = {"bytes": needed, "fits": fits, "compile_s": round(compile_s, 2)}
    save()
    if fits:
      break
  else:
    result["preset"] = None
    return
  config = training.model_config
  state = training.init()
  batch = _synthetic_tokens(plan, training)
  step_times = []
  while len(step_times) < 4 and (not step_times or time.time() + 2 * step_times[-1] < deadline):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    step_times.append(time.perf_counter() - start)
  timed = step_times[1:] or step_times  # the first call also loads and autotunes
  step_s = summarize(timed).median
  tokens_per_step = plan.microbatches * plan.micro_batch_size * plan.seq_len
  flops = config.flops_per_token(plan.seq_len) * tokens_per_step
  peak = peak or matmul_peak_flops(plan.matmul_size, jnp.bfloat16)
  nominal = nominal_bf16_peak(jax.local_devices()[0].device_kind)
  result.update(
    preset=preset,
    non_embedding_params=config.non_embedding_params(),
    step_s=round(step_s, 4),
    timed_steps=len(timed),
    tokens_per_s=round(tokens_per_step / step_s, 1),
    mfu=round(flops / step_s / peak, 4),
    mfu_nominal=round(flops / step_s / nominal, 4) if nominal else None,
  )


WORKERS = {
  "environment": environment_worker,
  "step": step_worker,
  "memory": memory_worker,
  "attention": attention_worker,
  "largest": largest_worker,
}


def run_worker(args) -> None:
  """One stage in this process: its figures go to ``--result`` after every part."""
  fields = json.loads(args.plan)
  plan = Plan(**{**fields, "largest": tuple(fields["largest"])})
  result: dict = {}
  save = lambda: write_json(args.result, result)
  extra = json.loads(args.worker_args)
  WORKERS[args.worker](plan, args.deadline, result, save, **extra)
  result["status"] = "ok"
  save()


# ---------------------------------------------------------------------------------------
# The parent: stages in order, each in a child, the report after each.


class Report:
  """``accelerator.json`` and ``accelerator.md`` in ``out``, rewritten after every stage."""

  def __init__(self, out: pathlib.Path, plan: Plan, command: str, budget_s: float):
    self.out = out
    self.data = {
      "command": command,
      "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
      "dry_run": plan.dry_run,
      "budget_s": budget_s,
      "plan": dataclasses.asdict(plan),
      "stages": {},
    }

  def record(self, stage: str, figures: dict) -> None:
    self.data["stages"][stage] = figures
    self.data["summary"] = summary(self.data["stages"])
    self.data["elapsed_s"] = round(
      sum(s.get("seconds", 0) for s in self.data["stages"].values()), 1
    )
    write_json(self.out / RESULT_JSON, self.data)
    (self.out / RESULT_MD).write_text(markdown(self.data))


def run_child(stage: str, plan: Plan, limit_s: float, env: dict, **extra) -> dict:
  """``stage``'s worker in a child process, killed at ``limit_s``; what it saved so far."""
  with tempfile.TemporaryDirectory(prefix=f"nexus-accelerator-{stage}-") as scratch:
    result = pathlib.Path(scratch) / "result.json"
    deadline = time.time() + limit_s - 2.0
    command = [sys.executable, "-m", "benchmarks.accelerator", "--worker", stage]
    command += ["--plan", json.dumps(dataclasses.asdict(plan)), "--result", str(result)]
    command += ["--deadline", str(deadline), "--worker-args", json.dumps(extra)]
    start = time.perf_counter()
    try:
      out = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit_s, check=False
      )
      status = None if out.returncode == 0 else f"exited {out.returncode}: {last_error(out.stderr)}"
    except subprocess.TimeoutExpired:
      status = f"timed out after {limit_s:.0f} s"
    figures = json.loads(result.read_text()) if result.exists() else {}
  figures["seconds"] = round(time.perf_counter() - start, 1)
  if status is not None:
    figures["status"] = status
  return figures


def last_error(stderr: str) -> str:
  """The last line of a child's output that says what went wrong."""
  lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
  errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b", line)]
  return (errors or lines or ["no output"])[-1][:300]


def child_environment(scratch: pathlib.Path) -> dict:
  """The children's environment: one persistent compilation cache, on-demand GPU memory
  (a child's peak is then its own), unbuffered output."""
  env = dict(os.environ, PYTHONUNBUFFERED="1", XLA_PYTHON_CLIENT_PREALLOCATE="false")
  env.setdefault("JAX_COMPILATION_CACHE_DIR", str(scratch / "xla-cache"))
  env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  env.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
  return env


def run_stages(plan: Plan, report: Report, budget_s: float, env: dict) -> None:
  start = time.perf_counter()
  platform_name = None
  for index, stage in enumerate(STAGES):
    remaining = budget_s - (time.perf_counter() - start)
    share = budget_shares(max(remaining, 0.0), STAGES[index:])[stage]
    limit = min(remaining, max(share, MIN_STAGE_S))
    print(f"[{index + 1}/{len(STAGES)}] {stage}: up to {limit:.0f} s", flush=True)
    if limit < 5:
      figures = {"status": f"skipped: {remaining:.0f} s of the budget left"}
    elif stage == "tests":
      figures = run_tests_stage(plan, platform_name, limit)
    elif stage == "step":
      figures = run_step_stage(plan, report, limit, env)
    elif stage == "largest":
      peak = report.data["stages"].get("step", {}).get("measured_bf16_peak_flops")
      figures = run_child(stage, plan, limit, env, peak=peak)
    else:
      figures = run_child(stage, plan, limit, env)
    if stage == "environment":
      platform_name = figures.get("platform")
    report.record(stage, figures)
    print(f"    {stage}: {figures.get('status')} in {figures.get('seconds', 0):.1f} s", flush=True)


def run_step_stage(plan: Plan, report: Report, limit_s: float, env: dict) -> dict:
  """Timing in one child, then each optimizer's peak memory in a child of its own."""
  start = time.perf_counter()
  figures = run_child("step", plan, limit_s * 0.7, env)
  report.record("step", figures)
  peaks = {}
  for optimizer in (ACCUMULATION, NEXUS):
    left = limit_s - (time.perf_counter() - start)
    memory = run_child("memory", plan, left / (2 - len(peaks)), env, optimizer=optimizer)
    peaks[optimizer] = memory
  figures["memory"] = peaks
  if all(m.get("status") == "ok" for m in peaks.values()):
    figures["memory_ratio"] = round(
      peaks[NEXUS]["peak_bytes"] / peaks[ACCUMULATION]["peak_bytes"], 5
    )
    figures["memory_source"] = peaks[NEXUS]["source"]
  elif figures.get("status") == "ok":
    figures["status"] = "memory: " + "; ".join(m.get("status", "?") for m in peaks.values())
  figures["seconds"] = round(time.perf_counter() - start, 1)
  return figures


def _gib(value) -> str:
  return f"{value / 2**30:.3f} GiB" if value else "n/a"


def _flat(value) -> str:
  if isinstance(value, dict):
    return ", ".join(f"{key} {_flat(item)}" for key, item in value.items())
  return f"{value:.4g}" if isinstance(value, float) else str(value)


def _tflops(value) -> str:
  return f"{value / 1e12:.1f} TFLOP/s" if value else "unknown"


def _percent(value) -> str:
  return f"{value * 100:.1f} %" if value is not None else "n/a"


def compile_seconds(figures) -> float:
  """Seconds a stage's children spent compiling: every ``compile_s`` in its figures."""
  if not isinstance(figures, dict):
    return 0.0
  return sum(v if k == "compile_s" else compile_seconds(v) for k, v in figures.items())


def summary(stages: dict) -> dict:
  """The figures the issue of record names, by name, from the stages that have them."""
  step = stages.get("step", {})
  attention = stages.get("attention", {})
  largest = stages.get("largest", {})
  tests = stages.get("tests", {})
  figures = {
    "time_ratio": step.get("time_ratio"),
    "memory_ratio": step.get("memory_ratio"),
    "mfu": step.get("mfu"),
    "mfu_nominal": step.get("mfu_nominal"),
    "tokens_per_s": step.get("tokens_per_s"),
    "attention": {
      "implementation": attention.get("implementation"),
      "loss_relative_error": attention.get("loss_relative_error"),
      "grad_max_relative_error": attention.get("grad_max_relative_error"),
      "fused_kernel_called": attention.get("fused_kernel_called"),
    }
    if attention
    else None,
    "tests": {k: tests.get(k) for k in ("passed", "failed", "errors", "skipped")}
    if tests
    else None,
    "largest": {k: largest.get(k) for k in ("preset", "step_s", "mfu")} if largest else None,
  }
  return {name: value for name, value in figures.items() if value is not None}


def markdown(data: dict) -> str:
  """The report as a page: one section per stage, figures in tables."""
  stages = data["stages"]
  lines = [
    "# nexus-optax on an accelerator" + (" (dry run)" if data["dry_run"] else ""),
    "",
    f"Command: `{data['command']}`; {data['date']}; budget {data['budget_s']:.0f} s, "
    f"{data.get('elapsed_s', 0):.0f} s used.",
    "",
    "| stage | status | seconds | of them compiling |",
    "|---|---|---:|---:|",
  ]
  lines += [
    f"| {s} | {stages[s].get('status', 'running')} | {stages[s].get('seconds', 0):.1f} | "
    f"{compile_seconds(stages[s]):.1f} |"
    for s in STAGES
    if s in stages
  ]
  lines += ["", "| headline | value |", "|---|---|"]
  lines += [f"| {name} | {_flat(value)} |" for name, value in data.get("summary", {}).items()]
  for stage, render in SECTIONS.items():
    if stage in stages:
      lines += ["", f"## {stage}", ""] + render(stages[stage])
  lines += ["", "## Not tried on this machine", ""] + not_tried(stages)
  return "\n".join(lines) + "\n"


def _environment_section(env: dict) -> list[str]:
  return [
    "| | |",
    "|---|---|",
    f"| device | {env.get('device_kind')} x {env.get('device_count')} ({env.get('platform')}) |",
    f"| jax, jaxlib | {env.get('jax')}, {env.get('jaxlib')} |",
    f"| platform version | {env.get('platform_version')} |",
    f"| plugins | {', '.join(env.get('plugins', [])) or 'none'} |",
    f"| device memory | {_gib(env.get('device_memory_bytes'))} "
    f"({env.get('device_memory_source')}) |",
    f"| nominal bf16 peak | {_tflops(env.get('nominal_bf16_peak_flops'))} |",
  ]


def _tests_section(tests: dict) -> list[str]:
  lines = [
    "| passed | failed | errors | skipped |",
    "|---:|---:|---:|---:|",
    f"| {tests.get('passed')} | {tests.get('failed')} | {tests.get('errors')} | "
    f"{tests.get('skipped')} |",
    "",
    f"Files: {', '.join(tests.get('files', []))}.",
  ]
  return lines + [f"- {failure}" for failure in tests.get("failures", [])]


def _step_section(step: dict) -> list[str]:
  optimizers = step.get("optimizers", {})
  memory = step.get("memory", {})
  lines = [
    f"{step.get('preset')}, {step.get('compute_dtype')} compute, {step.get('param_dtype')} "
    f"parameters, K = {step.get('microbatches')} x {step.get('micro_batch_size')} x "
    f"{step.get('seq_len')} tokens. time_ratio **{step.get('time_ratio')}** (target <= 1.01), "
    f"memory_ratio **{step.get('memory_ratio')}** (target <= 1.001, from "
    f"{step.get('memory_source')}), MFU **{_percent(step.get('mfu'))}** against the measured "
    f"peak of {_tflops(step.get('measured_bf16_peak_flops'))}, "
    f"{_percent(step.get('mfu_nominal'))} against the nominal.",
    "",
    "| optimizer | compile (s) | median step (s) | tokens/s | MFU | peak memory | XLA temp |",
    "|---|---:|---:|---:|---:|---:|---:|",
  ]
  for name, row in optimizers.items():
    lines.append(
      f"| {name} | {row.get('compile_s')} | {row.get('median_step_s')} | "
      f"{row.get('tokens_per_s')} | {_percent(row.get('mfu'))} | "
      f"{_gib(memory.get(name, {}).get('peak_bytes'))} | "
      f"{_gib(row.get('xla_bytes', {}).get('temp'))} |"
    )
  ops = step.get("profile_top_ops", [])
  if ops:
    lines += ["", "Profiled Nexus step, top ops:", "", "| op | us | calls | share |"]
    lines += ["|---|---:|---:|---:|"]
    lines += [
      f"| `{o['op'][:60]}` | {o['us']} | {o['calls']} | {_percent(o['share'])} |" for o in ops
    ]
  return lines


def _attention_section(attention: dict) -> list[str]:
  return [
    f"`{attention.get('implementation')}` against {attention.get('reference')}, "
    f"{attention.get('compute_dtype')} compute, batch {attention.get('batch')}.",
    "",
    "| loss relative error | largest gradient relative error | fused kernel in the HLO |",
    "|---:|---:|---|",
    f"| {attention.get('loss_relative_error', float('nan')):.2e} | "
    f"{attention.get('grad_max_relative_error', float('nan')):.2e} | "
    f"{', '.join(attention.get('fused_custom_calls', [])) or 'none'} |",
  ]


def _largest_section(largest: dict) -> list[str]:
  lines = ["| preset | compiled bytes | fits |", "|---|---:|---|"]
  lines += [
    f"| {name} | {_gib(row['bytes'])} | {row['fits']} |"
    for name, row in largest.get("tried", {}).items()
  ]
  if largest.get("preset"):
    lines += [
      "",
      f"Largest fitting: **{largest['preset']}**, step {largest.get('step_s')} s, "
      f"{largest.get('tokens_per_s')} tokens/s, MFU {_percent(largest.get('mfu'))} "
      f"({_percent(largest.get('mfu_nominal'))} nominal).",
    ]
  return lines


SECTIONS = {
  "environment": _environment_section,
  "tests": _tests_section,
  "step": _step_section,
  "attention": _attention_section,
  "largest": _largest_section,
}


def not_tried(stages: dict) -> list[str]:
  """What this machine could not show."""
  platform_name = stages.get("environment", {}).get("platform")
  lines = []
  if platform_name != "gpu":
    lines.append(
      "- cuDNN's fused attention (a GPU's); the XLA path of `dot_product_attention` ran."
    )
  if platform_name != "tpu":
    lines.append("- A TPU's compiler and memory; the script takes the same path there.")
  if stages.get("step", {}).get("memory_source") == "memory_analysis":
    lines.append("- Peak memory from `memory_stats()`: empty here, XLA's analysis was used.")
  if (stages.get("environment", {}).get("local_device_count") or 1) < 2:
    lines.append("- Sharding over several real devices (the tests ran on forced host devices).")
  return lines or ["- nothing"]


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dry-run", action="store_true", help="the CPU rehearsal: tiny preset")
  parser.add_argument(
    "--budget-s", type=float, default=None, help="seconds for all stages (480; dry run 280)"
  )
  parser.add_argument(
    "--test-filter", default=None, help="a pytest -k expression for the tests stage"
  )
  add_out_flag(parser, "accelerator")
  # A stage's child process (run_child); not for people.
  parser.add_argument("--worker", choices=tuple(WORKERS), help=argparse.SUPPRESS)
  parser.add_argument("--plan", help=argparse.SUPPRESS)
  parser.add_argument("--result", type=pathlib.Path, help=argparse.SUPPRESS)
  parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
  parser.add_argument("--worker-args", default="{}", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.budget_s is not None and args.budget_s <= 0:
    parser.error(f"--budget-s must be positive, got {args.budget_s}.")
  return args


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.worker:
    run_worker(args)
    return
  plan = dataclasses.replace(
    DRY_RUN_PLAN if args.dry_run else DEVICE_PLAN, test_filter=args.test_filter
  )
  budget_s = args.budget_s or (280.0 if args.dry_run else 480.0)
  args.out.mkdir(parents=True, exist_ok=True)
  command = "python -m benchmarks.accelerator " + " ".join(sys.argv[1:] if argv is None else argv)
  report = Report(args.out, plan, command.strip(), budget_s)
  with tempfile.TemporaryDirectory(prefix="nexus-accelerator-") as scratch:
    run_stages(plan, report, budget_s, child_environment(pathlib.Path(scratch)))
  print(f"wrote {args.out / RESULT_JSON} and {args.out / RESULT_MD}")
  print(
    json.dumps({stage: figures.get("status") for stage, figures in report.data["stages"].items()})
  )


if __name__ == "__main__":
  main()
