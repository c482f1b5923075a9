"""The main job: AdamW against AdamW + Nexus, same everything else, one table and two plots.

  python -m train.compare [--preset demo] [--out results] [--jobs 1|2] [--data CACHE]
      [any train.pretrain flag]

Trains the preset twice with ``train.pretrain``: ``--optimizer adamw`` (gradient
accumulation over the K micro-batches) and ``--optimizer nexus`` (Nexus's inner loop over
the same K micro-batches, then the same clip and AdamW). Seed, data order, micro-batches,
schedule and every hyper-parameter are shared. Writes to ``OUT/<timestamp>/``:

  adamw/, nexus/    each run's ``--out`` (metrics.jsonl, TensorBoard, final checkpoint)
  summary.md        the paper's Table 1 in shape: pretraining loss, each validation
                    domain, each held-out set, mean cross-domain gradient cosine, and
                    Nexus - AdamW for each
  curves.png        training and validation loss of both runs
  same_loss.png     held-out against pretraining loss at the same checkpoints (Fig. 7a)
  time.md, .json    where each run's seconds went (data, build, compile, steps, evaluation)

Every loss in the table is measured at the outer parameters on fixed windows, in nats per
token; the pretraining loss is the validation loss of the training mixture (weights as
in ``--mixture``).
"""

import argparse
import datetime
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import time

import jax
from tqdm import tqdm

from train import flags, pretrain
from train.data.mixture import parse_mixture
from train.data.roles import HELDOUT, TRAIN, VALIDATION
from train.processes import core_shares, start_pinned
from train.training_data import load_data

OPTIMIZERS = ("adamw", "nexus")
LABELS = {"adamw": "AdamW", "nexus": "AdamW + Nexus"}


def with_summary_losses(record: dict, weights: dict[str, float]) -> dict:
  """Adds ``pretrain`` (mixture-weighted validation loss), ``train`` (the same over the
  training windows) and ``heldout mean`` to an evaluation record."""
  total = sum(weights.values())
  weighted = lambda role: sum(w * record[f"{role}/{d}/loss"] for d, w in weights.items()) / total
  heldout = [v for k, v in record.items() if k.startswith(f"{HELDOUT}/") and k.endswith("/loss")]
  return {
    **record,
    "pretrain": weighted(VALIDATION),
    "train": weighted(TRAIN),
    "heldout mean": statistics.fmean(heldout),
  }


def table_columns(record: dict) -> list[tuple[str, str]]:
  """(header, record key) pairs in Table 1's order."""
  columns = [("pretrain (val)", "pretrain"), ("train", "train")]
  columns += [
    (f"{k.split('/')[1]} (val)", k)
    for k in sorted(record)
    if k.startswith(f"{VALIDATION}/") and k.endswith("/loss")
  ]
  columns += [
    (f"{k.split('/')[1]} (held-out)", k)
    for k in sorted(record)
    if k.startswith(f"{HELDOUT}/") and k.endswith("/loss")
  ]
  return columns + [("held-out mean", "heldout mean"), ("grad cosine", "gradient_cosine/mean")]


def summary_markdown(finals: dict[str, dict], header: str) -> str:
  columns = table_columns(finals["adamw"])
  rows = [
    f"| {LABELS[o]} | " + " | ".join(f"{finals[o][k]:.4f}" for _, k in columns) + " |"
    for o in OPTIMIZERS
  ]
  rows.append(
    "| Nexus - AdamW | "
    + " | ".join(f"{finals['nexus'][k] - finals['adamw'][k]:+.4f}" for _, k in columns)
    + " |"
  )
  return "\n".join(
    [
      header,
      "",
      "| optimizer | " + " | ".join(h for h, _ in columns) + " |",
      "|---|" + "---|" * len(columns),
      *rows,
      "",
    ]
  )


TIME_COLUMNS = (
  ("data", "data"),
  ("build + init", "setup"),
  ("first step (compile)", "first_step"),
  ("training steps", "train"),
  ("evaluation", "eval"),
  ("total", "total"),
)


def time_markdown(
  times: dict[str, dict], wall_seconds: float, jobs: int, data_seconds: float
) -> str:
  """Each run's seconds by part (``summary.json``'s ``time``), and the job's wall time."""
  header = "| run | " + " | ".join(label for label, _ in TIME_COLUMNS) + " |"
  rows = [
    f"| {LABELS[name]} | " + " | ".join(f"{part[key]:.1f}" for _, key in TIME_COLUMNS) + " |"
    for name, part in times.items()
  ]
  return "\n".join(
    [
      "Seconds, by part (each run's `summary.json`, `time`):",
      "",
      header,
      "|---|" + "---:|" * len(TIME_COLUMNS),
      *rows,
      "",
      (
        f"Both runs at once, each on half the CPU cores (`--jobs 2`), after {data_seconds:.1f} s "
        "of preparing the data for both. "
        if jobs > 1
        else "One run after the other (`--jobs 1`). "
      )
      + f"The job, both runs, table and plots: {wall_seconds:.1f} s.",
      "",
    ]
  )


DISTRIBUTED_FLAGS = ("--coordinator-address", "--num-processes", "--process-id", "--distributed")


def side_by_side_problem(pretrain_flags: list[str]) -> str | None:
  """Why this machine cannot train the two runs side by side (None when it can)."""
  if any(flag.split("=")[0] in DISTRIBUTED_FLAGS for flag in pretrain_flags) or os.environ.get(
    "JAX_COORDINATOR_ADDRESS"
  ):
    return "a multi-process run trains its runs one after the other"
  if not hasattr(os, "sched_getaffinity"):
    return "this OS cannot pin a process to CPU cores"
  if len(os.sched_getaffinity(0)) < 2:
    return "it needs at least 2 CPU cores"
  if jax.default_backend() != "cpu":  # both runs would claim the same accelerator
    return f"both runs would share the {jax.default_backend()}"
  return None


def run_side_by_side(argv: dict[str, list[str]], out: pathlib.Path) -> tuple[int, float]:
  """Runs ``python -m train.pretrain`` for every optimizer at once, each pinned to its share
  of this process's CPU cores, with one progress bar per run; each run's output goes to
  its ``--out``'s ``log.txt``. Returns the first non-zero exit status (or 0) and the
  seconds spent preparing the data beforehand."""
  started = time.perf_counter()
  prepared = prepare_data_once(argv[OPTIMIZERS[0]])
  if prepared is None:
    return 2, 0.0
  steps, no_progress = prepared
  data_seconds = time.perf_counter() - started
  shares = core_shares(len(argv))
  processes, bars = {}, {}
  # SIGTERM (a preempted job) goes on to the runs, which checkpoint and stop.
  stopping = []
  previous_handler = signal.signal(
    signal.SIGTERM,
    lambda *_: stopping.append([p.send_signal(signal.SIGTERM) for p in processes.values()]),
  )
  failed = None
  try:
    for index, (optimizer, run_argv) in enumerate(argv.items()):
      processes[optimizer] = start_run(optimizer, run_argv, shares[index])
      bars[optimizer] = tqdm(
        total=steps, desc=optimizer, position=index, unit="step", disable=no_progress
      )
    failed = follow_runs(processes, bars, out)
  finally:
    signal.signal(signal.SIGTERM, previous_handler)
    for bar in bars.values():
      bar.close()
    for process in processes.values():
      if process.poll() is None:  # a failed sibling, or Ctrl-C: no orphans left training
        process.terminate()
        process.wait()
  if stopping:
    report_stopped(processes, out)
    return 128 + int(signal.SIGTERM), data_seconds
  if failed is not None:
    log = (out / failed / "log.txt").read_text()
    print(f"error: the {failed} run failed; its log.txt ends:\n{log[-3000:]}", file=sys.stderr)
    return processes[failed].returncode, data_seconds
  return 0, data_seconds


def prepare_data_once(run_argv: list[str]) -> tuple[int, bool] | None:
  """Prepares the runs' data before they start, as two runs must not both build the same
  cache. Returns their steps and ``--no-progress``, or None once it printed why not."""
  run_args = flags.build_parser().parse_args(run_argv)
  try:
    config = flags.config_from_args(run_args)
    load_data(config, True, pretrain.read_init_checkpoint(config))
  except flags.USER_ERRORS as error:
    print(f"error: {error}", file=sys.stderr)
    return None
  return config.steps, run_args.no_progress


def start_run(optimizer: str, run_argv: list[str], cores: list[int]) -> subprocess.Popen:
  """``python -m train.pretrain`` pinned to ``cores``, its output into its ``--out``'s
  ``log.txt``."""
  run_out = pathlib.Path(run_argv[run_argv.index("--out") + 1])
  run_out.mkdir(parents=True, exist_ok=True)
  print(f"=== {LABELS[optimizer]} -> {run_out} (log.txt), CPU cores {cores}", flush=True)
  with (run_out / "log.txt").open("w") as log:
    return start_pinned("train.pretrain", [*run_argv, "--no-progress"], cores, log)


def follow_runs(
  processes: dict[str, subprocess.Popen], bars: dict, out: pathlib.Path
) -> str | None:
  """Moves each run's progress bar to its last logged step until every run has ended or
  one has failed; returns the failed run's name (None if none failed)."""
  failed = None
  while failed is None and any(p.poll() is None for p in processes.values()):
    time.sleep(1.0)
    failed = next((name for name, p in processes.items() if p.poll()), None)
    for optimizer, bar in bars.items():
      steps = [r for r in metrics_records(out / optimizer) if "train_loss" in r]
      if steps and steps[-1]["step"] > bar.n:
        bar.set_postfix(loss=f"{steps[-1]['train_loss']:.4f}", refresh=False)
        bar.update(steps[-1]["step"] - bar.n)
  return failed


def report_stopped(processes: dict[str, subprocess.Popen], out: pathlib.Path) -> None:
  """Tells, for each run a SIGTERM stopped, whether it saved a checkpoint to resume."""
  for optimizer in processes:
    saved = "SIGTERM: saved checkpoint" in (out / optimizer / "log.txt").read_text()
    print(
      f"SIGTERM: the {optimizer} run "
      + (
        "saved a checkpoint; continue it with `python -m train.pretrain --resume` and "
        "the flags in its config.json."
        if saved
        else "stopped before its first checkpoint; start it again."
      ),
      file=sys.stderr,
    )


def metrics_records(run: pathlib.Path) -> list[dict]:
  """The complete lines of a run's ``metrics.jsonl`` (none while it starts)."""
  path = run / "metrics.jsonl"
  if not path.exists():
    return []
  lines = path.read_text().split("\n")[:-1]  # the last may be half written
  return [json.loads(line) for line in lines if line]


COLORS = {"adamw": "tab:blue", "nexus": "tab:orange"}


def pyplot():
  """matplotlib's pyplot on the file-only Agg backend."""
  # Lazily: pyplot takes half a second to import, and only the job's end draws.
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def plot(runs: dict[str, dict], out: pathlib.Path) -> None:
  """``curves.png`` and ``same_loss.png``."""
  plot_curves(runs, out)
  plot_same_loss(runs, out)
  pyplot().close("all")


def plot_curves(runs: dict[str, dict], out: pathlib.Path) -> None:
  """Training loss (batch and training windows) and validation and held-out loss by step."""
  figure, (left, right) = pyplot().subplots(1, 2, figsize=(11, 4))
  for name, run in runs.items():
    logged = [r for r in run["records"] if "train_loss" in r]
    left.plot(
      [r["step"] for r in logged],
      [r["train_loss"] for r in logged],
      color=COLORS[name],
      alpha=0.35,
      label=f"{LABELS[name]}: batch loss" + (" (inner points)" if name == "nexus" else ""),
    )
    evals = run["evaluations"]
    left.plot(
      [r["step"] for r in evals],
      [r["train"] for r in evals],
      "o-",
      color=COLORS[name],
      label=f"{LABELS[name]}: training windows",
    )
    right.plot(
      [r["step"] for r in evals],
      [r["pretrain"] for r in evals],
      "o-",
      color=COLORS[name],
      label=f"{LABELS[name]}: pretraining (validation)",
    )
    right.plot(
      [r["step"] for r in evals],
      [r["heldout mean"] for r in evals],
      "s--",
      color=COLORS[name],
      label=f"{LABELS[name]}: held-out mean",
    )
  left.set(xlabel="outer step", ylabel="loss (nats/token)", title="Training loss")
  right.set(xlabel="outer step", ylabel="loss (nats/token)", title="Validation and held-out loss")
  for axis in (left, right):
    axis.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(out / "curves.png", dpi=120)


def plot_same_loss(runs: dict[str, dict], out: pathlib.Path) -> None:
  """Held-out against pretraining loss at the same checkpoints (the paper's Fig. 7a)."""
  figure, axis = pyplot().subplots(figsize=(5.5, 4))
  for name, run in runs.items():
    evals = run["evaluations"]
    axis.plot(
      [r["pretrain"] for r in evals],
      [r["heldout mean"] for r in evals],
      "o-",
      color=COLORS[name],
      label=LABELS[name],
    )
    for r in evals:
      axis.annotate(
        str(r["step"]),
        (r["pretrain"], r["heldout mean"]),
        fontsize=7,
        xytext=(3, 3),
        textcoords="offset points",
      )
  axis.set(
    xlabel="pretraining (validation) loss",
    ylabel="mean held-out loss",
    title="Held-out loss at the same pretraining loss",
  )
  axis.invert_xaxis()
  axis.legend()
  figure.tight_layout()
  figure.savefig(out / "same_loss.png", dpi=120)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m train.compare", description=__doc__.split("\n")[0]
  )
  parser.add_argument("--preset", default="demo", help="run preset of both runs")
  parser.add_argument(
    "--out",
    type=pathlib.Path,
    default=pathlib.Path("results"),
    help="parent of the timestamped results directory",
  )
  parser.add_argument(
    "--jobs",
    type=int,
    choices=(1, 2),
    default=None,
    help="2 trains both runs at once, each pinned to half of this machine's CPU cores, so "
    "that their compiles and evaluations overlap; 1 one after the other (default: 2 on a "
    "CPU backend with at least 2 cores in one process, else 1)",
  )
  return parser


def plan_jobs(jobs: int | None, pretrain_flags: list[str]) -> tuple[int, str | None]:
  """How many runs train at once (``--jobs``, else 2 where they can), or why the flags are
  refused."""
  if any(flag.split("=")[0] in ("--optimizer", "--out", "--resume") for flag in pretrain_flags):
    return 0, "--optimizer, --out and --resume are set by train.compare; drop them."
  problem = side_by_side_problem(pretrain_flags) if jobs != 1 else None
  if jobs == 2 and problem:
    return 0, f"--jobs 2: {problem}; use --jobs 1."
  return jobs or (1 if problem else 2), None


def plan_runs(preset: str, out: pathlib.Path, pretrain_flags: list[str]) -> dict[str, list[str]]:
  """Each optimizer's ``train.pretrain`` arguments: the same but for its name and ``--out``."""
  return {
    optimizer: ["--preset", preset, "--optimizer", optimizer, "--out", str(out / optimizer)]
    + pretrain_flags
    for optimizer in OPTIMIZERS
  }


def run_in_turn(argv: dict[str, list[str]], out: pathlib.Path) -> int:
  """Runs ``train.pretrain`` in this process for one optimizer after the other; returns
  the first non-zero exit status (or 0)."""
  for optimizer, run_argv in argv.items():
    print(f"\n=== {LABELS[optimizer]} -> {out / optimizer}", flush=True)
    status = pretrain.train(flags.build_parser().parse_args(run_argv))
    if status != 0:
      return status
  return 0


def collect_run(run: pathlib.Path) -> dict:
  """A finished run's config, logged records, evaluations (with the table's summary
  losses) and where its seconds went."""
  config = json.loads((run / "config.json").read_text())
  domains = [item.split("=")[0].strip() for item in config["mixture"].split(",")]
  weights = parse_mixture(config["mixture"], domains)
  records = metrics_records(run)
  evaluations = [with_summary_losses(r, weights) for r in records if "gradient_cosine/mean" in r]
  summary = json.loads((run / "summary.json").read_text())
  return {"config": config, "records": records, "evaluations": evaluations, "time": summary["time"]}


def summary_header(config: dict, command: str, started: datetime.datetime) -> str:
  """The table's title, command, date and duration so far, and how to read it."""
  minutes = (datetime.datetime.now() - started).total_seconds() / 60
  return (
    f"# AdamW against AdamW + Nexus: `{config['model']}` Llama, {config['steps']} outer "
    f"steps of K = {config['microbatches']} x {config['micro_batch_size']} x "
    f"{config['seq_len']} tokens, gamma = {config['inner_lr']}, seed {config['seed']}\n\n"
    f"Command: `python -m train.compare {command}`"
    f"  \nDate: {started:%Y-%m-%d %H:%M}, {minutes:.1f} min. Losses in nats per token at "
    "the outer parameters on fixed windows (final step); pretrain (val) is the "
    "mixture-weighted validation loss, train the same over training windows, grad "
    "cosine the mean off-diagonal cosine of the per-domain validation gradients."
  )


def write_table(
  runs: dict[str, dict], out: pathlib.Path, command: str, started: datetime.datetime
) -> str:
  """Writes ``summary.md``, the final evaluations as Table 1, and returns it."""
  finals = {name: run["evaluations"][-1] for name, run in runs.items()}
  text = summary_markdown(finals, summary_header(runs["nexus"]["config"], command, started))
  (out / "summary.md").write_text(text)
  return text


def write_times(
  runs: dict[str, dict], out: pathlib.Path, started: datetime.datetime, jobs: int, data: float
) -> str:
  """Writes ``time.md`` and ``time.json``, where each run's seconds went and the job's wall
  time, and returns the Markdown."""
  times = {name: run["time"] for name, run in runs.items()}
  wall_seconds = (datetime.datetime.now() - started).total_seconds()
  text = time_markdown(times, wall_seconds, jobs, data)
  (out / "time.md").write_text(text)
  timing = {
    "runs": times,
    "jobs": jobs,
    "data_before_runs_seconds": round(data, 1),
    "wall_seconds": round(wall_seconds, 1),
  }
  (out / "time.json").write_text(json.dumps(timing, indent=1) + "\n")
  return text


def main(argv=None) -> int:
  args, pretrain_flags = build_parser().parse_known_args(argv)
  jobs, refusal = plan_jobs(args.jobs, pretrain_flags)
  if refusal:
    print(f"error: {refusal}", file=sys.stderr)
    return 2
  started = datetime.datetime.now()
  out = args.out / started.strftime("%Y%m%d-%H%M%S")
  try:
    out.mkdir(parents=True, exist_ok=False)
  except OSError as error:
    print(f"error: cannot create {out} ({error.strerror}); choose another --out.", file=sys.stderr)
    return 2
  run_argv = plan_runs(args.preset, out, pretrain_flags)
  if jobs > 1:
    status, data_seconds = run_side_by_side(run_argv, out)
  else:  # the runs' own "data" time counts their data, one run after the other
    status, data_seconds = run_in_turn(run_argv, out), 0.0
  if status != 0:
    return status
  runs = {optimizer: collect_run(out / optimizer) for optimizer in OPTIMIZERS}
  command = " ".join(argv if argv is not None else sys.argv[1:])
  table = write_table(runs, out, command, started)
  plot(runs, out)
  timing = write_times(runs, out, started, jobs, data_seconds)
  print("\n" + timing)
  print("\n" + table)
  print(f"wrote {out / 'summary.md'}, {out / 'curves.png'} and {out / 'same_loss.png'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
