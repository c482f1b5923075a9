"""The replication study: what does Nexus change at matched pretraining loss, and why?

Every arm trains the same Llama on the same default corpus with the same seeds, data
order, global batch (K x B sequences), schedule and AdamW; only the (pseudo-)gradient
differs. Arms (``ARMS``):

  adamw           gradient accumulation over the K micro-batches;
  nexus-0.01      Nexus at the paper's gamma;
  control         Nexus at gamma = 1e-4: the same per-micro-batch normalization, no
                  alignment term (its second-order part scales with gamma). Only Nexus
                  minus this control measures the second-order effect;
  nexus-large     Nexus at the gamma a short sweep picks (``choose_large_gamma``);
  k1              Nexus with K = 1 over the whole batch: the paper's NSGD ablation;
  momentum, dot   the inner-step ablations of ``studies/replication/ablations.py`` at that gamma;
  and the AdamW / nexus-large / control trio again at K = 2 and 8 (same global batch),
  with ``source`` micro-batches, and under Math10 / Math70 mixtures.

Every metric is taken at the outer parameters on fixed windows, never from inner-point
losses: training loss on training windows, pretraining loss (the validation loss of the
run's own mixture), each validation domain and held-out set, and the mean cross-domain
gradient cosine with its split-half reliability (each domain's gradient from two
disjoint halves of its validation windows; their cosine tells how much of the
gradient is signal). Tables give mean +- std over seeds and paired differences
(same seed) with t = mean / (sd / sqrt(n)) (``scipy.stats.ttest_rel``).

Each run's result is a JSON file under ``OUT/runs``; a rerun skips finished runs, so an
interrupted study resumes where it stopped. The command is ``python -m studies.replication``
(``studies/replication/cli.py``; README.md beside this file).
"""

import dataclasses
import datetime
import json
import math
import os
import pathlib
import statistics
import time
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from scipy import stats

from models import next_token_loss
from studies.replication.ablations import nexus_ablation
from train import parallel
from train.build import build_training
from train.config import TrainConfig
from train.data.corpus import (
  DOMAINS,
  HELDOUT,
  HELDOUT_SETS,
  TRAIN,
  VALIDATION,
  ensure_default_cache,
)
from train.data.mixture import (
  DEFAULT_MIXTURE,
  LoaderConfig,
  epochs_per_source,
  outer_step_dataset,
  parse_mixture,
  source_sequences,
)
from train.evaluation import Evaluator, cache_eval_sets
from train.optimizers import outer_optimizer

CONTROL_GAMMA = 1e-4
MIXTURES = {
  "equal": DEFAULT_MIXTURE,
  "math10": "prose=0.3,code=0.3,math=0.1,technical=0.3",
  "math70": "prose=0.1,code=0.1,math=0.7,technical=0.1",
}


@dataclasses.dataclass(frozen=True)
class StudySize:
  """How big the study is. ``global_batch`` sequences per outer step, split into K."""

  model: str
  seq_len: int
  global_batch: int
  steps: int
  lr: float
  evals: int
  eval_sequences: int
  cosine_sequences: int
  seeds: int
  trio_seeds: int
  sweep_gammas: tuple[float, ...]


FULL = StudySize(
  model="mini",
  seq_len=128,
  global_batch=32,
  steps=150,
  lr=3e-3,
  evals=3,
  eval_sequences=64,
  cosine_sequences=192,
  seeds=3,
  trio_seeds=5,
  sweep_gammas=(0.03, 0.1, 0.3),
)
QUICK = StudySize(
  model="tiny",
  seq_len=64,
  global_batch=16,
  steps=24,
  lr=3e-3,
  evals=2,
  eval_sequences=16,
  cosine_sequences=32,
  seeds=2,
  trio_seeds=2,
  sweep_gammas=(0.1, 0.3),
)


@dataclasses.dataclass(frozen=True)
class Arm:
  """One optimizer setting. ``kind``: adamw, nexus, dot or momentum."""

  name: str
  kind: str
  gamma: float = 0.0
  microbatches: int = 4
  batch_mode: str = "mixed"
  mixture: str = "equal"


def trio(suffix: str, large_gamma: float, **setting) -> list[Arm]:
  return [
    Arm(f"adamw{suffix}", "adamw", **setting),
    Arm(f"nexus-large{suffix}", "nexus", large_gamma, **setting),
    Arm(f"control{suffix}", "nexus", CONTROL_GAMMA, **setting),
  ]


def main_arms() -> list[Arm]:
  return [
    Arm("adamw", "adamw"),
    Arm("nexus-0.01", "nexus", 0.01),
    Arm("control", "nexus", CONTROL_GAMMA),
  ]


def sweep_arms(size: StudySize) -> list[Arm]:
  return [Arm(f"sweep-{gamma:g}", "nexus", gamma) for gamma in size.sweep_gammas]


def ablation_arms(large_gamma: float) -> list[Arm]:
  """Everything after the sweep, in the order it runs."""
  arms = [
    Arm("nexus-large", "nexus", large_gamma),
    Arm("k1", "nexus", 0.01, microbatches=1),
    Arm("momentum", "momentum", large_gamma),
    Arm("dot", "dot", large_gamma),
  ]
  for k in (2, 8):
    arms += trio(f"-k{k}", large_gamma, microbatches=k)[1:]  # AdamW does not depend on K
  # With equal weights and K = 4 the source and mixed loaders put the same sequences in a
  # step, so AdamW's accumulated gradient, and its run, are the same in both modes.
  arms += trio("-source", large_gamma, batch_mode="source")[1:]
  for mixture in ("math10", "math70"):
    arms += trio(f"-{mixture}", large_gamma, mixture=mixture)
  return arms


def seeds_for(arm: Arm, size: StudySize) -> range:
  if arm.name.startswith("sweep-"):
    return range(1)
  return range(size.trio_seeds if arm in main_arms() else size.seeds)


class Study:
  """Shared data, eval sets and cosine batches; ``run`` trains and measures one arm/seed."""

  def __init__(
    self,
    size: StudySize,
    out: pathlib.Path,
    mixtures: dict[str, str] = MIXTURES,
    domains: tuple[str, ...] = DOMAINS,
    cache=None,
  ):
    """``mixtures`` names each ``Arm.mixture``; ``domains`` are the ones whose gradients
    the cosine compares; ``cache`` is a token cache (default: the built-in corpus's)."""
    self.size, self.out, self.mixtures, self.domains = size, out, mixtures, domains
    self.cache = cache or ensure_default_cache(show_progress=True)
    self.sequences = {
      name: source_sequences(self.cache, name, size.seq_len) for name in self.cache.names(TRAIN)
    }
    self.eval_sets = cache_eval_sets(
      self.cache, size.seq_len, size.eval_sequences, roles=(TRAIN, VALIDATION, HELDOUT)
    )
    self.cosine_batches = self._cosine_batches()
    self.mesh = parallel.make_mesh(parallel.parse_mesh("fsdp=-1", jax.device_count()), False)
    (out / "runs").mkdir(parents=True, exist_ok=True)

  def _cosine_batches(self) -> np.ndarray:
    """[2 * domains, N / 2, T + 1]: halves A then B of each domain's validation windows,
    evenly spaced and interleaved so that both halves span the whole set."""
    halves = []
    for domain in self.domains:
      windows = self.cache.windows(VALIDATION, domain, self.size.seq_len)
      count = min(self.size.cosine_sequences, len(windows) - len(windows) % 2)
      picks = np.linspace(0, len(windows) - 1, count).round().astype(int)
      halves += [
        np.stack([windows[i] for i in picks[0::2]]),
        np.stack([windows[i] for i in picks[1::2]]),
      ]
    rows = min(len(half) for half in halves)
    return np.stack([half[:rows] for half in halves])

  def config(self, arm: Arm, seed: int) -> TrainConfig:
    return TrainConfig(
      model=self.size.model,
      seq_len=self.size.seq_len,
      micro_batch_size=self.size.global_batch // arm.microbatches,
      microbatches=arm.microbatches,
      mixture=self.mixtures[arm.mixture],
      batch_mode=arm.batch_mode,
      seed=seed,
      optimizer="adamw" if arm.kind == "adamw" else "nexus",
      lr=self.size.lr,
      inner_lr=arm.gamma if arm.gamma else 0.01,
      steps=self.size.steps,
      eval_sequences=self.size.eval_sequences,
      out=str(self.out),
    )

  def run(self, arm: Arm, seed: int, on_step=None) -> dict:
    """Trains and measures ``arm`` at ``seed``, or reads its finished result.
    ``on_step(step, metrics)`` follows progress after every outer step."""
    path = self.out / "runs" / f"{arm.name}-seed{seed}.json"
    if path.exists():
      return json.loads(path.read_text())
    config = self.config(arm, seed)
    tx = None
    if arm.kind in ("dot", "momentum"):
      tx = optax.chain(nexus_ablation(arm.gamma, arm.kind), outer_optimizer(config))
    training = build_training(config, self.mesh, tx=tx)
    weights = parse_mixture(config.mixture, list(self.sequences))
    loader = LoaderConfig(
      config.seq_len, config.micro_batch_size, config.microbatches, config.batch_mode, seed
    )
    iterator = iter(outer_step_dataset(self.sequences, weights, loader).to_iter_dataset())
    evaluator = Evaluator(training.graphdef, self.mesh, batch_size=64)
    cosines = cosine_statistics_fn(training.graphdef, self.domains)
    eval_steps = {
      round(self.size.steps * (i + 1) / self.size.evals) for i in range(self.size.evals)
    }
    state, started, points = training.init(), time.perf_counter(), []
    for step in range(1, self.size.steps + 1):
      tokens = jnp.asarray(next(iterator)["tokens"])
      state, metrics = training.step(state, tokens)
      if on_step is not None:
        on_step(step, metrics)
      if step in eval_steps:
        point = {
          "step": step,
          "tokens": step * config.tokens_per_step,
          "inner_or_batch_loss": float(metrics["train_loss"]),
        }
        for eval_set in self.eval_sets:
          point[eval_set.name] = evaluator.losses(state.params, eval_set)["loss"]
        point.update(cosines(state.params, self.cosine_batches))
        point.update(summary_losses(point, weights))
        points.append(point)
    result = {
      "arm": dataclasses.asdict(arm),
      "seed": seed,
      "config": config.to_dict(),
      "skipped_steps": int(state.skipped_steps),
      "points": points,
      "final": points[-1],
      "seconds": round(time.perf_counter() - started, 1),
      "epochs": epochs_per_source(self.sequences, weights, loader, self.size.steps),
    }
    # Written whole or not at all: a resumed study takes an existing file as finished.
    partial = path.with_suffix(".json.tmp")
    partial.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(partial, path)
    return result


def cosine_statistics_fn(graphdef, domains: tuple[str, ...] = DOMAINS):
  """``stats(params, batches [2S, N, T + 1]) -> dict``: the cross-domain cosine of full
  per-domain gradients (halves pooled), each domain's split-half gradient cosine, and
  the mean cross-domain cosine within each half alone."""

  def mean_loss(params, tokens):
    return next_token_loss(nnx.merge(graphdef, params), tokens)

  @jax.jit
  def gram(params, batches):
    grads = jax.lax.map(lambda batch: jax.grad(mean_loss)(params, batch), batches)
    flat = jnp.concatenate([g.reshape(g.shape[0], -1) for g in jax.tree.leaves(grads)], axis=1)
    return flat @ flat.T

  def stats(params, batches) -> dict:
    g = np.asarray(gram(params, batches), np.float64)
    return cosine_statistics(g, domains)

  return stats


def cosine_statistics(gram: np.ndarray, domains: tuple[str, ...] = DOMAINS) -> dict:
  """Cosine statistics from the Gram matrix of [A_1, B_1, A_2, B_2, ...] half gradients.

  The full gradient of domain d is (A_d + B_d) / 2, so its inner products follow from
  the Gram matrix without recomputing any gradient.
  """
  count = len(gram) // 2
  if count != len(domains):
    raise ValueError(f"a Gram matrix of {count} domains' halves, but {len(domains)} names")
  pool = np.zeros((count, 2 * count))
  for d in range(count):
    pool[d, 2 * d : 2 * d + 2] = 0.5
  full = pool @ gram @ pool.T

  def mean_off_diagonal_cosine(matrix):
    norms = np.sqrt(np.diag(matrix))
    cos = matrix / np.outer(norms, norms)
    return float(cos[~np.eye(len(cos), dtype=bool)].mean())

  split_half = [
    gram[2 * d, 2 * d + 1] / math.sqrt(gram[2 * d, 2 * d] * gram[2 * d + 1, 2 * d + 1])
    for d in range(count)
  ]
  return {
    "cosine": mean_off_diagonal_cosine(full),
    "cosine_half_a": mean_off_diagonal_cosine(gram[0::2, 0::2]),
    "cosine_half_b": mean_off_diagonal_cosine(gram[1::2, 1::2]),
    "split_half": dict(zip(domains, map(float, split_half))),
    "split_half_min": float(min(split_half)),
  }


def summary_losses(point: dict, weights: dict[str, float]) -> dict:
  """Mixture-weighted training and pretraining (validation) loss; mean held-out loss."""
  total = sum(weights.values())
  weighted = lambda role: sum(w * point[f"{role}/{d}"] for d, w in weights.items()) / total
  return {
    "train_loss": weighted(TRAIN),
    "pretrain_loss": weighted(VALIDATION),
    "heldout_mean": statistics.fmean(point[f"{HELDOUT}/{s}"] for s in HELDOUT_SETS),
  }


def choose_large_gamma(sweep: dict[float, dict], control: dict, tolerance: float = 0.02) -> float:
  """The largest swept gamma whose pretraining loss is within ``tolerance`` of the control's
  (same seed): the strongest alignment term still in the paper's same-loss regime. With
  none inside, the smallest gamma."""
  inside = [
    g
    for g, r in sweep.items()
    if r["final"]["pretrain_loss"] - control["final"]["pretrain_loss"] <= tolerance
  ]
  return max(inside) if inside else min(sweep)


# ----------------------------------------------------------------------------- analysis

METRICS = (
  "train_loss",
  "pretrain_loss",
  "heldout_mean",
  "heldout_matched",
  "cosine",
  "split_half_min",
)
PAIRED_METRICS = METRICS[:5]


def baseline_of(arm: str) -> str:
  """The AdamW run with the same data (mixture) as ``arm``."""
  for mixture in MIXTURES:
    if arm.endswith(f"-{mixture}"):
      return f"adamw-{mixture}"
  return "adamw"


def heldout_fit(
  runs, metric: str = "heldout_mean", degree: int = 1, min_step: int = 0
) -> tuple[np.ndarray, float, float]:
  """AdamW's held-out loss (``metric``) as a polynomial of ``degree`` in pretraining loss,
  fitted to every eval point from ``min_step`` on of every seed: (coefficients, highest
  power first; lowest and highest pretraining loss seen)."""
  x, y = np.array(
    [(p["pretrain_loss"], p[metric]) for run in runs for p in eval_points(run, min_step)]
  ).T
  return np.polyfit(x, y, degree), float(x.min()), float(x.max())


def eval_points(run: dict, min_step: int = 0) -> list[dict]:
  return [p for p in run["points"] if not min_step or p["step"] >= min_step]


def heldout_line(runs) -> tuple[float, float, float, float]:
  """AdamW's held-out mean as a linear function of pretraining loss, fitted to every eval
  point of every seed: (slope, intercept, lowest, highest pretraining loss seen)."""
  (slope, intercept), low, high = heldout_fit(runs)
  return float(slope), float(intercept), low, high


def add_matched_heldout(
  results: dict,
  metric: str = "heldout_mean",
  key: str = "heldout_matched",
  degree: int = 1,
  min_step: int = 0,
) -> None:
  """Adds ``key`` to each run's final metrics: the mean, over its eval points whose
  pretraining loss lies inside the range AdamW visited, of held-out loss (``metric``)
  minus AdamW's at that same pretraining loss (Fig. 7a as a number; NaN without such a
  point). AdamW's held-out loss is a polynomial of ``degree`` in pretraining loss, fitted
  to every AdamW eval point of every seed; with ``min_step`` only eval points from that
  step on enter the fit and the gaps. Interpolation only: a run that reaches losses
  AdamW never saw is not extrapolated."""
  fits = {
    baseline: heldout_fit(results[baseline].values(), metric, degree, min_step)
    for baseline in {baseline_of(a) for a in results} & set(results)
  }
  for arm, runs in results.items():
    coefficients, low, high = fits[baseline_of(arm)]
    for run in runs.values():
      gaps = [
        p[metric] - np.polyval(coefficients, p["pretrain_loss"])
        for p in eval_points(run, min_step)
        if low <= p["pretrain_loss"] <= high
      ]
      run["final"][key] = float(statistics.fmean(gaps)) if gaps else float("nan")
      run["matched_points"] = len(gaps)


def four_places(value: float) -> str:
  """``value`` to four decimals, a figure that rounds to zero as 0.0000 whatever its sign: a
  mean of residuals about zero lands on either side by the last bits of the NumPy in use."""
  return f"{round(value, 4) or 0.0:.4f}"


def mean_std(values) -> str:
  values = list(values)
  if not values:
    return ""
  if len(values) < 2:
    return four_places(values[0])
  return f"{four_places(statistics.fmean(values))} ± {four_places(statistics.stdev(values))}"


def data_settings(results: dict) -> dict[tuple[str, str], dict[str, float]]:
  """Epochs per domain of each (mixture, batch mode) that some arm trains on, in arm order."""
  settings = {}
  for runs in results.values():
    run = next(iter(runs.values()))
    settings.setdefault((run["arm"]["mixture"], run["arm"]["batch_mode"]), run["epochs"])
  return settings


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
  """The lines of a markdown table: the header, its rule, then one line per row of cells."""
  return [
    "| " + " | ".join(header) + " |",
    "|" + "---|" * len(header),
    *("| " + " | ".join(row) + " |" for row in rows),
  ]


def final_set_means(runs: Iterable[dict], sets: Sequence[str]) -> list[str]:
  """Each validation or held-out set's final loss, averaged over ``runs``, as cells."""
  runs = list(runs)
  return [f"{statistics.fmean(r['final'][s] for r in runs):.4f}" for s in sets]


def paired_test(
  treatment: Sequence[float], baseline: Sequence[float], confidence: float = 0.95
) -> dict:
  """Two-sided paired t-test of ``treatment - baseline`` (``scipy.stats.ttest_rel``).

  With differences d_1..d_n: t = mean(d) / (sd(d) / sqrt(n)) on n - 1 degrees of freedom,
  sd with Bessel's correction, and the ``confidence`` interval mean(d) +- t_q sd / sqrt(n).
  Fewer than two pairs, or differences without spread, give no test: t and p are NaN.
  """
  treatment, baseline = np.asarray(treatment, float), np.asarray(baseline, float)
  differences = treatment - baseline
  n = len(differences)
  result = {"n": n, "mean": float(differences.mean()) if n else math.nan}
  if n < 2:
    return result | {"sd": math.nan, "t": math.nan, "df": n - 1, "p": math.nan}
  if np.all(differences == differences[0]):  # no spread: t is infinite, not evidence
    return result | {"sd": 0.0, "t": math.nan, "df": n - 1, "p": math.nan}
  test = stats.ttest_rel(treatment, baseline)
  interval = test.confidence_interval(confidence)
  return result | {
    "sd": float(differences.std(ddof=1)),
    "t": float(test.statistic),
    "df": int(test.df),
    "p": float(test.pvalue),
    "ci_low": float(interval.low),
    "ci_high": float(interval.high),
  }


def paired(results: dict, arm: str, baseline: str, metric: str) -> dict | None:
  """:func:`paired_test` of ``arm - baseline`` over the seeds both ran, NaNs left out;
  None without a pair."""
  seeds = sorted(set(results.get(arm, {})) & set(results.get(baseline, {})))
  pairs = [(results[arm][s]["final"][metric], results[baseline][s]["final"][metric]) for s in seeds]
  pairs = [(a, b) for a, b in pairs if not math.isnan(a - b)]
  if not pairs:
    return None
  return paired_test(*zip(*pairs))


def format_paired(p: dict | None) -> str:
  if p is None:
    return "–"
  return f"{p['mean']:+.4f} ± {p['sd']:.4f} (t {p['t']:+.1f})"


CONTRASTS = [
  ("nexus-0.01", "adamw"),
  ("control", "adamw"),
  ("nexus-0.01", "control"),
  ("nexus-large", "adamw"),
  ("nexus-large", "control"),
  ("k1", "adamw"),
  ("momentum", "nexus-large"),
  ("dot", "adamw"),
  ("nexus-large-k2", "control-k2"),
  ("nexus-large-k2", "adamw"),
  ("nexus-large-k8", "control-k8"),
  ("nexus-large-k8", "adamw"),
  ("nexus-large-source", "control-source"),
  ("nexus-large-source", "adamw"),
  ("control-source", "adamw"),
  ("nexus-large-math10", "control-math10"),
  ("nexus-large-math10", "adamw-math10"),
  ("nexus-large-math70", "control-math70"),
  ("nexus-large-math70", "adamw-math70"),
]


def report(
  results: dict,
  size: StudySize,
  large_gamma: float,
  out: pathlib.Path,
  command: str,
  seconds: float,
  provenance: dict,
) -> str:
  """Writes ``out/results.md`` and returns its text; ``provenance`` (:func:`provenance`)
  says when and with what the runs were made, ``seconds`` how long this invocation took."""
  add_matched_heldout(results)
  arms = list(results)
  first = next(iter(results[arms[0]].values()))
  run_minutes = sum(r["seconds"] for runs in results.values() for r in runs.values()) / 60
  sets = [k for k in first["final"] if k.startswith((f"{VALIDATION}/", f"{HELDOUT}/"))]
  lines = [
    f"# Replication study results ({size.model}, generated)",
    "",
    f"Command: `{command}`  ",
    f"Date: {provenance['date']}, "
    f"{run_minutes:.1f} min of training and evaluation summed over the runs "
    f"({seconds / 60:.1f} min in this invocation; finished runs are read from disk), "
    f"jax {provenance['jax']}, {provenance['devices']} {provenance['platform']} device(s).",
    "",
    f"Model `{size.model}`, {size.steps} outer steps of {size.global_batch} x "
    f"{size.seq_len} tokens ({size.steps * size.global_batch * size.seq_len:,} tokens "
    f"per run), WSD lr {size.lr}, AdamW betas (0.9, 0.95), wd 0.2, clip 1.0. "
    f"Large gamma chosen by the sweep: **{large_gamma:g}**. Losses in nats per token at "
    "the outer parameters; t = paired mean / (sd / sqrt(n)). `heldout_matched`: held-out "
    "mean minus the AdamW line (held-out against pretraining loss, fitted to every "
    "AdamW eval point of the same data) at the run's own pretraining loss, averaged "
    "over its eval points inside AdamW's loss range (`matched points` counts them; "
    "none means no number). `split_half_min`: the lowest over domains of the cosine "
    "between a domain's gradients on two disjoint halves of its windows.",
    "",
    "## Arms (mean ± std over seeds, final step)",
    "",
    *markdown_table(
      ["arm", "seeds", *METRICS, "matched points"],
      (
        [
          arm,
          str(len(runs)),
          *(
            mean_std(v for r in runs if not math.isnan(v := r["final"][m])) or "–" for m in METRICS
          ),
          str(sum(r["matched_points"] for r in runs)),
        ]
        for arm, runs in ((arm, results[arm].values()) for arm in arms)
      ),
    ),
    "",
    "## Paired differences (same seeds)",
    "",
    *markdown_table(
      ["arm - baseline", "n", *PAIRED_METRICS],
      (
        [f"{arm} - {baseline}", str(cells[0]["n"]), *map(format_paired, cells)]
        for arm, baseline in CONTRASTS
        if (cells := [paired(results, arm, baseline, m) for m in PAIRED_METRICS])[0] is not None
      ),
    ),
    "",
    "## Every validation and held-out set (mean over seeds)",
    "",
    *markdown_table(
      ["arm", *(s.replace("validation/", "val/").replace("heldout/", "ho/") for s in sets)],
      ([arm, *final_set_means(results[arm].values(), sets)] for arm in arms),
    ),
    "",
    "## Cross-domain gradient cosine through training (mean over seeds)",
    "",
    *markdown_table(
      ["arm", *(f"step {p['step']}" for p in first["points"]), "split-half min (final)"],
      (
        [
          arm,
          *(
            f"{statistics.fmean(r['points'][i]['cosine'] for r in runs):.4f}"
            for i in range(len(first["points"]))
          ),
          f"{statistics.fmean(r['final']['split_half_min'] for r in runs):.3f}",
        ]
        for arm, runs in ((arm, list(results[arm].values())) for arm in arms)
      ),
    ),
    "",
    "## Epochs per domain",
    "",
    *markdown_table(
      ["data setting", *DOMAINS],
      (
        [f"{mixture}, {batch_mode}", *(f"{epochs.get(d, 0):.3f}" for d in DOMAINS)]
        for (mixture, batch_mode), epochs in data_settings(results).items()
      ),
    ),
  ]
  lines += [
    "",
    "![cosine through training](cosine_through_training.png)",
    "![held-out against pretraining loss](same_loss.png)",
    "![paired differences](paired_differences.png)",
    "",
  ]
  text = "\n".join(lines)
  (out / "results.md").write_text(text)
  return text


def plots(results: dict, out: pathlib.Path) -> None:
  # matplotlib (the bench extra) loads only where a study draws.
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  main = [
    a
    for a in ("adamw", "control", "nexus-0.01", "nexus-large", "k1", "momentum", "dot")
    if a in results
  ]
  figure, axis = plt.subplots(figsize=(6, 4))
  for arm in main:
    runs = list(results[arm].values())
    steps = [p["step"] for p in runs[0]["points"]]
    values = np.array([[p["cosine"] for p in r["points"]] for r in runs])
    axis.errorbar(steps, values.mean(0), yerr=values.std(0), label=arm, capsize=3)
  axis.set(
    xlabel="outer step",
    ylabel="mean cross-domain gradient cosine",
    title="Gradient agreement through training",
  )
  axis.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(out / "cosine_through_training.png", dpi=120)

  figure, axis = plt.subplots(figsize=(6, 4))
  slope, intercept, low, high = heldout_line(results["adamw"].values())
  axis.plot(
    [low, high],
    [slope * low + intercept, slope * high + intercept],
    color="grey",
    lw=1,
    label="AdamW line (fit)",
  )
  for arm in main:
    points = [p for r in results[arm].values() for p in r["points"]]
    axis.scatter(
      [p["pretrain_loss"] for p in points], [p["heldout_mean"] for p in points], label=arm, s=14
    )
  axis.set(
    xlabel="pretraining (validation) loss",
    ylabel="mean held-out loss",
    title="Held-out against pretraining loss (every eval point, every seed)",
  )
  axis.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(out / "same_loss.png", dpi=120)

  contrasts = [(a, b) for a, b in CONTRASTS if paired(results, a, b, "heldout_mean")]
  figure, axes = plt.subplots(1, 2, figsize=(10, 0.35 * len(contrasts) + 1.5), sharey=True)
  for axis, metric in zip(axes, ("pretrain_loss", "heldout_mean")):
    stats = [paired(results, a, b, metric) for a, b in contrasts]
    axis.errorbar(
      [s["mean"] for s in stats],
      range(len(stats)),
      xerr=[s["sd"] / math.sqrt(s["n"]) if s["n"] > 1 else 0 for s in stats],
      fmt="o",
      capsize=3,
    )
    axis.axvline(0, color="grey", lw=0.8)
    axis.set(xlabel=f"paired difference in {metric} (± s.e.)")
  axes[0].set_yticks(range(len(contrasts)), [f"{a} - {b}" for a, b in contrasts], fontsize=7)
  axes[0].invert_yaxis()
  figure.tight_layout()
  figure.savefig(out / "paired_differences.png", dpi=120)
  plt.close("all")


# ---------------------------------------------------------------------------- the study


def provenance() -> dict:
  """When and with what this process trains: today's date, the jax version, the devices."""
  return {
    "date": datetime.date.today().isoformat(),
    "jax": jax.__version__,
    "devices": jax.device_count(),
    "platform": jax.devices()[0].platform,
  }


def write_provenance(out: pathlib.Path, record: dict) -> None:
  (out / "provenance.json").write_text(json.dumps(record, indent=1) + "\n")


def read_provenance(out: pathlib.Path) -> dict:
  """The provenance a training invocation wrote to ``out``, else this process's: a
  report regenerated from finished runs keeps the date and versions they were made with."""
  path = out / "provenance.json"
  return json.loads(path.read_text()) if path.exists() else provenance()


def large_gamma_of(results: dict, size: StudySize) -> float:
  """:func:`choose_large_gamma` over the sweep's and the control's seed-0 runs."""
  missing = [f"sweep-{g:g}" for g in size.sweep_gammas if 0 not in results.get(f"sweep-{g:g}", {})]
  missing += [] if 0 in results.get("control", {}) else ["control"]
  if missing:
    raise SystemExit(
      f"error: no finished seed-0 run of {', '.join(missing)}; run the study (without "
      "--report-only) first."
    )
  sweep = {gamma: results[f"sweep-{gamma:g}"][0] for gamma in size.sweep_gammas}
  return choose_large_gamma(sweep, results["control"][0])


def read_results(out: pathlib.Path, size: StudySize) -> tuple[dict, float]:
  """Every finished run under ``out/runs`` in the order the study trains them, and the
  large gamma its sweep chose."""
  results: dict[str, dict[int, dict]] = {}

  def read(arms):
    for arm in arms:
      for seed in seeds_for(arm, size):
        path = out / "runs" / f"{arm.name}-seed{seed}.json"
        if path.exists():
          results.setdefault(arm.name, {})[seed] = json.loads(path.read_text())

  read(main_arms() + sweep_arms(size))
  large_gamma = large_gamma_of(results, size)
  read(ablation_arms(large_gamma))
  return results, large_gamma
