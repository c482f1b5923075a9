"""Preparing users' data: throughput and memory of ``train.data.prepare``, the cache format,
the loader against the model, and the main job on a BPE tokenizer against bytes.

  python -m benchmarks.data_prepare [--megabytes 600] [--stages generate,prepare,format,loader,main]

Stages (each writes its part of ``--out``/results.json, so stages can run separately):
  generate  at least ``--megabytes`` of real text found on this machine (the source files
            of the installed Python packages and the interpreter, C headers, docs),
            written as JSONL shards in three domains (python, native, docs), with a spec;
  prepare   ``python -m train.data.prepare --workers 2`` on it with the byte tokenizer and
            with a byte-level BPE trained on the built-in corpus: MB/s of text and the peak
            RSS of the whole process tree (sampled from /proc every 50 ms);
  format    the two on-disk layouts the issue allows, on the same windows: memory-mapped
            token parts (what the cache uses) against ArrayRecord (one record per group,
            uncompressed, as the parts are) read through
            ``grain.sources.ArrayRecordDataSource``: random windows per second and bytes;
  loader    the grain mixture's tokens/s from the prepared cache against the demo
            model's AdamW + Nexus step (``benchmarks.data_pipeline``);
  main      the demo main job's Nexus run (``train.pretrain --preset demo``) on the
            built-in corpus with bytes and with the BPE: tokens per byte, and validation
            bpb at the same training wall time (evaluation time excluded); a PNG and a table.

``--out`` defaults to ``benchmarks/out/data_prepare``; the committed tables in
``benchmarks/data_prepare/`` are written with ``--out benchmarks/data_prepare``.
"""

import argparse
import json
import os
import pathlib
import shutil
import site
import subprocess
import sys
import sysconfig
import threading
import time

import numpy as np

from benchmarks.common import out_dir, write_json, write_report
from train.data import TokenCache
from train.data.corpus import SPEC_FILE, ensure_corpus, ensure_default_cache
from train.data.prepare import prepare
from train.data.spec import load_spec

REPO = pathlib.Path(__file__).resolve().parents[1]
DOMAINS = {
  "python": (".py", ".pyi"),
  "native": (".h", ".hpp", ".c", ".cc", ".cpp", ".cuh"),
  "docs": (".md", ".rst", ".txt", ".html"),
}
SHARD_BYTES = 32 << 20


def text_roots() -> list[pathlib.Path]:
  roots = [pathlib.Path(p) for p in site.getsitepackages()]
  roots += [
    pathlib.Path(sysconfig.get_paths()["stdlib"]),
    pathlib.Path(sys.base_prefix).parent,
    pathlib.Path("/usr/include"),
    pathlib.Path("/usr/share/doc"),
  ]
  return [root for root in roots if root.is_dir()]


def generate(work: pathlib.Path, megabytes: int) -> dict:
  """JSONL shards of real text, each file once, until ``megabytes`` are written."""
  target = megabytes << 20
  suffix_domain = {s: d for d, suffixes in DOMAINS.items() for s in suffixes}
  writers, sizes, counts, seen = {}, dict.fromkeys(DOMAINS, 0), dict.fromkeys(DOMAINS, 0), set()
  shard_index = dict.fromkeys(DOMAINS, 0)
  total = 0

  def writer(domain):
    if domain not in writers or writers[domain].tell() >= SHARD_BYTES:
      if domain in writers:
        writers[domain].close()
        shard_index[domain] += 1
      path = work / domain / f"{domain}-{shard_index[domain]:04d}.jsonl"
      path.parent.mkdir(parents=True, exist_ok=True)
      writers[domain] = open(path, "w", encoding="utf-8")
    return writers[domain]

  for root in text_roots():
    for path in sorted(root.rglob("*")):
      domain = suffix_domain.get(path.suffix)
      if domain is None or total >= target:
        continue
      try:
        real = path.resolve()
        if real in seen or not real.is_file() or real.stat().st_size > 4 << 20:
          continue
        seen.add(real)
        text = real.read_text(encoding="utf-8")
      except (OSError, UnicodeDecodeError):
        continue
      if not text.strip():
        continue
      line = json.dumps({"text": text, "path": str(path)}, ensure_ascii=False) + "\n"
      writer(domain).write(line)
      size = len(text.encode("utf-8"))
      sizes[domain] += size
      counts[domain] += 1
      total += size
    if total >= target:
      break
  for stream in writers.values():
    stream.close()
  if total < target:
    raise SystemExit(f"error: found only {total / 2**20:.0f} MB of text; lower --megabytes.")
  spec = "domains:\n" + "".join(
    f'  {domain}: {{train: ["{domain}/*.jsonl"], validation_fraction: 0.005}}\n'
    for domain in DOMAINS
    if counts[domain]
  )
  (work / "spec.yaml").write_text(spec)
  return {
    "text_bytes": total,
    "documents": counts,
    "bytes": sizes,
    "roots": [str(r) for r in text_roots()],
  }


class PeakRSS:
  """Peak resident memory of a process and all its descendants, sampled from /proc."""

  def __init__(self, pid: int, every: float = 0.05):
    self.pid, self.every, self.peak, self._stop = pid, every, 0, threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()

  def _tree(self) -> list[int]:
    children = {}
    for entry in pathlib.Path("/proc").iterdir():
      if entry.name.isdigit():
        try:
          parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
          continue
        children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [self.pid]
    while todo:
      pid = todo.pop()
      tree.append(pid)
      todo += children.get(pid, [])
    return tree

  def _run(self):
    while not self._stop.is_set():
      total = 0
      for pid in self._tree():
        try:
          for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
              total += int(line.split()[1]) * 1024
        except OSError:
          continue
      self.peak = max(self.peak, total)
      time.sleep(self.every)

  def stop(self) -> int:
    self._stop.set()
    self._thread.join()
    return self.peak


def timed_command(command: list[str], env=None) -> tuple[float, int, str]:
  """(seconds, peak RSS bytes of the process tree, stdout) of a command that must succeed."""
  start = time.perf_counter()
  process = subprocess.Popen(
    command,
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env={**os.environ, **(env or {})},
  )
  sampler = PeakRSS(process.pid)
  stdout, stderr = process.communicate()
  peak = sampler.stop()
  if process.returncode:
    raise SystemExit(f"error: {' '.join(command)} failed:\n{stderr[-2000:]}")
  return time.perf_counter() - start, peak, stdout


def builtin_bpe(out: pathlib.Path, vocab_size: int) -> dict:
  """A byte-level BPE trained on the built-in corpus's training text, through the CLI."""
  corpus = ensure_corpus()
  path = out / f"bpe-{vocab_size}.json"
  seconds, peak, _ = timed_command(
    [
      sys.executable,
      "-m",
      "train.data.tokenizer",
      "--spec",
      str(corpus.root / SPEC_FILE),
      "--vocab-size",
      str(vocab_size),
      "--out",
      str(path),
      "--no-progress",
    ]
  )
  return {
    "path": str(path),
    "vocab_size": vocab_size,
    "train_seconds": round(seconds, 1),
    "peak_rss_mb": round(peak / 2**20),
  }


def measure_prepare(spec: pathlib.Path, tokenizer: str, cache: pathlib.Path, workers: int) -> dict:
  shutil.rmtree(cache, ignore_errors=True)
  seconds, peak, _ = timed_command(
    [
      sys.executable,
      "-m",
      "train.data.prepare",
      "--spec",
      str(spec),
      "--tokenizer",
      tokenizer,
      "--out",
      str(cache),
      "--workers",
      str(workers),
      "--no-progress",
    ]
  )
  manifest = json.loads((cache / "manifest.json").read_text())
  text = sum(s["bytes"] for s in manifest["sets"].values())
  tokens = sum(s["tokens"] for s in manifest["sets"].values())
  return {
    "tokenizer": manifest["tokenizer"]["kind"],
    "workers": workers,
    "seconds": round(seconds, 1),
    "text_mb": round(text / 2**20, 1),
    "mb_per_s": round(text / 2**20 / seconds, 2),
    "peak_rss_mb": round(peak / 2**20),
    "tokens": tokens,
    "bytes_per_token": round(text / tokens, 3),
    "cache_mb": round(sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 2**20, 1),
  }


def compare_formats(
  cache_dir: pathlib.Path,
  work: pathlib.Path,
  seq_len: int = 256,
  windows: int = 100_000,
  reads: int = 20_000,
) -> dict:
  """Random window reads: the cache's memory-mapped parts against ArrayRecord."""
  # grain and array_record load only for this stage, which alone reads ArrayRecord.
  import grain
  from array_record.python import array_record_module

  cache = TokenCache(cache_dir)
  source = cache.windows("train", cache.names("train")[0], seq_len)
  count = min(windows, len(source))
  path = work / "windows.array_record"
  # One record per group and no compression (the default is zstd): a random read then
  # costs one seek and one copy, as it does from the memory-mapped parts.
  writer = array_record_module.ArrayRecordWriter(str(path), "group_size:1,uncompressed")
  for index in range(count):
    writer.write(source[index].astype(np.uint16).tobytes())
  writer.close()
  records = grain.sources.ArrayRecordDataSource([str(path)])
  order = np.random.default_rng(0).integers(0, count, reads)
  results = {}
  for name, read in (
    ("memmap", lambda i: source[i]),
    ("array_record", lambda i: np.frombuffer(records[i], np.uint16)),
  ):
    for index in order[:1000]:  # warm the page cache for both
      read(int(index))
    start = time.perf_counter()
    checksum = 0
    for index in order:
      checksum += int(read(int(index))[0])
    seconds = time.perf_counter() - start
    results[name] = {"windows_per_s": round(reads / seconds), "checksum": checksum}
  np.testing.assert_array_equal(np.frombuffer(records[7], np.uint16), source[7])
  part_bytes = count * seq_len * cache.dtype.itemsize  # the windows overlap by one token
  results["memmap"]["bytes"] = part_bytes
  results["array_record"]["bytes"] = path.stat().st_size
  reader = array_record_module.ArrayRecordReader(str(path))
  results["array_record"]["options"] = reader.writer_options_string()
  reader.close()
  results["windows"], results["seq_len"] = count, seq_len
  results["array_record_over_memmap"] = round(
    results["array_record"]["windows_per_s"] / results["memmap"]["windows_per_s"], 3
  )
  return results


def measure_loader(cache_dir: pathlib.Path, out: pathlib.Path) -> dict:
  """``benchmarks.data_pipeline`` on ``cache_dir``: 100 loader steps, 3 model steps."""
  # JAX and Flax load only for the loader stage.
  from benchmarks import data_pipeline

  report = data_pipeline.measure(TokenCache(cache_dir), steps=100, repeats=3)
  write_report(out / "data_pipeline.json", report, print_without=("corpus",))
  return {
    k: report[k]
    for k in (
      "loader_tokens_per_s",
      "nexus_adamw_tokens_per_s",
      "loader_over_model",
      "nexus_adamw_step_s",
    )
  }


def main_job(out: pathlib.Path, report_dir: pathlib.Path, bpe: dict, steps: int) -> dict:
  """The demo Nexus run on bytes and on the BPE: bpb at the same training wall time."""
  corpus = ensure_corpus()
  bytes_cache = ensure_default_cache()
  bpe_cache = prepare(load_spec(corpus.root / SPEC_FILE), bpe["path"], out / "builtin-bpe-cache")
  arms = {}
  for name, cache in (("bytes", bytes_cache), ("bpe", bpe_cache)):
    run = out / f"main-{name}"
    shutil.rmtree(run, ignore_errors=True)
    command = [
      sys.executable,
      "-m",
      "train.pretrain",
      "--preset",
      "demo",
      "--optimizer",
      "nexus",
      "--steps",
      str(steps),
      "--eval-every",
      str(max(1, steps // 8)),
      "--eval-sequences",
      "32",  # the demo preset's when RESULTS.md's figures were measured (16 since issue 20)
      "--data",
      str(cache.root),
      "--out",
      str(run),
      "--no-progress",
    ]
    seconds, _, _ = timed_command(command)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r for r in records if "eval_seconds" in r]
    domains = [d.split("=")[0] for d in cache.default_mixture.split(",")]
    train_bytes = sum(cache.set_info("train", d)["bytes"] for d in domains)
    train_tokens = sum(cache.set_info("train", d)["tokens"] for d in domains)
    points = [
      {
        "step": r["step"],
        "train_seconds": r["seconds"] - r["eval_seconds"],
        "validation_bpb": float(np.mean([r[f"validation/{d}/bpb"] for d in domains])),
        "heldout_bpb": float(
          np.mean([v for k, v in r.items() if k.startswith("heldout/") and k.endswith("/bpb")])
        ),
      }
      for r in evaluations
    ]
    arms[name] = {
      "vocab_size": cache.vocab_size,
      "padded_vocab_size": cache.padded_vocab_size,
      "tokens_per_byte": round(train_tokens / train_bytes, 4),
      "command": " ".join(command[1:]),
      "wall_seconds": round(seconds, 1),
      "points": points,
    }
  same_time = min(arm["points"][-1]["train_seconds"] for arm in arms.values())
  for arm in arms.values():
    times = [p["train_seconds"] for p in arm["points"]]
    for key in ("validation_bpb", "heldout_bpb"):
      values = [p[key] for p in arm["points"]]
      arm[f"{key}_at_same_time"] = (
        float(np.interp(same_time, times, values)) if times[0] <= same_time else None
      )
  plot_main_job(arms, report_dir)
  return {
    "steps": steps,
    "same_train_seconds": round(same_time, 1),
    "arms": arms,
    "winner": min(arms, key=lambda a: arms[a]["validation_bpb_at_same_time"] or np.inf),
  }


def plot_main_job(arms: dict, out: pathlib.Path) -> None:
  import matplotlib  # loads only for the main stage's plot

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  figure, axis = plt.subplots(figsize=(6, 4))
  for name, arm in arms.items():
    label = f"{name} (vocab {arm['vocab_size']}, {arm['tokens_per_byte']:.3f} tokens/byte)"
    axis.plot(
      [p["train_seconds"] for p in arm["points"]],
      [p["validation_bpb"] for p in arm["points"]],
      "o-",
      label=label,
    )
  axis.set(
    xlabel="training wall time (s, evaluation excluded)",
    ylabel="validation bits per byte",
    title="Demo Nexus run: byte tokenizer against BPE",
  )
  axis.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(out / "main_job_bpb.png", dpi=120)
  plt.close(figure)


def markdown(results: dict) -> str:
  """``results.md``: every table of the run, from ``results.json``."""
  lines = [
    "# Preparing data (`benchmarks/data_prepare.py`)",
    "",
    f"Machine: 2 CPU cores, Python {sys.version.split()[0]}. Written by the script from "
    "results.json; each stage's command and date:",
    "",
  ]
  lines += [f"- {stage}: `{command}`" for stage, command in results.get("commands", {}).items()]
  lines.append("")
  if "generate" in results:
    generated = results["generate"]
    lines += ["## The text", "", "| domain | documents | MB |", "|---|---:|---:|"]
    lines += [
      f"| {d} | {generated['documents'][d]:,} | {generated['bytes'][d] / 2**20:.1f} |"
      for d in generated["documents"]
    ]
    lines += ["", f"From {', '.join(generated['roots'])}; written in {generated['seconds']} s.", ""]
  if "prepare" in results:
    lines += [
      "## prepare: throughput and peak memory (2 workers)",
      "",
      "| spec | tokenizer | text MB | seconds | MB/s | peak RSS (MB, process tree) | "
      "bytes/token | cache MB |",
      "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in results["prepare"].items():
      spec = "native domain only" if name.endswith("native-only") else "all three domains"
      lines.append(
        f"| {spec} | {row['tokenizer']} | {row['text_mb']} | {row['seconds']} | "
        f"{row['mb_per_s']} | {row['peak_rss_mb']} | {row['bytes_per_token']} | "
        f"{row['cache_mb']} |"
      )
    lines.append("")
  if "format" in results:
    f = results["format"]
    lines += [
      "## Cache layout: random windows of 257 tokens",
      "",
      "| layout | windows/s | bytes on disk |",
      "|---|---:|---:|",
      f"| memory-mapped parts (chosen) | {f['memmap']['windows_per_s']:,} "
      f"| {f['memmap']['bytes']:,} |",
      f"| ArrayRecord (`grain.sources.ArrayRecordDataSource`) | "
      f"{f['array_record']['windows_per_s']:,} | {f['array_record']['bytes']:,} |",
      "",
    ]
  if "loader" in results:
    lines += [
      "## Loader against the demo model's AdamW + Nexus step",
      "",
      "| cache | loader tokens/s | model tokens/s | loader / model |",
      "|---|---:|---:|---:|",
    ]
    lines += [
      f"| {name} | {row['loader_tokens_per_s']:,} | {row['nexus_adamw_tokens_per_s']:,} | "
      f"{row['loader_over_model']}x |"
      for name, row in results["loader"].items()
    ]
    lines.append("")
  if "main" in results:
    main = results["main"]
    lines += [
      "## The demo main job's Nexus run: byte tokenizer against BPE",
      "",
      f"{main['steps']} outer steps each, same preset; bpb at "
      f"{main['same_train_seconds']} s of training (evaluation excluded), interpolated "
      f"between evaluations. Winner: **{main['winner']}**.",
      "",
      "| tokenizer | vocab | tokens / byte | validation bpb at same time | held-out bpb at "
      "same time | final validation bpb | training s |",
      "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, arm in main["arms"].items():
      last = arm["points"][-1]
      lines.append(
        f"| {name} | {arm['vocab_size']} | {arm['tokens_per_byte']} | "
        f"{arm['validation_bpb_at_same_time']:.4f} | {arm['heldout_bpb_at_same_time']:.4f} | "
        f"{last['validation_bpb']:.4f} | {last['train_seconds']:.1f} |"
      )
    lines += ["", "![bpb against training time](main_job_bpb.png)", ""]
    lines += [f"- {name}: `python {arm['command']}`" for name, arm in main["arms"].items()]
    lines.append("")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--megabytes", type=int, default=600, help="text to generate")
  parser.add_argument(
    "--work",
    type=pathlib.Path,
    default=pathlib.Path("/tmp/nexus-data-prepare"),
    help="scratch folder for the generated text and caches (not committed)",
  )
  parser.add_argument("--vocab-size", type=int, default=2048, help="the BPE's vocabulary")
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--main-steps", type=int, default=140, help="demo preset's steps")
  parser.add_argument(
    "--stages",
    default="generate,prepare,format,loader,main",
    help="any of generate,prepare,format,loader,main; 'report' only rewrites results.md",
  )
  parser.add_argument("--out", type=pathlib.Path, default=out_dir("data_prepare"))
  args = parser.parse_args(argv)
  stages = args.stages.split(",")
  args.out.mkdir(parents=True, exist_ok=True)
  args.work.mkdir(parents=True, exist_ok=True)
  results_path = args.out / "results.json"
  results = json.loads(results_path.read_text()) if results_path.exists() else {}
  save = lambda: write_json(results_path, results)
  spec = args.work / "text" / "spec.yaml"
  if "generate" in stages:
    start = time.perf_counter()
    results["generate"] = generate(args.work / "text", args.megabytes)
    results["generate"]["seconds"] = round(time.perf_counter() - start, 1)
    save()
    print(json.dumps(results["generate"]["bytes"]))
  if "prepare" in stages or "main" in stages:
    results["bpe"] = builtin_bpe(args.work, args.vocab_size)
    save()
  if "prepare" in stages:
    results["prepare"] = {}
    # Memory must not grow with the corpus: the same prepare on one domain (a tenth of it).
    small = args.work / "text" / "spec-native.yaml"
    small.write_text(
      'domains:\n  native: {train: ["native/*.jsonl"], validation_fraction: 0.005}\n'
    )
    for name, tokenizer in (("bytes", "bytes"), ("bpe", results["bpe"]["path"])):
      results["prepare"][name] = measure_prepare(
        spec, tokenizer, args.work / f"cache-{name}", args.workers
      )
      results["prepare"][f"{name}-native-only"] = measure_prepare(
        small, tokenizer, args.work / f"cache-{name}-native", args.workers
      )
      save()
      print(name, json.dumps(results["prepare"][name]))
  if "format" in stages:
    results["format"] = compare_formats(args.work / "cache-bytes", args.work)
    save()
    print(json.dumps(results["format"]))
  if "loader" in stages:
    results["loader"] = {
      name: measure_loader(args.work / f"cache-{name}", args.work) for name in ("bytes", "bpe")
    }
    save()
    print(json.dumps(results["loader"]))
  if "main" in stages:
    results["main"] = main_job(args.work, args.out, results["bpe"], args.main_steps)
    save()
    print(json.dumps({k: v for k, v in results["main"].items() if k != "arms"}))
  command = "python -m benchmarks.data_prepare " + " ".join(
    argv if argv is not None else sys.argv[1:]
  )
  for stage in stages:
    if stage in ("generate", "prepare", "format", "loader", "main"):
      results.setdefault("commands", {})[stage] = f"{command} ({time.strftime('%Y-%m-%d')})"
  save()
  (args.out / "results.md").write_text(markdown(results))
  return 0


if __name__ == "__main__":
  sys.exit(main())
