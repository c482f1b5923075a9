"""The replication study's pieces against independent math: the Sec. 5 inner-step
ablations against NumPy loops, the cosine statistics against explicit gradients, and the
paired statistics against hand-computed values and NumPy, and the report regenerated
from the committed runs."""

import math
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from studies.replication import cli, study
from studies.replication.ablations import nexus_ablation
from studies.replication.study import (
  CONTRASTS,
  CONTROL_GAMMA,
  FULL,
  PAIRED_METRICS,
  ablation_arms,
  add_matched_heldout,
  choose_large_gamma,
  cosine_statistics,
  data_settings,
  markdown_table,
  paired,
  read_results,
)
from tests.conftest import SoftmaxRegression, numpy_global_norm


def stacked(problem):
  return {"x": jnp.asarray(np.stack(problem.xs)), "y": jnp.asarray(np.stack(problem.ys))}


@pytest.mark.parametrize("inner_step", ["dot", "momentum"])
def test_ablated_inner_steps_match_numpy_over_two_outer_steps(x64, inner_step):
  problem = SoftmaxRegression(num_sources=3)
  gamma, beta = 0.3, 0.9
  tx = nexus_ablation(gamma, inner_step, momentum=beta)
  params = {k: jnp.asarray(v) for k, v in problem.params.items()}
  state = tx.init(params)
  reference = {k: v.copy() for k, v in problem.params.items()}
  velocity = {k: np.zeros_like(v) for k, v in reference.items()}
  for _ in range(2):  # the momentum buffer must carry over into the second outer step
    inner = {k: v.copy() for k, v in reference.items()}
    for source in range(3):
      grad = problem.numpy_grad(inner, source)
      if inner_step == "dot":
        direction = grad
      else:
        norm = numpy_global_norm(grad)
        velocity = {k: beta * velocity[k] + grad[k] / norm for k in grad}
        direction = velocity
      inner = {k: inner[k] - gamma * direction[k] for k in inner}
    want = {k: reference[k] - inner[k] for k in inner}
    pseudo_grad, state = tx.update(
      None, state, params, loss_fn=problem.loss, microbatches=stacked(problem)
    )
    for key in want:
      np.testing.assert_allclose(pseudo_grad[key], want[key], rtol=1e-10, atol=1e-12)
    params = optax.apply_updates(params, jax.tree.map(lambda g: -0.5 * g, pseudo_grad))
    reference = {k: reference[k] - 0.5 * want[k] for k in want}


def test_ablation_rejects_unknown_inner_step_and_bad_gamma():
  with pytest.raises(ValueError, match="choose one of dot, momentum"):
    nexus_ablation(0.1, "adam")
  with pytest.raises(ValueError, match="inner_lr must be > 0"):
    nexus_ablation(0.0, "dot")


def test_cosine_statistics_match_explicit_full_gradients():
  rng = np.random.default_rng(0)
  domains, dim = 4, 50
  shared = rng.normal(size=dim)
  halves = np.stack(
    [shared * (d + 1) + rng.normal(size=dim) for d in range(domains) for _ in range(2)]
  )  # rows A_1, B_1, A_2, B_2, ...
  stats = cosine_statistics(halves @ halves.T)
  full = np.stack([(halves[2 * d] + halves[2 * d + 1]) / 2 for d in range(domains)])
  cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)
  want = np.mean([cos(full[i], full[j]) for i in range(domains) for j in range(domains) if i != j])
  assert math.isclose(stats["cosine"], want, rel_tol=1e-12)
  want_a = np.mean(
    [cos(halves[2 * i], halves[2 * j]) for i in range(domains) for j in range(domains) if i != j]
  )
  assert math.isclose(stats["cosine_half_a"], want_a, rel_tol=1e-12)
  split = [cos(halves[2 * d], halves[2 * d + 1]) for d in range(domains)]
  assert math.isclose(stats["split_half_min"], min(split), rel_tol=1e-12)


def test_paired_difference_statistics_by_hand():
  results = {
    "a": {s: {"final": {"m": v}} for s, v in enumerate([1.0, 2.0, 4.0])},
    "b": {s: {"final": {"m": v}} for s, v in enumerate([0.5, 1.0, 2.0, 9.0])},
  }
  stats = paired(results, "a", "b", "m")  # diffs 0.5, 1.0, 2.0 on the shared seeds 0-2
  assert stats["n"] == 3
  assert math.isclose(stats["mean"], 3.5 / 3)
  sd = math.sqrt(((0.5 - 3.5 / 3) ** 2 + (1 - 3.5 / 3) ** 2 + (2 - 3.5 / 3) ** 2) / 2)
  assert math.isclose(stats["sd"], sd)
  assert math.isclose(stats["t"], (3.5 / 3) / (sd / math.sqrt(3)))
  assert paired(results, "a", "missing", "m") is None


RESULTS = pathlib.Path(__file__).resolve().parents[1] / "studies" / "replication" / "results"


def test_paired_t_on_the_committed_runs_is_the_mean_over_its_standard_error():
  results, _ = read_results(RESULTS, FULL)
  add_matched_heldout(results)
  checked = 0
  for arm, baseline in CONTRASTS:
    seeds = sorted(set(results[arm]) & set(results[baseline]))
    for metric in PAIRED_METRICS:
      final = lambda name, seed, metric=metric: results[name][seed]["final"][metric]
      d = np.array([final(arm, s) - final(baseline, s) for s in seeds], np.float64)
      d = d[~np.isnan(d)]
      row = paired(results, arm, baseline, metric)
      if len(d) == 0:
        assert row is None, (arm, baseline, metric)
        continue
      assert row["n"] == len(d)
      np.testing.assert_allclose(row["t"], d.mean() / (d.std(ddof=1) / np.sqrt(len(d))), 1e-10)
      checked += 1
  assert checked >= len(CONTRASTS) * len(PAIRED_METRICS) - 5


def test_report_only_regenerates_the_committed_report_byte_for_byte(tmp_path):
  out = tmp_path / "replication"
  shutil.copytree(RESULTS, out)
  for generated in ("results.md", "same_loss.png", "paired_differences.png"):
    (out / generated).unlink()
  assert cli.main(["--report-only", "--out", str(out)]) == 0
  assert (out / "results.md").read_bytes() == (RESULTS / "results.md").read_bytes()
  assert (out / "same_loss.png").stat().st_size > 10_000


def test_large_gamma_is_the_largest_within_tolerance_of_the_control():
  run = lambda loss: {"final": {"pretrain_loss": loss}}
  control = run(2.00)
  assert choose_large_gamma({0.03: run(2.00), 0.1: run(2.015), 0.3: run(2.05)}, control) == 0.1
  assert choose_large_gamma({0.03: run(2.10), 0.1: run(2.2)}, control) == 0.03
  arms = {arm.name: arm for arm in ablation_arms(0.1)}
  assert arms["control-k8"].gamma == CONTROL_GAMMA and arms["nexus-large-k8"].microbatches == 8
  assert arms["k1"].microbatches == 1 and arms["dot"].kind == "dot"


def test_matched_heldout_is_the_gap_to_adamws_line_inside_its_range():
  point = lambda x, y: {"pretrain_loss": x, "heldout_mean": y}
  run = lambda *points: {"points": list(points), "final": {}}
  results = {
    "adamw": {0: run(point(3.0, 7.0), point(2.0, 5.0)), 1: run(point(2.5, 6.0))},  # y = 2x + 1
    "nexus": {0: run(point(2.5, 5.9), point(2.2, 5.5), point(1.5, 0.0))},  # last is outside
    "control": {0: run(point(1.0, 3.0))},
  }
  add_matched_heldout(results)
  nexus = results["nexus"][0]
  assert nexus["matched_points"] == 2
  assert math.isclose(
    nexus["final"]["heldout_matched"], ((5.9 - 6.0) + (5.5 - 5.4)) / 2, abs_tol=1e-9
  )
  assert math.isnan(results["control"][0]["final"]["heldout_matched"])
  assert math.isclose(results["adamw"][1]["final"]["heldout_matched"], 0.0, abs_tol=1e-9)


def test_markdown_table_and_data_settings():
  assert markdown_table(["arm", "n"], [["adamw", "8"], ["control", "7"]]) == [
    "| arm | n |",
    "|---|---|",
    "| adamw | 8 |",
    "| control | 7 |",
  ]

  def run(mixture, mode, epochs):
    return {0: {"arm": {"mixture": mixture, "batch_mode": mode}, "epochs": epochs}}

  results = {
    "adamw": run("equal", "mixed", {"prose": 0.5}),
    "control": run("equal", "mixed", {"prose": 0.5}),
    "adamw-math10": run("math10", "mixed", {"prose": 0.7}),
  }
  assert list(data_settings(results).items()) == [
    (("equal", "mixed"), {"prose": 0.5}),
    (("math10", "mixed"), {"prose": 0.7}),
  ]


def test_a_mean_that_rounds_to_zero_reads_the_same_on_either_side_of_it():
  assert study.mean_std([-1e-17, 1e-17 - 2e-17]) == "0.0000 ± 0.0000"
  assert study.mean_std([1e-17]) == "0.0000"
  assert study.mean_std([-0.00005001, -0.00005001]) == "-0.0001 ± 0.0000"
  assert study.mean_std([1.23456, 1.23444]) == "1.2345 ± 0.0001"
