"""The confirmatory study's statistics against hand-computed values, its plan against the
pre-registered design, and a --quick run of its command end to end."""

import json
import math
import os
import subprocess
import sys

import pytest

from benchmarks.confirm import (
  ARMS,
  EXPLORATORY,
  FULL,
  PRIMARY,
  SECONDARY,
  SEEDS,
  analyse,
  chinchilla_size,
  holm,
  paired_test,
  run_order,
)


def student_t3_two_sided_p(t: float) -> float:
  """The two-sided p of Student's t with 3 degrees of freedom, in closed form:
  F(t) = 1/2 + (u / (1 + u^2) + atan(u)) / pi with u = t / sqrt(3)."""
  u = abs(t) / math.sqrt(3)
  return 2 * (0.5 - (u / (1 + u * u) + math.atan(u)) / math.pi)


def test_paired_test_by_hand():
  treatment, baseline = [1.0, 2.0, 3.0, 4.0], [0.5, 1.0, 2.0, 2.5]  # differences .5 1 1 1.5
  row = paired_test(treatment, baseline)
  sd = math.sqrt((0.25 + 0 + 0 + 0.25) / 3)
  t = 1.0 / (sd / 2)
  assert row["n"] == 4 and row["df"] == 3
  assert math.isclose(row["mean"], 1.0) and math.isclose(row["sd"], sd)
  assert math.isclose(row["t"], t, rel_tol=1e-12)
  assert math.isclose(row["p"], student_t3_two_sided_p(t), rel_tol=1e-9)
  t_975_3 = 3.182446305284263  # the 97.5 % quantile of t with 3 df, from tables
  assert math.isclose(row["ci_low"], 1.0 - t_975_3 * sd / 2, rel_tol=1e-9)
  assert math.isclose(row["ci_high"], 1.0 + t_975_3 * sd / 2, rel_tol=1e-9)
  assert math.isnan(paired_test([1.0], [0.0])["p"])


def test_holm_by_hand():
  # sorted: .005 x4 = .02, .01 x3 = .03, .03 x2 = .06, .04 x1 = .04 -> .06 (monotone)
  assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
  assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
  adjusted = holm([0.02, math.nan, 0.01])  # a missing test is not counted in the family
  assert adjusted[0] == pytest.approx(0.02) and adjusted[2] == pytest.approx(0.02)
  assert math.isnan(adjusted[1])


def synthetic_results() -> dict:
  """AdamW's held-out mean is 2 x pretraining loss + 1 at every point (a line through 4
  points, 2 seeds); the other arms sit at known offsets from it."""

  def run(offset: float, cosine: float, losses=(3.0, 2.5, 2.0, 1.5)) -> dict:
    points = [
      {
        "step": 10 * (i + 1),
        "pretrain_loss": x,
        "heldout_mean": 2 * x + 1 + offset,
        "cosine": cosine + 0.1 * i,
        **{f"heldout/{s}": 2 * x + 1 + offset for s in ("milton", "humaneval")},
        **{f"heldout/{s}": 2 * x + 1 for s in ("math_extrapolate", "champ")},
      }
      for i, x in enumerate(losses)
    ]
    return {"points": points, "final": dict(points[-1])}

  return {
    "adamw": {1000: run(0.0, 0.1), 1001: run(0.0, 0.2)},
    "control": {1000: run(0.01, 0.1), 1001: run(0.03, 0.2)},
    "nexus-0.3": {1000: run(-0.01, 0.4), 1001: run(0.0, 0.3), 1002: run(-1.0, 0.0)},
    "nexus-0.01": {1000: run(0.0, 0.1, losses=(3.0, 2.5, 2.0, 1.0))},
  }


def test_endpoints_pair_seeds_and_match_on_adamws_line():
  analysis = analyse(synthetic_results(), steps=40)
  primary = analysis["primary"]
  # nexus-0.3 - control on the shared seeds 1000, 1001 (seed 1002 has no control)
  assert primary["endpoint"] == PRIMARY and primary["seeds"] == [1000, 1001]
  assert primary["mean"] == pytest.approx(((-0.01 - 0.01) + (0.0 - 0.03)) / 2)
  assert primary["sd"] == pytest.approx(math.sqrt(2) * 0.005)
  rows = {row["endpoint"].label: row for row in analysis["secondary"] + analysis["exploratory"]}
  # The cosine endpoint averages the cosine over the eval points: + (0 + .1 + .2 + .3) / 4.
  cosine = rows["cosine_mean: nexus-0.3 - control"]
  assert cosine["mean"] == pytest.approx(((0.4 - 0.1) + (0.3 - 0.2)) / 2)
  # Its last point (pretraining loss 1.0) lies outside AdamW's range, the rest on the line.
  assert rows["heldout_matched: nexus-0.01 - adamw"]["n"] == 1
  assert rows["heldout_matched/milton: nexus-0.3 - control"]["mean"] == pytest.approx(-0.025)
  assert rows["heldout_matched/champ: nexus-0.3 - control"]["mean"] == pytest.approx(0.0, abs=1e-9)
  # A quadratic fit of a line is the line; the late fit uses steps >= 20 only.
  quadratic = rows["heldout_matched_quadratic: nexus-0.3 - control"]
  assert quadratic["mean"] == pytest.approx(primary["mean"])
  assert rows["heldout_matched_late: nexus-0.3 - control"]["mean"] == pytest.approx(primary["mean"])
  holm_p = [row["p_holm"] for row in analysis["secondary"]]
  raw_p = [row.get("p", math.nan) for row in analysis["secondary"]]
  assert all(math.isnan(h) or h >= p for h, p in zip(holm_p, raw_p))


def test_the_plan_is_the_preregistered_design():
  assert [a.name for a in ARMS] == ["adamw", "control", "nexus-0.3", "nexus-0.01"]
  assert SEEDS == tuple(range(1000, 1008))
  assert {a.microbatches for a in ARMS} == {4} and {a.batch_mode for a in ARMS} == {"mixed"}
  order = [(arm.name, seed) for arm, seed in run_order(SEEDS)]
  assert order[:6] == [
    ("adamw", 1000),
    ("control", 1000),
    ("nexus-0.3", 1000),
    ("adamw", 1001),
    ("control", 1001),
    ("nexus-0.3", 1001),
  ]
  assert {name for name, _ in order[24:]} == {"nexus-0.01"} and len(order) == 32
  assert len(SECONDARY) == 11 and len(EXPLORATORY) == 4
  # mini: untied 384-token embeddings and head, 3 layers of attention (4 x 96^2), a gated
  # MLP (3 x 96 x 288) and two norms, and the final norm.
  parameters = 2 * 384 * 96 + 3 * (4 * 96 * 96 + 3 * 96 * 288 + 2 * 96) + 96
  size, counted = chinchilla_size(FULL)
  assert counted == parameters == 433_824
  assert size.steps == math.ceil(20 * parameters / (32 * 128)) == 2119
  assert size.evals >= 6


def test_quick_study_runs_end_to_end(tmp_path):
  """The study's command on the tiny preset: every arm, both seeds, side by side on two
  workers where the machine allows it, then the report and its plots."""
  out = tmp_path / "confirm"
  run = subprocess.run(
    [sys.executable, "-m", "benchmarks.confirm", "--quick", "--out", str(out)],
    capture_output=True,
    text=True,
    timeout=600,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    check=False,
  )
  assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
  runs = sorted(p.name for p in (out / "runs").glob("*.json"))
  assert runs == sorted(f"{a.name}-seed{s}.json" for a in ARMS for s in (1000, 1001))
  record = json.loads((out / "runs" / "nexus-0.3-seed1001.json").read_text())
  assert record["arm"]["name"] == "nexus-0.3" and record["seed"] == 1001
  assert record["config"]["inner_lr"] == 0.3 and record["config"]["seed"] == 1001
  point = record["points"][-1]
  for key in ("tokens", "validation/prose", "heldout/milton", "cosine"):
    assert math.isfinite(point[key])
  assert set(record["final"]["split_half"]) == {"prose", "code", "math"}
  assert len(record["points"]) == 6
  text = (out / "results.md").read_text()
  assert "heldout_matched: nexus-0.3 - control | 2 |" in text
  for plot in ("same_loss.png", "paired_differences.png", "cosine_through_training.png"):
    assert (out / plot).stat().st_size > 10_000
  # A second invocation trains nothing: it reads the finished runs.
  again = subprocess.run(
    [sys.executable, "-m", "benchmarks.confirm", "--quick", "--out", str(out), "--jobs", "1"],
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert again.returncode == 0 and "heldout_matched: nexus-0.3 - control" in again.stdout
