"""Peak memory of exporting a checkpoint: the params read alone against the whole state.

  python -m benchmarks.export_memory [--preset 520m] [--work benchmarks/out/export_memory] \
      [--out benchmarks/out/export_memory]

A checkpoint of ``--preset``'s run preset (its ``TrainState`` as ``Training.init`` makes
it, untrained: the same arrays and bytes as a trained one) is saved once with
``train.checkpoints.CheckpointStore.save``, as ``train.pretrain`` saves it, under
``--work`` and reused by later runs. Then five fresh processes, one after the other:

  ``baseline``        imports, opens the store and rebuilds the model as an export does,
                      and reads nothing: the fixed cost of the process;
  ``restore_state``   ``train.runs.restore_run`` as it was: ``CheckpointStore.restore`` of
                      the whole ``TrainState`` (params, optimizer state, RNG, counters),
                      keeping the params;
  ``restore_params``  ``train.runs.restore_run``, which reads the params alone;
  ``export_state``    ``train.export_hf`` as it was: ``restore_state``, then the params
                      written by ``train.hf.write_checkpoint``;
  ``export_params``   ``python -m train.export_hf``, the command itself.

Each one's peak resident memory is its ``ru_maxrss`` from ``os.wait4``, the child's own
(``getrusage(RUSAGE_CHILDREN)`` would be the maximum over all children so far). The report
divides each peak, and each peak less the baseline's, by the params' bytes; the two
exports' ``model.safetensors`` must be identical. Writes ``results.json`` and
``results.md`` to ``--out`` (the committed ones in ``benchmarks/export_memory/`` with
``--out benchmarks/export_memory``). 520m's checkpoint takes 6.5 GB of disk, and writing
it about 1.5 times its state's bytes of memory (300m's: 3.6 GB, a 5.6 GiB peak).
"""

import argparse
import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks.common import add_out_flag, out_dir, write_json

MODES = ("baseline", "restore_state", "restore_params", "export_state", "export_params")
LABELS = {
  "baseline": "baseline (nothing read)",
  "restore_state": "restore: whole TrainState (before)",
  "restore_params": "restore: params alone (after)",
  "export_state": "export: whole TrainState read (before)",
  "export_params": "export: `train.export_hf` (after)",
}


def tree_bytes(tree) -> int:
  # imported here: each child's peak memory counts only what it imports
  import jax

  return int(sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree)))


def one_device_training(record: dict):
  """The run's model and state shapes on a one-device mesh, as ``train.runs`` builds them."""
  # imported here: each child's peak memory counts only what it imports
  import jax

  # imported here: each child's peak memory counts only what it imports
  from train import parallel

  # imported here: each child's peak memory counts only what it imports
  from train.build import build_training

  # imported here: each child's peak memory counts only what it imports
  from train.config import TrainConfig

  # imported here: each child's peak memory counts only what it imports
  from train.runs import recorded_model_config

  mesh = parallel.make_mesh(parallel.parse_mesh("data=1", jax.device_count()), False)
  config = TrainConfig.from_dict(record)
  return config, build_training(config, mesh, model_config=recorded_model_config(record))


def write_fixture(preset: str, run_dir: pathlib.Path) -> None:
  """A checkpoint of ``preset``'s initial state at step 0, saved as train.pretrain saves."""
  # imported here: each child's peak memory counts only what it imports
  import jax

  # imported here: each child's peak memory counts only what it imports
  from train import parallel

  # imported here: each child's peak memory counts only what it imports
  from train.build import build_training

  # imported here: each child's peak memory counts only what it imports
  from train.checkpoints import CheckpointStore

  # imported here: each child's peak memory counts only what it imports
  from train.presets import get_run_preset

  config = get_run_preset(preset, out=str(run_dir))
  mesh = parallel.make_mesh(parallel.parse_mesh("data=1", jax.device_count()), False)
  training = build_training(config, mesh)
  record = {**config.to_dict(), "model_config": dataclasses.asdict(training.model_config)}
  store = CheckpointStore(run_dir, keep=1)
  store.save(0, training.init(), {"iterator": {}}, record)
  store.wait()
  store.close()


def restore_full_state(run_dir: pathlib.Path):
  """``train.runs.restore_run`` as it was: the whole state restored, its params kept (the
  rest freed on return); and the model it was rebuilt with."""
  # imported here: each child's peak memory counts only what it imports
  from train.checkpoints import CheckpointStore

  store = CheckpointStore(run_dir, keep=1_000_000, read_only=True)
  _, training = one_device_training(store.newest_config())
  params = store.restore_latest(training.abstract_state).state.params
  store.close()
  return params, training


def child(mode: str, preset: str, run_dir: pathlib.Path, out: pathlib.Path) -> None:
  # imported here: each child's peak memory counts only what it imports
  import jax

  # imported here: each child's peak memory counts only what it imports
  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.ERROR)  # orbax notes that the directory is read-only
  if mode == "fixture":
    write_fixture(preset, run_dir)
  elif mode == "baseline":
    # imported here: each child's peak memory counts only what it imports
    from train.checkpoints import CheckpointStore

    store = CheckpointStore(run_dir, keep=1_000_000, read_only=True)
    _, training = one_device_training(store.newest_config())
    store.close()
    print(json.dumps({"param_bytes": tree_bytes(training.abstract_state.params)}))
    print(json.dumps({"state_bytes": tree_bytes(training.abstract_state)}))
  elif mode == "restore_state":
    jax.block_until_ready(restore_full_state(run_dir)[0])
  elif mode == "restore_params":
    # imported here: each child's peak memory counts only what it imports
    from train.runs import restore_run

    jax.block_until_ready(restore_run(run_dir).params)
  elif mode == "export_state":  # train.export_hf's main as it was, but for the metadata
    # imported here: each child's peak memory counts only what it imports
    from train.data.tokenizer import BYTES, load_tokenizer

    # imported here: each child's peak memory counts only what it imports
    from train.hf import write_checkpoint

    params, training = restore_full_state(run_dir)
    params = jax.device_get(params)
    write_checkpoint(out, params, training.model_config, load_tokenizer(BYTES), "float32", {})


def run_child(mode: str, preset: str, run_dir: pathlib.Path, out: pathlib.Path, log) -> dict:
  """Runs ``mode`` in a fresh process; its peak RSS in bytes, wall seconds and stdout."""
  command = [sys.executable, "-m", "benchmarks.export_memory", "--child", mode]
  command += ["--preset", preset, "--work", str(run_dir.parent), "--child-out", str(out)]
  if mode == "export_params":  # the command itself, as a user runs it
    command = [sys.executable, "-m", "train.export_hf", "--checkpoint", str(run_dir)]
    command += ["--out", str(out)]
  start = time.perf_counter()
  with open(log, "w") as stream:
    process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT)
    # wait4 gives this child's own peak, where getrusage(RUSAGE_CHILDREN) is the maximum
    # over every child reaped so far.
    _, status, usage = os.wait4(process.pid, 0)
  process.returncode = os.waitstatus_to_exitcode(status)
  seconds = time.perf_counter() - start
  output = pathlib.Path(log).read_text()
  if process.returncode != 0:
    raise RuntimeError(f"{mode} failed ({process.returncode}):\n{output[-3000:]}")
  return {"peak_rss_bytes": usage.ru_maxrss * 1024, "seconds": round(seconds, 1), "out": output}


def file_hash(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as stream:
    while chunk := stream.read(1 << 24):
      digest.update(chunk)
  return digest.hexdigest()


def markdown(result: dict) -> str:
  gib = 1 << 30
  lines = [
    f"Command: `{result['command']}` ({result['date']})",
    "",
    f"Preset {result['preset']} ({result['optimizer']}): params {result['param_bytes'] / gib:.2f}"
    f" GiB, whole TrainState {result['state_bytes'] / gib:.2f} GiB. Exports identical: "
    f"{result['exports_identical']}.",
    "",
    "| process | peak RSS GiB | peak / params | (peak - baseline) / params | seconds |",
    "|---|---:|---:|---:|---:|",
  ]
  for mode in MODES:
    row = result["modes"][mode]
    lines.append(
      f"| {LABELS[mode]} | {row['peak_rss_bytes'] / gib:.2f} | {row['peak_over_params']:.2f} | "
      f"{row['above_baseline_over_params']:.2f} | {row['seconds']} |"
    )
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.export_memory", description=__doc__.split("\n\n")[0]
  )
  parser.add_argument("--preset", default="520m", help="run preset of the checkpoint")
  parser.add_argument(
    "--work",
    type=pathlib.Path,
    default=out_dir("export_memory"),
    help="folder for the checkpoint fixture, kept and reused "
    "(default: benchmarks/out/export_memory)",
  )
  add_out_flag(parser, "export_memory")
  parser.add_argument("--child", choices=("fixture", *MODES), help=argparse.SUPPRESS)
  parser.add_argument("--child-out", type=pathlib.Path, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  run_dir = args.work.absolute() / f"run-{args.preset}"
  if args.child:
    child(args.child, args.preset, run_dir, args.child_out)
    return 0

  flags = sys.argv[1:] if argv is None else argv
  command = " ".join(["python -m benchmarks.export_memory", *flags])
  run_dir.parent.mkdir(parents=True, exist_ok=True)
  if not (run_dir / "checkpoints" / "0" / "commit_success.txt").exists():
    shutil.rmtree(run_dir, ignore_errors=True)
    print(f"writing the checkpoint fixture {run_dir}", flush=True)
    fixture = run_child("fixture", args.preset, run_dir, run_dir, run_dir.parent / "fixture.log")
    print(f"fixture: peak RSS {fixture['peak_rss_bytes'] / 2**30:.2f} GiB", flush=True)
  modes = {}
  with tempfile.TemporaryDirectory(dir=run_dir.parent) as work:
    work = pathlib.Path(work)
    for mode in MODES:
      modes[mode] = run_child(mode, args.preset, run_dir, work / mode, work / f"{mode}.log")
      print(f"{mode}: peak RSS {modes[mode]['peak_rss_bytes'] / 2**30:.2f} GiB", flush=True)
    identical = file_hash(work / "export_state" / "model.safetensors") == file_hash(
      work / "export_params" / "model.safetensors"
    )
  sizes = {}
  for line in modes["baseline"].pop("out").splitlines():
    if line.startswith("{"):
      sizes.update(json.loads(line))
  record = json.loads((run_dir / "checkpoints" / "0" / "config" / "metadata").read_text())
  params, baseline = sizes["param_bytes"], modes["baseline"]["peak_rss_bytes"]
  for row in modes.values():
    row.pop("out", None)
    row["peak_over_params"] = round(row["peak_rss_bytes"] / params, 3)
    row["above_baseline_over_params"] = round((row["peak_rss_bytes"] - baseline) / params, 3)
  result = {
    "command": command,
    "date": time.strftime("%Y-%m-%d"),
    "preset": args.preset,
    "optimizer": record["optimizer"],
    "param_bytes": params,
    "state_bytes": sizes["state_bytes"],
    "exports_identical": identical,
    "modes": modes,
  }
  write_json(args.out / "results.json", result)
  text = markdown(result)
  (args.out / "results.md").write_text(text)
  print(text)
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
