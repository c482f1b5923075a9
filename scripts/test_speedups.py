"""What each of the test suite's speed-ups saves, measured on one core as a worker runs.

  python -m scripts.test_speedups [--repeats 3] [--out scripts/test_suite]

Each figure is the median of ``--repeats`` fresh processes pinned to one core (the suite's
xdist workers each hold one), with no compilation cache:

- ``step_compile_s``: compiling the tiny preset's Nexus training step under the test
  suite's XLA flags with and without the older loop emitters (``tests/conftest.py``);
- ``small_math_s``: the small corpus's math problems (``tests/conftest.py``'s spec),
  generated in-process (one worker) and by two spawned workers sharing the core;
- ``metrics_log_s``: starting a run's ``MetricsLog`` (which imports tensorboardX), with
  tensorboardX left to import torch and without.

Writes ``speedups.json`` to ``--out``; the last line is the JSON.
"""

import argparse
import os
import pathlib
import statistics
import subprocess
import sys

import jaxlib

from benchmarks.common import write_report
from scripts.fresh_clone import REPO, clean_env

STEP_COMPILE = """
import time, jax, numpy as np
from train import parallel
from train.build import build_training
from train.presets import get_run_preset
config = get_run_preset("tiny", optimizer="nexus")
mesh = parallel.make_mesh(parallel.parse_mesh("data=1", jax.device_count()), False)
training = build_training(config, mesh)
state = training.init()
shape = (config.microbatches, config.micro_batch_size, config.seq_len + 1)
tokens = jax.device_put(np.zeros(shape, np.int32), training.batch_sharding)
lowered = training.step.lower(state, tokens)
start = time.perf_counter()
lowered.compile()
print(time.perf_counter() - start)
"""

SMALL_MATH = """
import time
from train.data.corpus import generate_math
start = time.perf_counter()
for regime, rounds, per_task in (("train", 12, 6), ("train", 4, 6), ("extrapolate", 2, 1)):
  generate_math(regime, 0, rounds, per_task, workers={workers})
print(time.perf_counter() - start)
"""

METRICS_LOG = """
import pathlib, sys, tempfile, time
{prelude}
start = time.perf_counter()
from train.metrics_log import MetricsLog
MetricsLog(pathlib.Path(tempfile.mkdtemp()), 0, True).close()
print(time.perf_counter() - start)
"""

# The shield's opposite: tensorboardX imported the way it imports itself, torch included.
UNSHIELDED = "import train.metrics_log as m; m._summary_writer = lambda f, purge_step: " + (
  "__import__('tensorboardX').SummaryWriter(str(f), purge_step=purge_step)"
)


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--repeats", type=int, default=3, help="fresh processes per figure")
  parser.add_argument("--out", type=pathlib.Path, default=REPO / "scripts" / "test_suite")
  args = parser.parse_args()
  if args.repeats < 1:
    parser.error("--repeats must be >= 1")
  return args


def seconds(code: str, repeats: int, xla_flags: str = "") -> float:
  """The median of the seconds ``code`` prints, over ``repeats`` processes on one core."""
  env = dict(clean_env(), XLA_FLAGS=xla_flags, JAX_PLATFORMS="cpu")
  core = min(os.sched_getaffinity(0))
  runs = []
  for _ in range(repeats):
    out = subprocess.run(
      ["taskset", "-c", str(core), sys.executable, "-c", code],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      check=False,
    )
    if out.returncode != 0:
      sys.exit(f"error: a measurement failed:\n{out.stderr[-2000:]}")
    runs.append(float(out.stdout.split()[-1]))
  return round(statistics.median(runs), 3)


def main():
  args = parse_args()
  level0 = "--xla_backend_optimization_level=0"
  result = {"command": "python -m scripts.test_speedups", "jaxlib": jaxlib.__version__}
  result["repeats"] = args.repeats
  compile_s = {"opt level 0": seconds(STEP_COMPILE, args.repeats, level0)}
  if int(jaxlib.__version__.split(".")[1]) < 11:  # later XLA refuses the flag
    flags = f"{level0} --xla_cpu_use_fusion_emitters=false"
    compile_s["opt level 0, older loop emitters"] = seconds(STEP_COMPILE, args.repeats, flags)
  result["step_compile_s"] = compile_s
  result["small_math_s"] = {
    f"{workers} worker(s)": seconds(SMALL_MATH.format(workers=workers), args.repeats)
    for workers in (1, 2)
  }
  result["metrics_log_s"] = {
    "torch imported": seconds(METRICS_LOG.format(prelude=UNSHIELDED), args.repeats),
    "torch kept out": seconds(METRICS_LOG.format(prelude=""), args.repeats),
  }
  write_report(args.out / "speedups.json", result)


if __name__ == "__main__":
  main()
