"""The confirmatory study: does Nexus's second-order term lower held-out loss at matched
pretraining loss, at compute-optimal length? Pre-registered in studies/confirm/README.md.

Four arms (``ARMS``) train the ``mini`` Llama on the built-in corpus's prose, code and
math domains at equal weights, K = 4 ``mixed`` micro-batches, for 20 tokens per
parameter (embeddings included), with seeds 1000-1007 shared by every arm (the same
initialisation and data order). Runs are trained and measured by
:class:`studies.replication.study.Study`, so each run's JSON has the replication
study's format.

Endpoints (``PRIMARY``, ``SECONDARY``), all paired over seeds and tested with
``scipy.stats.ttest_rel`` (two-sided, 95 % CI):
  primary     heldout_matched, nexus-0.3 minus control;
  secondary   heldout_matched of nexus-0.3 and nexus-0.01 against adamw; their final
              pretraining loss against adamw (and whether its CI lies inside +-0.01);
              the cross-domain gradient cosine averaged over the eval points;
              heldout_matched of each held-out set, nexus-0.3 minus control.
              Holm-corrected as one family.

Runs go in the fixed order of ``run_order`` (seed by seed, the three primary arms first,
then nexus-0.01), one JSON per run under ``OUT/runs``; a rerun skips finished runs, so
an interrupted study resumes where it stopped (an unfinished run starts over). With
``--jobs 2`` two worker processes, each pinned to a CPU core, take the next unfinished
run in that order.

The command is ``python -m studies.confirm`` (``studies/confirm/cli.py``).
"""

import dataclasses
import json
import math
import os
import pathlib
import signal
import statistics
import sys
import time
from collections.abc import Iterable, Sequence

import jax
import numpy as np
from flax import nnx
from scipy import stats
from tqdm import tqdm

from models import Llama
from models.presets import get_preset
from studies.replication.study import (
  CONTROL_GAMMA,
  Arm,
  Study,
  StudySize,
  add_matched_heldout,
  final_set_means,
  heldout_line,
  markdown_table,
  mean_std,
  paired_test,
)
from train.data.cache import TokenCache
from train.data.corpus import HELDOUT_SETS, ensure_default_cache
from train.data.mixture import LoaderConfig, epochs_per_source, source_sequences
from train.data.roles import HELDOUT, VALIDATION
from train.processes import core_shares, start_pinned

SEEDS = tuple(range(1000, 1008))
QUICK_SEEDS = (1000, 1001)
DOMAINS = ("prose", "code", "math")
MIXTURE_NAME = "prose-code-math"
MIXTURES = {MIXTURE_NAME: ",".join(f"{domain}=1" for domain in DOMAINS)}
TOKENS_PER_PARAMETER = 20
ARMS = (
  Arm("adamw", "adamw", mixture=MIXTURE_NAME),
  Arm("control", "nexus", CONTROL_GAMMA, mixture=MIXTURE_NAME),
  Arm("nexus-0.3", "nexus", 0.3, mixture=MIXTURE_NAME),
  Arm("nexus-0.01", "nexus", 0.01, mixture=MIXTURE_NAME),
)
PRIMARY_ARMS = ("adamw", "control", "nexus-0.3")
ALPHA = 0.05
PRETRAIN_MARGIN = 0.01  # the paper's regime: pretraining loss within 0.01 of AdamW


@dataclasses.dataclass(frozen=True)
class Endpoint:
  """``metric`` of ``arm`` minus ``baseline``, paired over seeds."""

  metric: str
  arm: str
  baseline: str

  @property
  def label(self) -> str:
    return f"{self.metric}: {self.arm} - {self.baseline}"


PRIMARY = Endpoint("heldout_matched", "nexus-0.3", "control")
SECONDARY = (
  Endpoint("heldout_matched", "nexus-0.3", "adamw"),
  Endpoint("heldout_matched", "nexus-0.01", "adamw"),
  Endpoint("pretrain_loss", "nexus-0.3", "adamw"),
  Endpoint("pretrain_loss", "nexus-0.01", "adamw"),
  Endpoint("cosine_mean", "nexus-0.3", "control"),
  Endpoint("cosine_mean", "nexus-0.3", "adamw"),
  Endpoint("cosine_mean", "nexus-0.01", "adamw"),
  *(Endpoint(f"heldout_matched/{name}", "nexus-0.3", "control") for name in HELDOUT_SETS),
)
# Fixed with the design, reported apart, uncorrected: how much the primary endpoint
# depends on AdamW's held-out curve being a line over the whole run, and the raw
# differences that the matching removes.
EXPLORATORY = (
  Endpoint("heldout_matched_quadratic", "nexus-0.3", "control"),
  Endpoint("heldout_matched_late", "nexus-0.3", "control"),
  Endpoint("heldout_mean", "nexus-0.3", "control"),
  Endpoint("pretrain_loss", "nexus-0.3", "control"),
)

FULL = StudySize(
  model="mini",
  seq_len=128,
  global_batch=32,
  steps=0,  # set by ``chinchilla_size``
  lr=3e-3,
  evals=8,
  eval_sequences=64,
  cosine_sequences=192,
  seeds=len(SEEDS),
  trio_seeds=len(SEEDS),
  sweep_gammas=(),
)
QUICK = dataclasses.replace(
  FULL,
  model="tiny",
  seq_len=64,
  global_batch=16,
  steps=24,
  evals=6,
  eval_sequences=16,
  cosine_sequences=32,
  seeds=len(QUICK_SEEDS),
  trio_seeds=len(QUICK_SEEDS),
)


def parameter_count(model: str) -> int:
  """Every parameter of the preset, embeddings and output head included."""
  abstract = nnx.eval_shape(lambda: Llama(get_preset(model), rngs=nnx.Rngs(0)))
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def chinchilla_size(size: StudySize) -> tuple[StudySize, int]:
  """``size`` with the outer steps that reach 20 tokens per parameter (rounded up), and
  the parameter count."""
  parameters = parameter_count(size.model)
  tokens_per_step = size.global_batch * size.seq_len
  steps = math.ceil(TOKENS_PER_PARAMETER * parameters / tokens_per_step)
  return dataclasses.replace(size, steps=steps), parameters


def run_order(seeds: Sequence[int]) -> list[tuple[Arm, int]]:
  """Seed by seed, the primary arms first (a partial study stays paired); nexus-0.01
  after every primary run."""
  primary = [a for a in ARMS if a.name in PRIMARY_ARMS]
  rest = [a for a in ARMS if a.name not in PRIMARY_ARMS]
  return [(a, s) for s in seeds for a in primary] + [(a, s) for s in seeds for a in rest]


def run_path(out: pathlib.Path, arm: Arm, seed: int) -> pathlib.Path:
  return out / "runs" / f"{arm.name}-seed{seed}.json"


# -------------------------------------------------------------------------- statistics


def holm(pvalues: Sequence[float]) -> list[float]:
  """Holm's step-down adjusted p-values, in the input order. The family is every entry:
  a test that could not be run (NaN) still counts in it, ranked last, and stays NaN."""
  order = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
  adjusted = [math.nan] * len(pvalues)
  running = 0.0
  for rank, (p, index) in enumerate(order):
    running = max(running, min(1.0, (len(pvalues) - rank) * p))
    adjusted[index] = running
  return adjusted


def endpoint_values(results: dict, metric: str, arm: str) -> dict[int, float]:
  """``metric`` per seed for one arm; ``cosine_mean`` averages the cosine over eval
  points, anything else is read at the final one."""
  values = {}
  for seed, run in results.get(arm, {}).items():
    if metric == "cosine_mean":
      values[seed] = statistics.fmean(p["cosine"] for p in run["points"])
    else:
      values[seed] = run["final"][metric]
  return values


def test_endpoint(results: dict, endpoint: Endpoint) -> dict:
  treatment = endpoint_values(results, endpoint.metric, endpoint.arm)
  baseline = endpoint_values(results, endpoint.metric, endpoint.baseline)
  seeds = [
    s
    for s in sorted(set(treatment) & set(baseline))
    if not (math.isnan(treatment[s]) or math.isnan(baseline[s]))
  ]
  finished = sorted(set(results.get(endpoint.arm, {})) & set(results.get(endpoint.baseline, {})))
  pairs = [treatment[s] for s in seeds], [baseline[s] for s in seeds]
  return paired_test(*pairs, confidence=1 - ALPHA) | {
    "seeds": seeds,
    "excluded": [s for s in finished if s not in seeds],  # no matched point
    "finished": len(finished),
  }


def add_matched(results: dict, steps: int) -> None:
  """``heldout_matched`` for the held-out mean (the primary endpoint) and each set, and
  the exploratory variants: AdamW's curve quadratic, or a line through the second half
  of training only."""
  if "adamw" not in results:
    return
  for name in HELDOUT_SETS:
    add_matched_heldout(results, f"{HELDOUT}/{name}", f"heldout_matched/{name}")
  add_matched_heldout(results, key="heldout_matched_quadratic", degree=2)
  add_matched_heldout(results, key="heldout_matched_late", min_step=steps // 2)
  add_matched_heldout(results)  # last: each run's matched_points counts the primary's


def analyse(results: dict, steps: int) -> dict:
  """Every endpoint's test; the secondary p-values Holm-adjusted as one family."""
  add_matched(results, steps)
  primary = test_endpoint(results, PRIMARY) | {"endpoint": PRIMARY}
  secondary = [test_endpoint(results, e) | {"endpoint": e} for e in SECONDARY]
  for row, adjusted in zip(secondary, holm([row.get("p", math.nan) for row in secondary])):
    row["p_holm"] = adjusted
  exploratory = [test_endpoint(results, e) | {"endpoint": e} for e in EXPLORATORY]
  return {"primary": primary, "secondary": secondary, "exploratory": exploratory}


def verdict(primary: dict, planned_seeds: int) -> str:
  if primary["finished"] < planned_seeds:
    return f"incomplete ({primary['finished']} of {planned_seeds} seeds); no verdict yet"
  if math.isnan(primary.get("p", math.nan)):
    return "no test possible"
  if primary["p"] < ALPHA:
    return (
      "confirmed (p < 0.05, lower held-out loss)"
      if primary["mean"] < 0
      else ("refuted: significantly higher held-out loss (p < 0.05)")
    )
  return "inconclusive: not significant at alpha 0.05"


# ------------------------------------------------------------------------------ report


def format_test(row: dict, digits: int = 4) -> list[str]:
  if "ci_low" not in row:  # fewer than 2 seeds, or no spread
    return [str(row["n"]), f"{row['mean']:+.{digits}f}" if row["n"] else "–", "–", "–", "–"]
  return [
    str(row["n"]),
    f"{row['mean']:+.{digits}f}",
    f"[{row['ci_low']:+.{digits}f}, {row['ci_high']:+.{digits}f}]",
    f"{row['t']:+.2f} ({row['df']})",
    f"{row['p']:.4f}",
  ]


def margin_note(row: dict) -> str:
  """Whether a pretraining-loss difference's 95 % CI lies inside the paper's margin."""
  if row["endpoint"].metric != "pretrain_loss" or "ci_low" not in row:
    return ""
  inside = -PRETRAIN_MARGIN <= row["ci_low"] and row["ci_high"] <= PRETRAIN_MARGIN
  return f"CI {'inside' if inside else 'not inside'} ±{PRETRAIN_MARGIN}"


def final_mean_std(runs: Iterable[dict], metrics: Sequence[str]) -> list[str]:
  runs = list(runs)
  return [
    mean_std(v for r in runs if not math.isnan(v := r["final"].get(m, math.nan))) or "–"
    for m in metrics
  ]


def matched_range(runs: Iterable[dict]) -> str:
  matched = [r.get("matched_points", 0) for r in runs]
  return f"{min(matched)}-{max(matched)}" if matched else "–"


def report(
  results: dict, size: StudySize, parameters: int, out: pathlib.Path, command: str, date: str
) -> tuple[str, dict]:
  """Writes ``out/results.md``; its text and the analysis. ``date``: when the runs were
  last trained (the provenance of the replication study's helpers)."""
  analysis = analyse(results, size.steps)
  runs = [r for by_seed in results.values() for r in by_seed.values()]
  tokens = size.steps * size.global_batch * size.seq_len
  first = runs[0]
  epochs = first["epochs"]
  planned = len(ARMS) * size.seeds
  lines = [
    f"# Confirmatory study results ({size.model}, generated)",
    "",
    *(
      [
        f"**INCOMPLETE: {len(runs)} of {planned} runs finished.** An endpoint with fewer "
        "seeds than planned is interim, and so is every Holm-adjusted p-value; the primary "
        "verdict is given once its three arms have every seed.",
        "",
      ]
      if len(runs) < planned
      else []
    ),
    f"Command: `{command}`  ",
    f"Written {date} from {len(runs)} finished runs "
    f"({sum(r['seconds'] for r in runs) / 3600:.2f} h of training and evaluation summed).",
    "",
    f"Model `{size.model}`: {parameters:,} parameters (embeddings and output head "
    f"included); {size.steps} outer steps of {size.global_batch} x {size.seq_len} tokens "
    f"= {tokens:,} tokens, {tokens / parameters:.2f} tokens per parameter. Epochs per "
    "domain: " + ", ".join(f"{d} {e:.3f}" for d, e in epochs.items()) + ". Eval points at "
    "steps " + ", ".join(str(p["step"]) for p in first["points"]) + ".",
    "",
    "## Run time",
    "",
    *markdown_table(
      ["arm", "runs", "seconds per run (mean, min-max)"],
      (
        [
          arm,
          str(len(seconds)),
          f"{statistics.fmean(seconds):.0f} ({min(seconds):.0f}-{max(seconds):.0f})",
        ]
        for arm, seconds in (
          (arm, [r["seconds"] for r in runs.values()]) for arm, runs in results.items()
        )
      ),
    ),
  ]
  header = ["endpoint", "n", "mean difference", "95 % CI", "t (df)", "p"]
  primary = analysis["primary"]
  lines += [
    "",
    "## Primary endpoint",
    "",
    *markdown_table(
      [*header, "verdict"],
      [[PRIMARY.label, *format_test(primary), verdict(primary, size.seeds)]],
    ),
    "",
    f"Seeds in the primary test: {', '.join(map(str, primary['seeds'])) or 'none'}"
    + (
      f"; excluded for want of an eval point inside AdamW's loss range: {primary['excluded']}"
      if primary["excluded"]
      else ""
    )
    + ".",
    "",
    f"## Secondary endpoints (Holm-adjusted as one family of {len(SECONDARY)} tests)",
    "",
    "Holm covers the tests of a zero difference. Whether pretraining loss stays within "
    f"±{PRETRAIN_MARGIN} of AdamW is read from the 95 % CI (the note column), an "
    "equivalence reading outside the Holm family.",
    "",
    *markdown_table(
      [*header, "p (Holm)", "note"],
      (
        [
          row["endpoint"].label,
          *format_test(row),
          "–" if math.isnan(row["p_holm"]) else f"{row['p_holm']:.4f}",
          margin_note(row),
        ]
        for row in analysis["secondary"]
      ),
    ),
    "",
    "## Exploratory (fixed before the first run, not corrected for multiplicity)",
    "",
    *markdown_table(
      header, ([row["endpoint"].label, *format_test(row)] for row in analysis["exploratory"])
    ),
  ]
  metrics = ["pretrain_loss", "heldout_mean", "heldout_matched", "cosine", "split_half_min"]
  sets = [k for k in first["final"] if k.startswith((f"{VALIDATION}/", f"{HELDOUT}/"))]
  lines += [
    "",
    "## Arms at the final eval point (mean ± sd over seeds)",
    "",
    *markdown_table(
      ["arm", "seeds", *metrics, "matched points per run"],
      (
        [arm, str(len(by_seed)), *final_mean_std(by_seed.values(), metrics)]
        + [matched_range(by_seed.values())]
        for arm, by_seed in results.items()
      ),
    ),
    "",
    "## Every validation and held-out set at the final eval point (mean over seeds)",
    "",
    *markdown_table(
      ["arm", *sets],
      ([arm, *final_set_means(by_seed.values(), sets)] for arm, by_seed in results.items()),
    ),
    "",
    "## Cross-domain gradient cosine through training (mean over seeds)",
    "",
    *markdown_table(
      ["arm", *(f"step {p['step']}" for p in first["points"])],
      (
        [
          arm,
          *(
            f"{statistics.fmean(column):+.4f}"
            for column in zip(*([p["cosine"] for p in r["points"]] for r in by_seed.values()))
          ),
        ]
        for arm, by_seed in results.items()
      ),
    ),
  ]
  lines += [
    "",
    "![held-out against pretraining loss](same_loss.png)",
    *(
      ["![paired differences](paired_differences.png)"]
      if any("ci_low" in r for r in [primary, *analysis["secondary"]])
      else []
    ),
    "![cosine through training](cosine_through_training.png)",
    "",
  ]
  text = "\n".join(lines)
  (out / "results.md").write_text(text)
  return text, analysis


ARM_COLORS = {
  "adamw": "tab:blue",
  "control": "tab:orange",
  "nexus-0.3": "tab:red",
  "nexus-0.01": "tab:green",
}


def plots(results: dict, analysis: dict, out: pathlib.Path) -> None:
  # matplotlib (the bench extra) loads only where a study draws.
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  slope, intercept, low, high = heldout_line(results["adamw"].values())
  figure, (losses, gaps) = plt.subplots(1, 2, figsize=(12, 5))
  losses.plot(
    [low, high], [slope * low + intercept, slope * high + intercept], "k--", lw=1, label="AdamW fit"
  )
  gaps.axhline(0, color="k", ls="--", lw=1, label="AdamW fit")
  for arm, by_seed in results.items():
    for index, run in enumerate(by_seed.values()):
      x = np.array([p["pretrain_loss"] for p in run["points"]])
      y = np.array([p["heldout_mean"] for p in run["points"]])
      style = dict(color=ARM_COLORS[arm], ms=3, lw=0.7, alpha=0.7)
      style["label"] = arm if index == 0 else None
      losses.plot(x, y, "o-", **style)
      gaps.plot(x, y - (slope * x + intercept), "o-", **style)
  losses.set(
    xlabel="pretraining (validation) loss",
    ylabel="mean held-out loss",
    title="Every run's eval points",
  )
  gaps.set(
    xlabel="pretraining (validation) loss",
    ylabel="held-out minus AdamW's fit at the same loss",
    title="The gap that heldout_matched averages",
  )
  gaps.axvspan(low, high, color="grey", alpha=0.08, lw=0)
  losses.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(out / "same_loss.png", dpi=120)

  rows = [r for r in [analysis["primary"], *analysis["secondary"]] if "ci_low" in r]
  panels = {
    "held-out at matched pretraining loss (nats)": "heldout_matched",
    "final pretraining loss (nats)": "pretrain_loss",
    "cross-domain cosine, mean over eval points": "cosine_mean",
  }
  grouped = {
    title: [r for r in rows if r["endpoint"].metric.split("/")[0] == metric]
    for title, metric in panels.items()
  }
  grouped = {title: group for title, group in grouped.items() if group}
  if grouped:
    heights = [len(group) for group in grouped.values()]
    figure, axes = plt.subplots(
      len(grouped),
      1,
      figsize=(8, 0.45 * sum(heights) + 1.2 * len(grouped)),
      gridspec_kw={"height_ratios": heights},
      squeeze=False,
    )
    for axis, (title, group) in zip(axes[:, 0], grouped.items()):
      for y, row in enumerate(group):
        axis.errorbar(
          row["mean"],
          y,
          xerr=[[row["mean"] - row["ci_low"]], [row["ci_high"] - row["mean"]]],
          fmt="o",
          capsize=3,
          color="tab:red" if row["endpoint"] == PRIMARY else "tab:gray",
        )
      axis.axvline(0, color="k", lw=0.8)
      if title.startswith("final pretraining"):
        axis.axvspan(-PRETRAIN_MARGIN, PRETRAIN_MARGIN, color="tab:green", alpha=0.15, lw=0)
      labels = [f"{r['endpoint'].label.split(': ')[1]} ({r['endpoint'].metric})" for r in group]
      axis.set_yticks(range(len(group)), labels, fontsize=7)
      axis.set_ylim(len(group) - 0.5, -0.5)
      axis.set_title(title, fontsize=9)
    axes[-1, 0].set_xlabel("paired difference over seeds, 95 % CI (primary in red)")
    figure.tight_layout()
    figure.savefig(out / "paired_differences.png", dpi=120)

  figure, axis = plt.subplots(figsize=(7, 4))
  for arm, by_seed in results.items():
    runs = list(by_seed.values())
    tokens = np.array([p["tokens"] for p in runs[0]["points"]]) / 1e6
    values = np.array([[p["cosine"] for p in r["points"]] for r in runs])
    half_width = (
      stats.t.ppf(0.975, len(runs) - 1) * values.std(0, ddof=1) / math.sqrt(len(runs))
      if len(runs) > 1
      else np.zeros(len(tokens))
    )
    mean = values.mean(0)
    axis.plot(tokens, mean, "o-", color=ARM_COLORS[arm], label=f"{arm} ({len(runs)} seeds)")
    axis.fill_between(
      tokens, mean - half_width, mean + half_width, color=ARM_COLORS[arm], alpha=0.2
    )
  axis.set(
    xlabel="training tokens (M)",
    ylabel="mean cross-domain gradient cosine",
    title="Gradient agreement through training (mean, 95 % CI)",
  )
  axis.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(out / "cosine_through_training.png", dpi=120)
  plt.close("all")


# ------------------------------------------------------------------------------- runs


def read_results(out: pathlib.Path, order) -> dict:
  results: dict[str, dict[int, dict]] = {}
  for arm, seed in order:
    path = run_path(out, arm, seed)
    if path.exists():
      try:
        results.setdefault(arm.name, {})[seed] = json.loads(path.read_text())
      except json.JSONDecodeError:
        print(f"warning: {path} is not valid JSON; delete it to train that run again")
  return {a.name: results[a.name] for a in ARMS if a.name in results}


def status_path(out: pathlib.Path, worker: int) -> pathlib.Path:
  return out / "logs" / f"worker{worker}.json"


def token_cache(data: pathlib.Path | None):
  """The token cache at ``data`` (``python -m train.data.prepare``), or the built-in
  corpus's, built on first use."""
  return TokenCache(data) if data else ensure_default_cache(show_progress=True)


def work(
  size: StudySize,
  out: pathlib.Path,
  order,
  worker: int,
  max_runs: int | None,
  data: pathlib.Path | None = None,
) -> int:
  """Trains the next unclaimed unfinished run in ``order`` until none is left (or
  ``max_runs`` are done). A run is claimed by creating its lock file, which holds the
  worker's process id."""
  study = None
  (out / "logs").mkdir(exist_ok=True)
  done = 0
  for arm, seed in order:
    path = run_path(out, arm, seed)
    lock = path.with_suffix(".lock")
    if max_runs is not None and done >= max_runs:
      break
    if path.exists():
      continue
    try:
      claim = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
      continue
    os.write(claim, str(os.getpid()).encode())
    os.close(claim)
    if path.exists():  # finished by the other worker between the two checks
      lock.unlink()
      continue
    name = path.stem
    started = time.perf_counter()

    def on_step(step, metrics, name=name, started=started):
      if step % 25 == 0 or step == size.steps:
        status_path(out, worker).write_text(
          json.dumps(
            {
              "run": name,
              "step": step,
              "steps": size.steps,
              "loss": float(metrics["train_loss"]),
              "seconds": round(time.perf_counter() - started, 1),
            }
          )
        )

    try:
      study = study or Study(size, out, MIXTURES, DOMAINS, token_cache(data))
      result = study.run(arm, seed, on_step=on_step)
    finally:
      lock.unlink(missing_ok=True)
    final = result["final"]
    print(
      f"{name}: pretrain {final['pretrain_loss']:.4f} held-out {final['heldout_mean']:.4f} "
      f"cosine {final['cosine']:+.4f} in {result['seconds']:.0f} s",
      flush=True,
    )
    done += 1
  status_path(out, worker).unlink(missing_ok=True)
  return 0


def run_workers(args, order, size: StudySize, out: pathlib.Path) -> int:
  """``args.jobs`` workers, each pinned to its share of the CPU cores, with one progress
  bar over the study; a worker's output goes to ``OUT/logs/worker<i>.txt``."""
  (out / "logs").mkdir(parents=True, exist_ok=True)
  flags = ["--quick"] if args.quick else []
  flags += ["--out", str(out)] + (["--runs", str(args.runs)] if args.runs else [])
  flags += ["--data", str(args.data)] if args.data else []
  processes, stopping, terminated = [], [], set()
  previous = signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
  try:
    for worker, cores in enumerate(core_shares(args.jobs)):
      with (out / "logs" / f"worker{worker}.txt").open("a") as log:
        processes.append(
          start_pinned("studies.confirm", [*flags, "--worker", str(worker)], cores, log)
        )
    finished = lambda: sum(run_path(out, a, s).exists() for a, s in order)
    with tqdm(total=len(order), initial=finished(), unit="run", dynamic_ncols=True) as bar:
      while not stopping and any(p.poll() is None for p in processes):
        time.sleep(5)
        bar.update(finished() - bar.n)
        states = []
        for worker in range(len(processes)):
          try:
            state = json.loads(status_path(out, worker).read_text())
          except (FileNotFoundError, json.JSONDecodeError):
            continue
          remaining = state["seconds"] / state["step"] * (state["steps"] - state["step"])
          states.append(
            f"{state['run']} {state['step']}/{state['steps']} loss {state['loss']:.3f} "
            f"{remaining / 60:.0f} min left"
          )
        bar.set_postfix_str("; ".join(states))
  finally:
    signal.signal(signal.SIGTERM, previous)
    for index, process in enumerate(processes):
      if process.poll() is None:
        terminated.add(index)
        process.terminate()
        process.wait()
  failed = [i for i, p in enumerate(processes) if p.returncode and i not in terminated]
  for worker in failed:
    log = (out / "logs" / f"worker{worker}.txt").read_text()
    print(f"error: worker {worker} failed; its log ends:\n{log[-3000:]}", file=sys.stderr)
  if stopping:
    print("stopped by SIGTERM; the unfinished runs start over on the next invocation")
    return 128 + int(signal.SIGTERM)
  return 1 if failed else 0


def remove_stale_locks(out: pathlib.Path) -> None:
  """Deletes the locks of workers that no longer run; refuses to start beside a live one."""
  for lock in (out / "runs").glob("*.lock"):
    try:
      pid = int(lock.read_text())
      os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
      lock.unlink()
      continue
    except PermissionError:
      pass  # alive, another user's
    raise SystemExit(
      f"error: {lock.stem} is being trained by process {pid}; wait for it or stop it "
      f"(kill {pid}) before starting the study again."
    )


def check_no_repeats(size: StudySize, data: pathlib.Path | None) -> dict[str, float]:
  """Epochs per domain over a whole run; an error if any domain would be read twice."""
  cache = token_cache(data)
  sequences = {d: source_sequences(cache, d, size.seq_len) for d in DOMAINS}
  loader = LoaderConfig(size.seq_len, size.global_batch // 4, 4)
  epochs = epochs_per_source(sequences, {d: 1.0 for d in DOMAINS}, loader, size.steps)
  repeated = {d: e for d, e in epochs.items() if e > 1}
  if repeated:
    raise SystemExit(f"error: {repeated} would be read more than once; shorten the study.")
  return epochs


def default_jobs(cores: int) -> int:
  return 2 if cores >= 2 and jax.default_backend() == "cpu" else 1
