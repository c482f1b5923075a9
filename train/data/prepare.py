"""Tokenize a data spec once into an on-disk token cache that training reads lazily.

  python -m train.data.prepare --spec SPEC --tokenizer TOK --out CACHE [--workers N]

``TOK`` is ``bytes``, a Hugging Face ``tokenizer.json`` or a SentencePiece ``.model``.
Every set (each domain's ``train`` and ``validation``, each ``heldout`` set) is cut into
tasks of about 32 MB of input files; worker processes tokenize the tasks in parallel and
stream each one's tokens to its own part file, so memory holds a batch of documents, not
a file or a set. The layout is in :mod:`train.data.cache`.

Crash safety: a task's files are complete once its ``.done.json`` exists (written last,
atomically), and the cache is complete once ``manifest.json`` exists (written after every
task). A prepare that is killed leaves no manifest, so nothing mistakes it for a cache;
rerunning the same command keeps the finished tasks (their input files unchanged) and
redoes the rest.
"""

import argparse
import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import pathlib
import shutil
import sys
import time

import numpy as np
from tqdm.auto import tqdm

from train.data import files
from train.data import spec as spec_lib
from train.data.cache import CACHE_VERSION, MANIFEST, TokenCache
from train.data.roles import HELDOUT, TRAIN, VALIDATION
from train.data.spec import DataError, DataSpec
from train.data.tokenizer import Tokenizer, TokenizerError, load_tokenizer

# Input bytes per task (and part file); NEXUS_PREPARE_TASK_BYTES overrides it (tests).
TASK_BYTES = int(os.environ.get("NEXUS_PREPARE_TASK_BYTES", 32 << 20))
BATCH_CHARACTERS = 1 << 20
STATE = ".prepare.json"


@dataclasses.dataclass(frozen=True)
class Task:
  """One worker's share: files of one set, written to ``outputs`` (train, and validation
  when the domain holds out a fraction of its training documents)."""

  name: str
  files: tuple[str, ...]
  text_key: str
  outputs: tuple[str, ...]
  holdout_fraction: float | None = None
  seed: int = 0


def _file_stamp(path: str) -> list:
  stat = os.stat(path)
  return [path, stat.st_size, stat.st_mtime_ns]


def plan_tasks(spec: DataSpec) -> tuple[list[Task], dict[str, list[str]]]:
  """Tasks in stream order, and every set's source files (the manifest records them)."""
  sets: list[tuple[str, spec_lib.FileSet, tuple[str, ...], float | None]] = []
  for domain in spec.domains:
    if domain.validation is None:
      sets.append(
        (
          f"{TRAIN}/{domain.name}",
          domain.train,
          (f"{TRAIN}/{domain.name}", f"{VALIDATION}/{domain.name}"),
          domain.validation_fraction,
        )
      )
    else:
      sets.append((f"{TRAIN}/{domain.name}", domain.train, (f"{TRAIN}/{domain.name}",), None))
      sets.append(
        (f"{VALIDATION}/{domain.name}", domain.validation, (f"{VALIDATION}/{domain.name}",), None)
      )
  for name, file_set in spec.heldout.items():
    sets.append((f"{HELDOUT}/{name}", file_set, (f"{HELDOUT}/{name}",), None))
  tasks, sources = [], {}
  for key, file_set, outputs, fraction in sets:
    paths = [str(p) for p in spec_lib.expand(file_set, spec.root, key.replace("/", " "))]
    sources[key] = paths
    group, size = [], 0
    for path in paths:
      group.append(path)
      size += os.path.getsize(path)
      if size >= TASK_BYTES:
        tasks.append(
          Task(
            f"{key.replace('/', '-')}-{len(tasks):05d}",
            tuple(group),
            file_set.text_key,
            outputs,
            fraction,
            spec.seed,
          )
        )
        group, size = [], 0
    if group:
      tasks.append(
        Task(
          f"{key.replace('/', '-')}-{len(tasks):05d}",
          tuple(group),
          file_set.text_key,
          outputs,
          fraction,
          spec.seed,
        )
      )
  return tasks, sources


_WORKER_TOKENIZER: dict[str, Tokenizer] = {}


def _tokenizer(source: str) -> Tokenizer:
  if source not in _WORKER_TOKENIZER:
    _WORKER_TOKENIZER[source] = load_tokenizer(source)
  return _WORKER_TOKENIZER[source]


def _part_path(out: pathlib.Path, key: str, task: Task) -> pathlib.Path:
  return out / "parts" / key / f"{task.name}.bin"


def run_task(task: Task, tokenizer_source: str, out: str, dtype: str) -> dict:
  """Tokenizes one task into its part files; returns (and records) its counts."""
  out = pathlib.Path(out)
  tokenizer = _tokenizer(tokenizer_source)
  eod = np.array([tokenizer.eod_id], dtype)
  streams, tables = {}, {key: [] for key in task.outputs}
  for key in task.outputs:
    path = _part_path(out, key, task)
    path.parent.mkdir(parents=True, exist_ok=True)
    streams[key] = open(path.with_suffix(".bin.tmp"), "wb")
  batch: list[tuple[str, str]] = []

  def flush():
    for (key, text), tokens in zip(batch, tokenizer.encode_batch([text for _, text in batch])):
      streams[key].write(tokens.astype(dtype).tobytes())
      streams[key].write(eod.tobytes())
      tables[key].append((len(tokens) + 1, len(text.encode("utf-8"))))
    batch.clear()

  characters = 0
  for path in task.files:
    for document in files.read_documents(pathlib.Path(path), task.text_key):
      if not document:
        continue
      held_out = task.holdout_fraction is not None and spec_lib.is_validation(
        document, task.seed, task.holdout_fraction
      )
      batch.append((task.outputs[1] if held_out else task.outputs[0], document))
      characters += len(document)
      if characters >= BATCH_CHARACTERS:
        flush()
        characters = 0
  flush()
  record = {
    "task": dataclasses.asdict(task),
    "inputs": [_file_stamp(p) for p in task.files],
    "outputs": {},
  }
  for key, stream in streams.items():
    stream.close()
    path = _part_path(out, key, task)
    table = np.asarray(tables[key], np.int64).reshape(-1, 2)
    np.save(path.with_name(path.name.replace(".bin", ".docs.npy")), table)
    path.with_suffix(".bin.tmp").replace(path)
    record["outputs"][key] = {
      "file": str(path.relative_to(out)),
      "documents": len(table),
      "tokens": int(table[:, 0].sum()),
      "bytes": int(table[:, 1].sum()),
    }
  done = path.with_name(f"{task.name}.done.json")
  staging = done.with_suffix(".tmp")
  staging.write_text(json.dumps(record))
  staging.replace(done)
  return record


def _finished(task: Task, out: pathlib.Path) -> dict | None:
  """A task's record when it completed earlier on the same, unchanged input files."""
  done = _part_path(out, task.outputs[-1], task).with_name(f"{task.name}.done.json")
  try:
    record = json.loads(done.read_text())
  except (OSError, json.JSONDecodeError):
    return None
  if record["task"] != json.loads(json.dumps(dataclasses.asdict(task))):
    return None
  if record["inputs"] != [_file_stamp(p) for p in task.files]:
    return None
  for output in record["outputs"].values():
    if not (out / output["file"]).exists():
      return None
  return record


def prepare(
  spec: DataSpec,
  tokenizer_source: str,
  out: pathlib.Path,
  workers: int | None = None,
  show_progress: bool = True,
) -> TokenCache:
  """Prepares (or finishes, or finds) the cache of ``spec`` under ``tokenizer_source``."""
  out = pathlib.Path(out).absolute()
  tokenizer = load_tokenizer(tokenizer_source)
  dtype = "uint16" if tokenizer.vocab_size <= 1 << 16 else "uint32"
  identity = {
    "version": CACHE_VERSION,
    "spec_hash": spec.hash,
    "tokenizer_hash": tokenizer.hash,
    "token_dtype": dtype,
    "task_bytes": TASK_BYTES,
  }
  manifest_path = out / MANIFEST
  tasks, sources = plan_tasks(spec)
  if manifest_path.exists():
    manifest = json.loads(manifest_path.read_text())
    if not (
      all(manifest.get(k) == identity[k] for k in ("version", "spec_hash", "token_dtype"))
      and manifest["tokenizer"]["hash"] == tokenizer.hash
    ):
      raise DataError(
        f"--out {out} already holds a cache of another spec or tokenizer; choose a "
        "new --out or delete that folder."
      )
    if all(_finished(task, out) for task in tasks):
      return TokenCache(out)
    manifest_path.unlink()  # input files changed since: redo their tasks
  if out.exists() and any(out.iterdir()) and not (out / STATE).exists():
    raise DataError(
      f"--out {out} is a non-empty folder that is not a cache; choose a new or empty --out."
    )
  out.mkdir(parents=True, exist_ok=True)
  state = out / STATE
  if state.exists() and json.loads(state.read_text()) != identity:
    shutil.rmtree(out / "parts", ignore_errors=True)  # a different spec or tokenizer's work
  state.write_text(json.dumps(identity))

  start = time.perf_counter()
  records = {task.name: _finished(task, out) for task in tasks}
  todo = [task for task in tasks if records[task.name] is None]
  sizes = {task.name: sum(os.path.getsize(p) for p in task.files) for task in tasks}
  with tqdm(
    total=sum(sizes.values()),
    initial=sum(sizes.values()) - sum(sizes[t.name] for t in todo),
    unit="B",
    unit_scale=True,
    desc=f"tokenizing ({tokenizer.kind})",
    disable=not show_progress,
    dynamic_ncols=True,
  ) as progress:
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    if workers == 1:  # no pool: a process start costs more than a small task
      for task in todo:
        records[task.name] = run_task(task, str(tokenizer_source), str(out), dtype)
        progress.update(sizes[task.name])
    elif todo:
      # Spawned, not forked: forking a process that runs JAX's or the tokenizer's threads
      # can deadlock. Each worker tokenizes on one thread; the processes are the parallelism.
      context = multiprocessing.get_context("spawn")
      os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
      with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = {
          pool.submit(run_task, task, str(tokenizer_source), str(out), dtype): task for task in todo
        }
        for future in concurrent.futures.as_completed(futures):
          task = futures[future]
          try:
            records[task.name] = future.result()
          except (DataError, TokenizerError):
            for other in futures:
              other.cancel()
            raise
          progress.update(sizes[task.name])

  manifest = _manifest(
    spec, tokenizer, identity, tasks, records, sources, time.perf_counter() - start
  )
  tokenizer.save_copy(out)
  staging = out / f".{MANIFEST}.tmp"
  staging.write_text(json.dumps(manifest, indent=1) + "\n")
  staging.replace(manifest_path)
  return TokenCache(out)


def _manifest(spec, tokenizer, identity, tasks, records, sources, seconds) -> dict:
  sets: dict[str, dict] = {}
  for key in sources:
    sets[key] = {"documents": 0, "bytes": 0, "tokens": 0, "files": sources[key], "parts": []}
  for domain in spec.domains:  # held-out validation has no files of its own
    if domain.validation is None:
      sets[f"{VALIDATION}/{domain.name}"] = {
        "documents": 0,
        "bytes": 0,
        "tokens": 0,
        "files": [],
        "parts": [],
      }
  for task in tasks:
    for key, output in records[task.name]["outputs"].items():
      entry = sets[key]
      for field in ("documents", "bytes", "tokens"):
        entry[field] += output[field]
      entry["parts"].append({"file": output["file"], "tokens": output["tokens"]})
  for key, entry in sets.items():
    if entry["documents"] == 0:
      role, name = key.split("/", 1)
      if role == VALIDATION and not sources.get(key):
        fraction = next(d.validation_fraction for d in spec.domains if d.name == name)
        raise DataError(
          f"domain {name!r} held out no validation document at validation_fraction "
          f"{fraction} (it has {sets[f'{TRAIN}/{name}']['documents']}); raise its "
          "validation_fraction or give it a validation: file list."
        )
      raise DataError(
        f"{role} set {name!r} is empty: its files hold no non-empty document; "
        "point it at files with text."
      )
  ordered = {
    key: sets[key]
    for role in (TRAIN, VALIDATION, HELDOUT)
    for key in sets
    if key.startswith(role + "/")
  }
  domains = {}
  for domain in spec.domains:
    validation = (
      "files"
      if domain.validation is not None
      else f"held out: documents whose seeded content hash < {domain.validation_fraction} "
      f"(seed {spec.seed}), {ordered[f'{VALIDATION}/{domain.name}']['documents']} of "
      f"{ordered[f'{VALIDATION}/{domain.name}']['documents'] + ordered[f'{TRAIN}/{domain.name}']['documents']}"  # noqa: E501
    )
    domains[domain.name] = {
      "weight": domain.weight,
      "text_key": domain.train.text_key,
      "validation": validation,
      "validation_fraction": (
        None if domain.validation is not None else domain.validation_fraction
      ),
    }
  return {
    **identity,
    "tokenizer": tokenizer.describe(),
    "spec": json.loads(spec.text),
    "spec_root": str(spec.root),
    "domains": domains,
    "seed": spec.seed,
    "prepare_seconds": round(seconds, 1),
    "sets": ordered,
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m train.data.prepare", description=__doc__.split("\n\n")[0]
  )
  parser.add_argument("--spec", type=pathlib.Path, required=True, help="YAML data spec")
  parser.add_argument(
    "--tokenizer", required=True, help="'bytes', a tokenizers JSON file, or a SentencePiece .model"
  )
  parser.add_argument("--out", type=pathlib.Path, required=True, help="cache folder to write")
  parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
  parser.add_argument("--no-progress", action="store_true")
  args = parser.parse_args(argv)
  if args.workers is not None and args.workers < 1:
    print(f"error: --workers must be >= 1, got {args.workers}.", file=sys.stderr)
    return 2
  try:
    spec = spec_lib.load_spec(args.spec)
    cache = prepare(spec, args.tokenizer, args.out, args.workers, not args.no_progress)
  except (DataError, TokenizerError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  print(
    f"cache: {cache.root} ({cache.tokenizer_info['kind']} tokenizer, "
    f"{cache.vocab_size} tokens, prepared in {cache.manifest['prepare_seconds']} s)"
  )
  print(f"{'set':<28} {'documents':>9} {'bytes':>13} {'tokens':>13} {'bytes/token':>11}")
  for key, entry in cache.manifest["sets"].items():
    print(
      f"{key:<28} {entry['documents']:>9,} {entry['bytes']:>13,} {entry['tokens']:>13,} "
      f"{entry['bytes'] / max(entry['tokens'], 1):>11.2f}"
    )
  return 0


if __name__ == "__main__":
  sys.exit(main())
