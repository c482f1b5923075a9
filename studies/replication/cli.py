"""The replication study's command: trains every arm (resumably), then writes the report.

python -m studies.replication                  # the full study (under 80 min on 2 cores)
python -m studies.replication --quick          # every arm, smaller and fewer seeds (~5 min)
python -m studies.replication --report-only    # results.md and plots from finished runs
"""

import argparse
import dataclasses
import json
import pathlib
import time

from tqdm import tqdm

from studies.replication.study import (
  FULL,
  QUICK,
  Study,
  ablation_arms,
  choose_large_gamma,
  main_arms,
  plots,
  provenance,
  read_provenance,
  read_results,
  report,
  seeds_for,
  sweep_arms,
  write_provenance,
)

RESULTS = pathlib.Path("studies/replication/results")


def train(size, out: pathlib.Path) -> tuple[dict, float, float]:
  """Every arm and seed in the study's order (finished runs are read from disk): the
  results, the large gamma that the sweep chose, and the seconds it took after set-up."""
  study = Study(size, out)
  results: dict[str, dict[int, dict]] = {}
  started = time.perf_counter()

  def run_all(arms, progress):
    for arm in arms:
      for seed in seeds_for(arm, size):
        progress.set_postfix_str(f"{arm.name} seed {seed}")
        result = study.run(arm, seed)
        results.setdefault(arm.name, {})[seed] = result
        progress.update(1)
        final = result["final"]
        progress.write(
          f"{arm.name:<20} seed {seed}: train {final['train_loss']:.4f} "
          f"pretrain {final['pretrain_loss']:.4f} held-out "
          f"{final['heldout_mean']:.4f} cosine {final['cosine']:+.4f} "
          f"(split-half min {final['split_half_min']:.2f}) {result['seconds']}s"
        )

  first_phase = main_arms() + sweep_arms(size)
  total = sum(len(seeds_for(a, size)) for a in first_phase + ablation_arms(1.0)) - 1
  with tqdm(total=total, unit="run", dynamic_ncols=True) as progress:
    run_all(first_phase, progress)
    sweep = {gamma: results[f"sweep-{gamma:g}"][0] for gamma in size.sweep_gammas}
    large_gamma = choose_large_gamma(sweep, results["control"][0])
    progress.write(f"sweep: large gamma = {large_gamma:g}")
    # The sweep's seed-0 run at that gamma is nexus-large's seed 0.
    seed0 = out / "runs" / "nexus-large-seed0.json"
    if not seed0.exists():
      reused = dict(sweep[large_gamma], arm=dataclasses.asdict(ablation_arms(large_gamma)[0]))
      seed0.write_text(json.dumps(reused, indent=1) + "\n")
    run_all(ablation_arms(large_gamma), progress)
  return results, large_gamma, time.perf_counter() - started


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m studies.replication", description=__doc__.split("\n")[0]
  )
  parser.add_argument("--quick", action="store_true", help="every arm, smaller and fewer seeds")
  parser.add_argument(
    "--out",
    type=pathlib.Path,
    default=None,
    help=f"results directory (default {RESULTS}, with --quick {RESULTS}-quick)",
  )
  parser.add_argument(
    "--report-only",
    action="store_true",
    help="no training: results.md and the plots from the finished runs under OUT/runs",
  )
  args = parser.parse_args(argv)
  size = QUICK if args.quick else FULL
  out = args.out or pathlib.Path(f"{RESULTS}{'-quick' if args.quick else ''}")
  command = "python -m studies.replication" + (" --quick" if args.quick else "")
  if args.report_only:
    (results, large_gamma), seconds = read_results(out, size), 0.0
    record = read_provenance(out)
  else:
    results, large_gamma, seconds = train(size, out)
    record = provenance()
    write_provenance(out, record)
  print(report(results, size, large_gamma, out, command, seconds, record))
  plots(results, out)
  print(f"\nwrote {out / 'results.md'} and its plots in {seconds / 60:.1f} min")
  return 0
