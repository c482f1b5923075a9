"""The numerical check in docs/math.md, "Where the paper's Eq. 9 and Eq. 12 differ".

Float64, K = 3 sources of softmax regression (``theory.SoftmaxSources``, the problem of
tests/test_second_order.py: 24 parameters, 16 examples per source), theta its initial
parameters. All 3! = 6 orders and all 3^3 = 27 i.i.d. sequences are enumerated, so the
averages of g_hat (from ``nexus`` itself) are exact. For each gamma the residual
||c(gamma) - c*|| / ||c*||, with c(gamma) = (E[g_hat] - gamma sum_i u_i) / gamma^2,
against five predicted coefficients c*:
  - orders vs -1/2 sum_{i!=j} J_i u_j            (the expansion, distinct micro-batches);
  - i.i.d. vs -(K-1)/(2K) sum_{i,j} J_i u_j      (the expansion, i.i.d., self terms in);
  - i.i.d. vs Eq. 12 with autodiff's gradient of sum_{i!=j} CosSim;
  - i.i.d. vs Eq. 12 with Eq. 9's sum_{i!=j} (J_i u_j + J_j u_i);
  - orders vs (K-1)/(4K) x Eq. 9;
and the gap ||Eq. 9 - autodiff|| / ||autodiff||. Seed 1 gives the table; the seed sweep
gives the ranges quoted after it, every residual taken at the smallest gamma. The theory
side (u_i, J_i v by jax.jvp, the cosine sum) and the residual are ``studies.second_order.
theory``'s, which tests/test_second_order.py also uses, so the doc and the tests measure
the same thing. The command is ``python -m studies.second_order``
(``studies/second_order/cli.py``).
"""

import itertools

import jax
import jax.numpy as jnp

from studies.second_order.theory import SoftmaxSources, Theory, coefficient_errors

GAMMAS = [0.01, 0.005, 0.0025]
TABLE_SEED = 1
K = 3
COLUMNS = (
  "orders vs $-\\frac12\\sum_{i\\ne j}J_iu_j$",
  "i.i.d. vs $-\\frac{K-1}{2K}\\sum_{i,j}J_iu_j$",
  "i.i.d. vs Eq. 12, autodiff gradient",
  "i.i.d. vs Eq. 12, Eq. 9 expression",
  "orders vs $\\frac{K-1}{4K}\\times$Eq. 9",
)
KEYS = ("orders_expansion", "iid_expansion", "iid_eq12_autodiff", "iid_eq12_eq9", "orders_eq9")


def check(seed):
  """The five residual columns (one value per gamma) and the Eq. 9/autodiff gap."""
  theory = Theory(SoftmaxSources(num_sources=K, seed=seed))
  units = [theory.unit(i) for i in range(K)]
  ju = {(i, j): theory.jvp(i, units[j]) for i in range(K) for j in range(K)}
  distinct = sum(v for (i, j), v in ju.items() if i != j)
  eq9 = 2 * distinct  # sum_{i!=j} (J_i u_j + J_j u_i)
  autodiff = jax.grad(theory.cosine_sum)(theory.theta)
  orders = list(itertools.permutations(range(K)))
  iid = list(itertools.product(range(K), repeat=K))
  eq12 = (K - 1) / (4 * K)
  errors = lambda sequences, target: coefficient_errors(theory, sequences, target, GAMMAS)
  columns = [
    errors(orders, -0.5 * distinct),
    errors(iid, -(K - 1) / (2 * K) * sum(ju.values())),
    errors(iid, -eq12 * autodiff),
    errors(iid, -eq12 * eq9),
    errors(orders, -eq12 * eq9),
  ]
  gap = float(jnp.linalg.norm(eq9 - autodiff) / jnp.linalg.norm(autodiff))
  return dict(zip(KEYS, columns)), gap


def fmt(x):
  """Two significant digits, as docs/math.md writes them: 1.2e-2 below 0.1, else 0.63."""
  if x < 0.1:
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"
  return f"{x:#.2g}".rstrip(".")


def percent(x):
  return f"{100 * x:.0f} %"


def report_text(result: dict) -> str:
  """The table of seed 1, the Eq. 9/autodiff gap, and the sweep's ranges when ``result``
  (the JSON that the command prints last) has a sweep."""
  table, gap = result["table"], result["eq9_gap"]
  lines = [
    f"Seed {TABLE_SEED}, K = {K}, residual ||c(gamma) - c*|| / ||c*||:\n",
    "| $\\gamma$ | " + " | ".join(COLUMNS) + " |",
    "|---" * (len(COLUMNS) + 1) + "|",
  ]
  for n, gamma in enumerate(result["gammas"]):
    cells = [fmt(table[key][n]) for key in KEYS]
    lines.append(f"| {gamma:<6} | " + " | ".join(cells) + " |")
  lines.append(f"\nEq. 9 vs autodiff gradient of sum CosSim (seed {TABLE_SEED}): {percent(gap)}")
  sweep = result.get("sweep")
  if sweep:
    last = lambda key: [row["residuals"][key][-1] for row in sweep.values()]
    gaps = [row["eq9_gap"] for row in sweep.values()]
    expansion = last("orders_expansion") + last("iid_expansion")
    lines.append(f"\nOver seeds 0-{len(sweep) - 1} (residuals at gamma = {result['gammas'][-1]}):")
    lines.append(f"  Eq. 9/autodiff gap:             {percent(min(gaps))} to {percent(max(gaps))}")
    for key, name in (
      ("iid_eq12_autodiff", "i.i.d. vs Eq. 12, autodiff:"),
      ("iid_eq12_eq9", "i.i.d. vs Eq. 12, Eq. 9:"),
    ):
      lines.append(f"  {name:<32}{fmt(min(last(key)))} to {fmt(max(last(key)))}")
    lines.append(f"  vs the expansion (both), max:   {fmt(max(expansion))}")
  return "\n".join(lines)


def run(seeds: int) -> dict:
  """The check at seed 1 and over seeds 0..seeds-1, as the JSON the command prints."""
  with jax.enable_x64(True):
    table, gap = check(TABLE_SEED)
    sweep = {seed: check(seed) for seed in range(seeds)}
  result = {"gammas": GAMMAS, "table_seed": TABLE_SEED, "table": table, "eq9_gap": gap}
  if sweep:
    result["sweep"] = {
      str(seed): {"residuals": columns, "eq9_gap": g} for seed, (columns, g) in sweep.items()
    }
  return result
