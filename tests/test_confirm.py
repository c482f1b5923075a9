"""The confirmatory study's statistics against hand-computed values, its plan against the
pre-registered design, and a --quick run of its command end to end."""

import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from studies.confirm import cli
from studies.confirm.study import (
  ARMS,
  EXPLORATORY,
  FULL,
  MIXTURES,
  PRIMARY,
  SECONDARY,
  SEEDS,
  Endpoint,
  analyse,
  chinchilla_size,
  holm,
  paired_test,
  remove_stale_locks,
  run_order,
  verdict,
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
  # A test that could not run still counts in the family of 3: .01 x3, .02 x2.
  adjusted = holm([0.02, math.nan, 0.01])
  assert adjusted[0] == pytest.approx(0.04) and adjusted[2] == pytest.approx(0.03)
  assert math.isnan(adjusted[1])


def test_no_spread_is_not_a_test():
  row = paired_test([1.0, 2.0, 3.0], [0.5, 1.5, 2.5])  # every difference 0.5
  assert row["mean"] == pytest.approx(0.5) and math.isnan(row["p"]) and "ci_low" not in row


def curved(x: float) -> float:
  """AdamW's held-out mean in the synthetic study: a parabola in pretraining loss."""
  return x * x - x + 1


def synthetic_results() -> dict:
  """AdamW's held-out losses lie on ``curved`` at 4 eval points (2 seeds); the other arms
  sit at known offsets from it. Cosines ramp differently per arm."""

  def run(offset: float, cosine, losses=(3.0, 2.5, 2.0, 1.5)) -> dict:
    points = [
      {
        "step": 10 * (i + 1),
        "pretrain_loss": x,
        "heldout_mean": curved(x) + offset,
        "cosine": cosine(i),
        **{f"heldout/{s}": curved(x) + offset for s in ("milton", "humaneval")},
        **{f"heldout/{s}": curved(x) for s in ("math_extrapolate", "champ")},
      }
      for i, x in enumerate(losses)
    ]
    return {"points": points, "final": dict(points[-1])}

  flat = lambda value: lambda i: value
  return {
    "adamw": {1000: run(0.0, flat(0.1)), 1001: run(0.0, flat(0.2))},
    "control": {1000: run(0.01, flat(0.1)), 1001: run(0.03, flat(0.2))},
    "nexus-0.3": {
      1000: run(-0.01, lambda i: 0.1 * i),  # mean 0.15, last 0.3, first 0
      1001: run(0.0, lambda i: 0.2 + 0.2 * i),  # mean 0.5
      1002: run(-1.0, flat(0.0)),
    },
    "nexus-0.01": {1000: run(0.0, flat(0.1), losses=(3.0, 2.5, 2.0, 1.0))},
  }


def line_gap(adamw_points, run_points, degree: int) -> float:
  """The matched gap by hand: numpy's least-squares fit to AdamW's points, the run's
  points inside AdamW's range."""
  x, y = np.array(adamw_points).T
  fit = np.polyfit(x, y, degree)
  inside = [(a, b) for a, b in run_points if x.min() <= a <= x.max()]
  return float(np.mean([b - np.polyval(fit, a) for a, b in inside]))


def test_endpoints_pair_seeds_and_match_on_adamws_curve():
  results = synthetic_results()
  losses = (3.0, 2.5, 2.0, 1.5)
  adamw = [(x, curved(x)) for x in losses] * 2
  analysis = analyse(results, steps=40)
  primary = analysis["primary"]
  # nexus-0.3 - control on the shared seeds 1000, 1001 (seed 1002 has no control);
  # a straight line misfits the parabola, but by the same amount for both arms.
  assert primary["endpoint"] == PRIMARY and primary["seeds"] == [1000, 1001]
  nexus = [line_gap(adamw, [(x, curved(x) + o) for x in losses], 1) for o in (-0.01, 0.0)]
  control = [line_gap(adamw, [(x, curved(x) + o) for x in losses], 1) for o in (0.01, 0.03)]
  assert nexus[0] == pytest.approx(-0.01 + line_gap(adamw, adamw[:4], 1))
  assert primary["mean"] == pytest.approx(np.mean(np.subtract(nexus, control)))
  assert primary["mean"] == pytest.approx(-0.025)
  assert primary["sd"] == pytest.approx(math.sqrt(2) * 0.005)
  rows = {row["endpoint"].label: row for row in analysis["secondary"] + analysis["exploratory"]}
  # The cosine endpoint averages over eval points: (0.15 - 0.1 + 0.5 - 0.2) / 2.
  cosine = rows["cosine_mean: nexus-0.3 - control"]
  assert cosine["mean"] == pytest.approx(0.175)
  # nexus-0.01's last point (pretraining loss 1.0) lies outside AdamW's range.
  assert results["nexus-0.01"][1000]["matched_points"] == 3
  assert results["nexus-0.3"][1000]["matched_points"] == 4
  assert rows["heldout_matched/milton: nexus-0.3 - control"]["mean"] == pytest.approx(-0.025)
  assert rows["heldout_matched/champ: nexus-0.3 - control"]["mean"] == pytest.approx(0.0, abs=1e-9)
  # Quadratic: the parabola is fitted exactly, so each gap is the offset itself. The line
  # misfits it, which shows at nexus-0.01's points (AdamW's minus the point at 1.5).
  assert results["control"][1001]["final"]["heldout_matched_quadratic"] == pytest.approx(0.03)
  final = results["nexus-0.01"][1000]["final"]
  assert final["heldout_matched_quadratic"] == pytest.approx(0.0, abs=1e-9)
  want = line_gap(adamw, [(x, curved(x)) for x in (3.0, 2.5, 2.0)], 1)
  assert final["heldout_matched"] == pytest.approx(want) and abs(want) > 1e-3
  # Late: a line through AdamW's steps 20-40 only, gaps at the run's steps 20-40.
  late_fit = [(x, curved(x)) for x in losses[1:]] * 2
  want = line_gap(late_fit, [(x, curved(x) + 0.03) for x in losses[1:]], 1)
  assert results["control"][1001]["final"]["heldout_matched_late"] == pytest.approx(want)
  raw = [row.get("p", math.nan) for row in analysis["secondary"]]
  want_holm = holm(raw)
  assert [row["p_holm"] for row in analysis["secondary"]] == pytest.approx(want_holm, nan_ok=True)
  finite = sorted(p for p in raw if not math.isnan(p))
  smallest = min(row["p_holm"] for row in analysis["secondary"] if not math.isnan(row["p_holm"]))
  assert smallest == pytest.approx(min(1.0, len(SECONDARY) * finite[0]))


def test_verdicts():
  row = lambda mean, p, finished=8: {"mean": mean, "p": p, "finished": finished}
  assert verdict(row(-0.01, 0.01), 8).startswith("confirmed")
  assert verdict(row(+0.01, 0.01), 8).startswith("refuted")
  assert verdict(row(-0.01, 0.2), 8).startswith("inconclusive")
  assert verdict(row(-0.01, 0.01, finished=5), 8).startswith("incomplete (5 of 8")


def test_the_plan_is_the_preregistered_design():
  arms = {a.name: a for a in ARMS}
  assert list(arms) == ["adamw", "control", "nexus-0.3", "nexus-0.01"]
  assert arms["adamw"].kind == "adamw"
  assert [arms[n].gamma for n in ("control", "nexus-0.3", "nexus-0.01")] == [1e-4, 0.3, 0.01]
  assert {a.microbatches for a in ARMS} == {4} and {a.batch_mode for a in ARMS} == {"mixed"}
  assert {MIXTURES[a.mixture] for a in ARMS} == {"prose=1,code=1,math=1"}
  assert PRIMARY == Endpoint("heldout_matched", "nexus-0.3", "control")
  assert SEEDS == tuple(range(1000, 1008))
  order = [(arm.name, seed) for arm, seed in run_order(SEEDS)]
  assert order[:6] == [
    ("adamw", 1000),
    ("control", 1000),
    ("nexus-0.3", 1000),
    ("adamw", 1001),
    ("control", 1001),
    ("nexus-0.3", 1001),
  ]
  assert order[:24] == [(a, s) for s in SEEDS for a in ("adamw", "control", "nexus-0.3")]
  assert order[24:] == [("nexus-0.01", s) for s in SEEDS]
  assert len(SECONDARY) == 11 and len(EXPLORATORY) == 4
  # mini: untied 384-token embeddings and head, 3 layers of attention (4 x 96^2), a gated
  # MLP (3 x 96 x 288) and two norms, and the final norm.
  parameters = 2 * 384 * 96 + 3 * (4 * 96 * 96 + 3 * 96 * 288 + 2 * 96) + 96
  size, counted = chinchilla_size(FULL)
  assert counted == parameters == 433_824
  assert size.steps == math.ceil(20 * parameters / (32 * 128)) == 2119
  assert size.evals == 8


def test_stale_locks_are_removed_and_live_ones_refused(tmp_path):
  runs = tmp_path / "runs"
  runs.mkdir()
  dead = subprocess.run(
    [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
  )
  (runs / "adamw-seed1000.lock").write_text(dead.stdout.decode().strip())
  (runs / "control-seed1000.lock").write_text("")  # a worker killed before writing its id
  remove_stale_locks(tmp_path)
  assert not list(runs.glob("*.lock"))
  (runs / "nexus-0.3-seed1000.lock").write_text(str(os.getpid()))
  with pytest.raises(SystemExit, match="nexus-0.3-seed1000 is being trained by process"):
    remove_stale_locks(tmp_path)


# Opt-in: a finished study's 8 training runs take 80 s of the default suite's 8 minutes;
# its report and plots are checked byte for byte from the committed runs by default.
@pytest.mark.slow
@pytest.mark.serial  # its workers train side by side, one per core
def test_quick_study_runs_end_to_end(small_cache, tmp_path):
  """The study's command on the tiny preset: every arm, both seeds, side by side on two
  workers where the machine allows it, then the report and its plots."""
  out = tmp_path / "confirm"
  study = [sys.executable, "-m", "studies.confirm", "--quick", "--data", str(small_cache.root)]
  run = subprocess.run(
    [*study, "--out", str(out)],
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
    [*study, "--out", str(out), "--jobs", "1"],
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert again.returncode == 0 and "heldout_matched: nexus-0.3 - control" in again.stdout
  assert "INCOMPLETE" not in again.stdout
  verdicts = ("confirmed", "refuted", "inconclusive", "no test possible")
  assert any(word in again.stdout for word in verdicts)
  # A partial study still reports, and says so.
  for seed in (1000, 1001):
    (out / "runs" / f"nexus-0.01-seed{seed}.json").unlink()
  (out / "runs" / "control-seed1001.json").unlink()
  partial = subprocess.run(
    [*study, "--out", str(out), "--report-only"],
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert partial.returncode == 0, partial.stderr[-3000:]
  assert "INCOMPLETE: 5 of 8 runs" in partial.stdout
  assert "incomplete (1 of 2 seeds)" in partial.stdout


RESULTS = pathlib.Path(__file__).resolve().parents[1] / "studies" / "confirm" / "results"


def test_report_only_regenerates_the_committed_report_byte_for_byte(tmp_path):
  out = tmp_path / "confirm"
  shutil.copytree(RESULTS, out)
  for generated in ("results.md", "same_loss.png", "paired_differences.png"):
    (out / generated).unlink()
  assert cli.main(["--report-only", "--out", str(out)]) == 0
  assert (out / "results.md").read_bytes() == (RESULTS / "results.md").read_bytes()
  assert (out / "paired_differences.png").stat().st_size > 10_000
