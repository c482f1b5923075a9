"""What the maintained benchmarks share: where raw output goes, the timing loop, the
batch-size flags and the JSON result line.

Raw output goes to ``benchmarks/out/<name>/`` (gitignored) unless ``--out`` names another
folder; figures worth keeping are copied into ``benchmarks/RESULTS.md`` with their command
and date, and a benchmark whose tables are committed whole writes them with
``--out benchmarks/<name>``.

Timing interleaves the measured functions round by round, so that machine noise hits all
of them alike: with rounds ``r = 1..R`` after ``W`` warm-up rounds (compiles, caches),
``t[name][r]`` is the wall time of one call of ``name`` in round ``r``, summarized by its
median and minimum over ``r``, and two functions compare by the median of their per-round
ratios ``median_r(t[a][r] / t[b][r])``, which pairs each call with its neighbour in time.
"""

import argparse
import json
import pathlib
import statistics
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

OUT = pathlib.Path(__file__).resolve().parent / "out"


def out_dir(name: str) -> pathlib.Path:
  """``benchmarks/out/<name>/``, the default folder of benchmark ``name``'s raw output."""
  return OUT / name


def add_out_flag(parser: argparse.ArgumentParser, name: str) -> None:
  """``--out``, the folder that benchmark ``name`` writes to (default :func:`out_dir`)."""
  parser.add_argument(
    "--out",
    type=pathlib.Path,
    default=out_dir(name),
    help=f"folder for the report (default: benchmarks/out/{name})",
  )


def add_batch_flags(parser: argparse.ArgumentParser) -> None:
  """``--micro-batch-size``, ``--seq-len`` and ``--microbatches``, read by
  :func:`batch_overrides`."""
  parser.add_argument(
    "--micro-batch-size",
    type=int,
    default=None,
    help="global sequences per micro-batch (default: the run preset's; 64 at the paper's sizes)",
  )
  parser.add_argument("--seq-len", type=int, default=None)
  parser.add_argument("--microbatches", type=int, default=None)


def batch_overrides(args: argparse.Namespace) -> dict:
  """The run-preset fields that ``--micro-batch-size``, ``--seq-len`` and ``--microbatches``
  replace; flags left unset keep the preset's values."""
  return {
    k: v
    for k, v in (
      ("micro_batch_size", args.micro_batch_size),
      ("seq_len", args.seq_len),
      ("microbatches", args.microbatches),
    )
    if v is not None
  }


class Summary(NamedTuple):
  """The median and the minimum of one function's timed rounds, in seconds."""

  median: float
  min: float


def time_rounds(
  run: Callable[[str], object],
  names: Sequence[str],
  repeats: int,
  *,
  warmup: int = 2,
  log: Callable[[int, dict[str, float]], None] | None = None,
  clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
  """Wall time of ``run(name)`` for each name, interleaved, ``warmup + repeats`` rounds.

  Args:
    run: does one measured call of ``name`` and returns once its work is done (for JAX,
      after ``jax.block_until_ready``).
    names: the functions, called in this order in every round.
    repeats: timed rounds, after ``warmup`` rounds that are not kept.
    log: called after every round as ``log(round_number, seconds_by_name)``; timed rounds
      are numbered ``1..repeats``, warm-up rounds ``1 - warmup..0``.
    clock: seconds, monotonic.

  Returns:
    ``{name: [seconds of each timed round]}``.
  """
  times = {name: [] for name in names}
  for number in range(1 - warmup, repeats + 1):
    elapsed = {}
    for name in names:
      start = clock()
      run(name)
      elapsed[name] = clock() - start
    if number >= 1:
      for name, seconds in elapsed.items():
        times[name].append(seconds)
    if log is not None:
      log(number, elapsed)
  return times


def time_calls(
  fn: Callable[[], object],
  repeats: int,
  *,
  warmup: int = 1,
  clock: Callable[[], float] = time.perf_counter,
) -> Summary:
  """:class:`Summary` of ``repeats`` timed calls of ``fn()`` after ``warmup`` untimed ones."""
  return summarize(time_rounds(lambda _: fn(), ("fn",), repeats, warmup=warmup, clock=clock)["fn"])


def summarize(seconds: Sequence[float]) -> Summary:
  """Median and minimum of timed rounds."""
  return Summary(statistics.median(seconds), min(seconds))


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
  """``median_r(numerator[r] / denominator[r])``: two functions timed in the same rounds."""
  return statistics.median([n / d for n, d in zip(numerator, denominator)])


def print_rounds(repeats: int, digits: int = 1) -> Callable[[int, dict[str, float]], None]:
  """A ``log`` for :func:`time_rounds` that prints each timed round's milliseconds."""

  def log(number: int, elapsed: dict[str, float]) -> None:
    if number >= 1:
      print(
        f"round {number}/{repeats}: "
        + ", ".join(f"{name} {seconds * 1e3:.{digits}f} ms" for name, seconds in elapsed.items()),
        flush=True,
      )

  return log


def write_json(path: pathlib.Path, result: dict) -> None:
  """Writes ``result`` as indented JSON to ``path``, making its folder."""
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(result, indent=1) + "\n")


def write_report(path: pathlib.Path, result: dict, *, print_without: Sequence[str] = ()) -> None:
  """Writes ``result`` to ``path`` (:func:`write_json`) and prints it on one line, less the
  keys ``print_without``: the last line of a benchmark's output, which the tests and
  RESULTS.md read."""
  write_json(path, result)
  print_report({k: v for k, v in result.items() if k not in print_without})


def print_report(result: dict) -> None:
  """Prints ``result`` as JSON on one line, the last line of a benchmark's output."""
  print(json.dumps(result))
