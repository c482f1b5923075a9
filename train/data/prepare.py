"""Tokenize a data spec once into an on-disk token cache that training reads lazily.

  python -m train.data.prepare --spec SPEC --tokenizer TOK --out CACHE [--workers N]
                               [--decontaminate]

``TOK`` is ``bytes``, a Hugging Face ``tokenizer.json`` or a SentencePiece ``.model``.
Every set (each domain's ``train`` and ``validation``, each ``heldout`` set) is cut into
tasks of about 32 MB of input files; worker processes tokenize the tasks in parallel and
stream each one's tokens to its own part file, so memory holds a batch of documents, not
a file or a set. The layout is in :mod:`train.data.cache`.

Crash safety: a task's files are complete once its ``.done.json`` exists (written last,
atomically), and the cache is complete once ``manifest.json`` exists (written after every
task). A prepare that is killed leaves no manifest, so nothing mistakes it for a cache;
rerunning the same command keeps the finished tasks (their input files unchanged, their
parts matching the sha256 each one recorded) and redoes the rest. The manifest records
every part's checksums; ``python -m train.data.verify CACHE`` checks them.

Contamination: before tokenizing, prepare hashes every held-out and validation document
after whitespace normalisation (runs of whitespace collapsed to one space, ends stripped);
each training document is hashed the same way as it streams past and looked up, so memory
holds the held-out and validation hashes, never the training corpus. The manifest's
``contamination`` says, set by set, how many documents training also holds and where;
``--decontaminate`` drops those training documents before they are tokenized.
"""

import argparse
import collections
import concurrent.futures
import contextlib
import dataclasses
import hashlib
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
from train.data.cache import CACHE_VERSION, MANIFEST, TokenCache, file_sha256, part_problem
from train.data.roles import HELDOUT, TRAIN, VALIDATION
from train.data.spec import DataError, DataSpec
from train.data.tokenizer import Tokenizer, TokenizerError, load_tokenizer

# Input bytes per task (and part file); NEXUS_PREPARE_TASK_BYTES overrides it (tests).
TASK_BYTES = int(os.environ.get("NEXUS_PREPARE_TASK_BYTES", 32 << 20))
BATCH_CHARACTERS = 1 << 20
STATE = ".prepare.json"
TARGETS = ".targets.json"
NORMALISATION = "exact match after collapsing every whitespace run to one space and stripping"
PREFIX = 64


@dataclasses.dataclass(frozen=True)
class Task:
  """One worker's share: files of one set, written to ``outputs`` (train, and validation
  when the domain holds out a fraction of its training documents).

  A training task names the held-out and validation documents its documents are checked
  against (``targets``, a digest of their hashes) and whether it drops the matches, so
  that a part is reused only where both are what they were.
  """

  name: str
  files: tuple[str, ...]
  text_key: str
  outputs: tuple[str, ...]
  holdout_fraction: float | None = None
  seed: int = 0
  targets: str = ""
  decontaminate: bool = False

  @property
  def trains(self) -> bool:
    return self.outputs[0].startswith(TRAIN + "/")

  @property
  def evaluates(self) -> bool:
    """Whether some of its documents are held out or validation documents."""
    return not self.trains or self.holdout_fraction is not None


def _file_stamp(path: str) -> list:
  stat = os.stat(path)
  return [path, stat.st_size, stat.st_mtime_ns]


def normalize(document: str) -> str:
  """A document with every whitespace run collapsed to one space and its ends stripped."""
  return " ".join(document.split())


def normalized_digest(document: str) -> bytes | None:
  """The hash two documents share when they differ in whitespace only; ``None`` for a
  document that is whitespace alone, which matches nothing.

  Example:
    >>> normalized_digest("  a   b ") == normalized_digest("a b"), normalized_digest("  ")
    (True, None)
  """
  text = normalize(document)
  return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest() if text else None


@dataclasses.dataclass(frozen=True)
class Targets:
  """The normalised hashes of the held-out and validation documents, and the first
  ``PREFIX`` characters of their normalised text.

  Normalising a whole training document costs more than tokenizing it with the byte
  tokenizer; its first few hundred characters, normalised, rule out almost every one.
  """

  digests: frozenset[bytes] = frozenset()
  prefixes: frozenset[str] = frozenset()

  def match(self, document: str) -> bytes | None:
    """The digest a training document shares with a target, if it shares one."""
    head = normalize(document[: 4 * PREFIX])
    # A cut document's normalised head is a prefix of the whole one's normalised text, so
    # its first PREFIX characters decide, once it has that many.
    if len(head) < PREFIX and len(document) > 4 * PREFIX:
      head = normalize(document)
    if head[:PREFIX] not in self.prefixes:
      return None
    digest = normalized_digest(document)
    return digest if digest in self.digests else None


def spec_identity(spec: DataSpec, decontaminate: bool) -> str:
  """The hash a cache and the runs on it record of its spec.

  ``--decontaminate`` changes the training documents, so it changes the hash (a resumed
  run then refuses the other cache); without it the hash is the spec's own, as recorded by
  caches and runs from before the flag.
  """
  if not decontaminate:
    return spec.hash
  return hashlib.sha256((spec.text + "\n--decontaminate").encode()).hexdigest()


def plan_tasks(
  spec: DataSpec, targets: str = "", decontaminate: bool = False
) -> tuple[list[Task], dict[str, list[str]]]:
  """Tasks in stream order, and every set's source files (the manifest records them).

  ``targets`` (the digest of the held-out and validation hashes) and ``decontaminate``
  go into the training tasks only: held-out and validation parts do not depend on them.
  """
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
    trains = key.startswith(TRAIN + "/")
    groups, group, size = [], [], 0
    for path in paths:
      group.append(path)
      size += os.path.getsize(path)
      if size >= TASK_BYTES:
        groups.append(group)
        group, size = [], 0
    if group:
      groups.append(group)
    for group in groups:
      tasks.append(
        Task(
          f"{key.replace('/', '-')}-{len(tasks):05d}",
          tuple(group),
          file_set.text_key,
          outputs,
          fraction,
          spec.seed,
          targets if trains else "",
          decontaminate and trains,
        )
      )
  return tasks, sources


_WORKER_TOKENIZER: dict[str, Tokenizer] = {}


def _tokenizer(source: str) -> Tokenizer:
  if source not in _WORKER_TOKENIZER:
    _WORKER_TOKENIZER[source] = load_tokenizer(source)
  return _WORKER_TOKENIZER[source]


_WORKER_TARGETS: dict[str, Targets] = {}


def _targets(path: str, digest: str) -> Targets:
  """The targets file a worker process reads once, however many tasks it runs."""
  if digest not in _WORKER_TARGETS:
    raw = json.loads(pathlib.Path(path).read_text())
    _WORKER_TARGETS[digest] = Targets(
      frozenset(bytes.fromhex(d) for d in raw["digests"]), frozenset(raw["prefixes"])
    )
  return _WORKER_TARGETS[digest]


def _part_path(out: pathlib.Path, key: str, task: Task) -> pathlib.Path:
  return out / "parts" / key / f"{task.name}.bin"


def _routed_documents(task: Task):
  """``(output, document)`` for each non-empty document of a task, in file order."""
  for path in task.files:
    for document in files.read_documents(pathlib.Path(path), task.text_key):
      if not document:
        continue
      held_out = task.holdout_fraction is not None and spec_lib.is_validation(
        document, task.seed, task.holdout_fraction
      )
      yield task.outputs[1] if held_out else task.outputs[0], document


def scan_task(task: Task) -> tuple[dict[str, dict[bytes, int]], set[str]]:
  """Per held-out or validation output of a task, its documents' normalised hashes,
  counted; and their normalised texts' first ``PREFIX`` characters."""
  counts: dict[str, collections.Counter] = {}
  prefixes = set()
  for key, document in _routed_documents(task):
    if key.startswith(TRAIN + "/"):
      continue
    text = normalize(document)
    if text:
      counts.setdefault(key, collections.Counter())[normalized_digest(text)] += 1
      prefixes.add(text[:PREFIX])
  return {key: dict(counter) for key, counter in counts.items()}, prefixes


def run_task(
  task: Task, tokenizer_source: str, out: str, dtype: str, targets: Targets | str | None = None
) -> dict:
  """Tokenizes one task into its part files; returns (and records) its counts.

  ``targets`` are the normalised hashes of the held-out and validation documents (or the
  file that holds them, for a worker process): the task's training documents among them
  are counted, and dropped when it decontaminates.
  """
  if isinstance(targets, str):
    targets = _targets(targets, task.targets)
  out = pathlib.Path(out)
  tokenizer = _tokenizer(tokenizer_source)
  eod = np.array([tokenizer.eod_id], dtype).tobytes()
  streams, tables = {}, {key: [] for key in task.outputs}
  digests = {key: hashlib.sha256() for key in task.outputs}
  for key in task.outputs:
    path = _part_path(out, key, task)
    path.parent.mkdir(parents=True, exist_ok=True)
    streams[key] = open(path.with_suffix(".bin.tmp"), "wb")
  batch: list[tuple[str, str]] = []

  def write(key: str, data: bytes) -> None:
    streams[key].write(data)
    digests[key].update(data)

  def flush():
    for (key, text), tokens in zip(batch, tokenizer.encode_batch([text for _, text in batch])):
      write(key, tokens.astype(dtype).tobytes())
      write(key, eod)
      tables[key].append((len(tokens) + 1, len(text.encode("utf-8"))))
    batch.clear()

  characters, matched, matching = 0, set(), 0
  for key, document in _routed_documents(task):
    if targets is not None and key.startswith(TRAIN + "/"):
      digest = targets.match(document)
      if digest is not None:
        matched.add(digest)
        matching += 1
        if task.decontaminate:
          continue
    batch.append((key, document))
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
  if task.trains:
    record["contamination"] = {
      "set": task.outputs[0],
      "matched": sorted(digest.hex() for digest in matched),
      "documents": matching,
      "removed": matching if task.decontaminate else 0,
    }
  for key, stream in streams.items():
    stream.close()
    path = _part_path(out, key, task)
    table = np.asarray(tables[key], np.int64).reshape(-1, 2)
    docs = path.with_name(path.name.replace(".bin", ".docs.npy"))
    np.save(docs, table)
    path.with_suffix(".bin.tmp").replace(path)
    record["outputs"][key] = {
      "file": str(path.relative_to(out)),
      "documents": len(table),
      "tokens": int(table[:, 0].sum()),
      "bytes": int(table[:, 1].sum()),
      "sha256": digests[key].hexdigest(),
      "docs_size": docs.stat().st_size,
      "docs_sha256": file_sha256(docs),
    }
  done = path.with_name(f"{task.name}.done.json")
  staging = done.with_suffix(".tmp")
  staging.write_text(json.dumps(record))
  staging.replace(done)
  return record


def _finished(task: Task, out: pathlib.Path, itemsize: int) -> dict | None:
  """A task's record when it completed earlier on the same, unchanged input files, and its
  parts still hold the bytes it wrote (sizes and sha256 checked)."""
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
    # A part from before checksums is redone: hashing it now would vouch for whatever
    # its file holds today, not for what was written.
    if "sha256" not in output or part_problem(out, output, itemsize) is not None:
      return None
  return record


@contextlib.contextmanager
def _pool(workers: int):
  """Worker processes, or ``None`` for one worker (a process start costs more than a
  small task)."""
  if workers == 1:
    yield None
    return
  # Spawned, not forked: forking a process that runs JAX's or the tokenizer's threads
  # can deadlock. Each worker tokenizes on one thread; the processes are the parallelism.
  context = multiprocessing.get_context("spawn")
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
    yield pool


def _each(pool, function, jobs: dict):
  """``(name, function(*args))`` for every ``name: args`` of ``jobs``, as each finishes."""
  if pool is None:
    for name, args in jobs.items():
      yield name, function(*args)
    return
  futures = {pool.submit(function, *args): name for name, args in jobs.items()}
  for future in concurrent.futures.as_completed(futures):
    try:
      result = future.result()
    except (DataError, TokenizerError):
      for other in futures:
        other.cancel()
      raise
    yield futures[future], result


def _has_checksums(manifest: dict) -> bool:
  return all("sha256" in part for entry in manifest["sets"].values() for part in entry["parts"])


def _reuse_existing(
  out: pathlib.Path, spec, tokenizer, identity: dict, itemsize: int, decontaminate: bool
) -> TokenCache | None:
  """The complete cache already at ``out`` for these inputs, or None (its manifest then
  removed, so that its changed tasks are redone)."""
  manifest_path = out / MANIFEST
  if not manifest_path.exists():
    return None
  manifest = json.loads(manifest_path.read_text())
  flagged = manifest.get("contamination", {}).get("decontaminate", False)
  if manifest.get("spec") == json.loads(spec.text) and flagged != decontaminate:
    raise DataError(
      f"--out {out} holds this spec's cache prepared {'with' if flagged else 'without'} "
      f"--decontaminate; rerun {'with' if flagged else 'without'} it, or choose a new --out."
    )
  if not (
    all(manifest.get(k) == identity[k] for k in ("version", "spec_hash", "token_dtype"))
    and manifest["tokenizer"]["hash"] == tokenizer.hash
  ):
    raise DataError(
      f"--out {out} already holds a cache of another spec or tokenizer; choose a "
      "new --out or delete that folder."
    )
  # Unchanged inputs mean unchanged held-out and validation documents, so the recorded
  # digest of their hashes is still theirs.
  targets = manifest.get("contamination", {}).get("targets", "")
  tasks, _ = plan_tasks(spec, targets, decontaminate)
  copy = out / tokenizer.file_name if tokenizer.file_name else None
  if (
    _has_checksums(manifest)
    and (copy is None or (copy.exists() and file_sha256(copy) == tokenizer.hash))
    and all(_finished(task, out, itemsize) for task in tasks)
  ):
    return TokenCache(out)
  manifest_path.unlink()  # input files or parts changed since: redo their tasks


def _scan_targets(pool, scans: dict, sizes: dict, show_progress: bool):
  """``(per-set document-hash counts, Targets)`` of the held-out and validation sets."""
  evaluated: dict[str, dict[bytes, int]] = {}
  with tqdm(
    total=sum(sizes[name] for name in scans),
    unit="B",
    unit_scale=True,
    desc="hashing held-out and validation documents",
    disable=not show_progress,
    dynamic_ncols=True,
  ) as progress:
    prefixes = set()
    for name, (counts, heads) in _each(pool, scan_task, scans):
      prefixes |= heads
      for key, counter in counts.items():
        merged = evaluated.setdefault(key, {})
        for digest, count in counter.items():
          merged[digest] = merged.get(digest, 0) + count
      progress.update(sizes[name])
  targets = Targets(
    frozenset(digest for counter in evaluated.values() for digest in counter),
    frozenset(prefixes),
  )
  return evaluated, targets


def prepare(
  spec: DataSpec,
  tokenizer_source: str,
  out: pathlib.Path,
  workers: int | None = None,
  show_progress: bool = True,
  decontaminate: bool = False,
) -> TokenCache:
  """Prepares (or finishes, or finds) the cache of ``spec`` under ``tokenizer_source``.

  ``decontaminate`` drops the training documents that a held-out or validation set also
  holds (after whitespace normalisation); the manifest's ``contamination`` counts them
  either way.
  """
  out = pathlib.Path(out).absolute()
  tokenizer = load_tokenizer(tokenizer_source)
  dtype = "uint16" if tokenizer.vocab_size <= 1 << 16 else "uint32"
  itemsize = np.dtype(dtype).itemsize
  identity = {
    "version": CACHE_VERSION,
    "spec_hash": spec_identity(spec, decontaminate),
    "tokenizer_hash": tokenizer.hash,
    "token_dtype": dtype,
    "task_bytes": TASK_BYTES,
  }
  manifest_path = out / MANIFEST
  existing = _reuse_existing(out, spec, tokenizer, identity, itemsize, decontaminate)
  if existing is not None:
    return existing
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
  planned, sources = plan_tasks(spec)
  scans = {task.name: (task,) for task in planned if task.evaluates}
  sizes = {task.name: sum(os.path.getsize(p) for p in task.files) for task in planned}
  workers = max(1, min(workers or os.cpu_count() or 1, len(planned)))
  with _pool(workers) as pool:
    evaluated, targets = _scan_targets(pool, scans, sizes, show_progress)
    digest = hashlib.sha256(b"".join(sorted(targets.digests))).hexdigest()
    tasks, _ = plan_tasks(spec, digest, decontaminate)
    records = {task.name: _finished(task, out, itemsize) for task in tasks}
    shared = targets
    if pool is not None:  # a large validation set's hashes go to each worker once, not per task
      shared = str(out / TARGETS)
      pathlib.Path(shared).write_text(
        json.dumps(
          {
            "digests": sorted(d.hex() for d in targets.digests),
            "prefixes": sorted(targets.prefixes),
          }
        )
      )
    todo = {
      task.name: (task, str(tokenizer_source), str(out), dtype, shared if task.trains else None)
      for task in tasks
      if records[task.name] is None
    }
    with tqdm(
      total=sum(sizes.values()),
      initial=sum(sizes.values()) - sum(sizes[name] for name in todo),
      unit="B",
      unit_scale=True,
      desc=f"tokenizing ({tokenizer.kind})",
      disable=not show_progress,
      dynamic_ncols=True,
    ) as progress:
      for name, record in _each(pool, run_task, todo):
        records[name] = record
        progress.update(sizes[name])

  (out / TARGETS).unlink(missing_ok=True)
  manifest = _manifest(
    spec, tokenizer, identity, tasks, records, sources, time.perf_counter() - start
  )
  manifest["contamination"] = _contamination(
    manifest["sets"], evaluated, tasks, records, digest, decontaminate
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
      entry["parts"].append(
        {field: output[field] for field in ("file", "tokens", "sha256", "docs_size", "docs_sha256")}
      )
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


def _contamination(sets, evaluated, tasks, records, targets, decontaminate) -> dict:
  """The manifest's ``contamination``: per held-out and validation set, its documents
  that training also holds and the training sets that hold them; per training set, its
  documents that match one, and how many were removed."""
  found: dict[bytes, set[str]] = {}
  train: dict[str, dict] = {}
  for task in tasks:
    entry = records[task.name].get("contamination")
    if entry is None:
      continue
    counts = train.setdefault(entry["set"], {"documents": 0, "removed": 0})
    counts["documents"] += entry["documents"]
    counts["removed"] += entry["removed"]
    for digest in entry["matched"]:
      found.setdefault(bytes.fromhex(digest), set()).add(entry["set"])
  report = {}
  for key, entry in sets.items():
    if key.startswith(TRAIN + "/"):
      continue
    counter = evaluated.get(key, {})
    hit = [digest for digest in counter if digest in found]
    holders = set().union(*(found[digest] for digest in hit))
    report[key] = {
      "documents": entry["documents"],
      "contaminated": sum(counter[digest] for digest in hit),
      "found_in": [name for name in train if name in holders],
    }
  return {
    "match": NORMALISATION,
    "decontaminate": decontaminate,
    "targets": targets,
    "sets": report,
    "train": train,
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
  parser.add_argument(
    "--decontaminate",
    action="store_true",
    help="drop training documents that a held-out or validation set also holds "
    "(exact match after whitespace normalisation)",
  )
  parser.add_argument("--no-progress", action="store_true")
  args = parser.parse_args(argv)
  if args.workers is not None and args.workers < 1:
    print(f"error: --workers must be >= 1, got {args.workers}.", file=sys.stderr)
    return 2
  try:
    spec = spec_lib.load_spec(args.spec)
    cache = prepare(
      spec, args.tokenizer, args.out, args.workers, not args.no_progress, args.decontaminate
    )
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
  print_contamination(cache.manifest)
  return 0


def print_contamination(manifest: dict) -> None:
  """The contamination report, set by set (a cache prepared before it has none)."""
  report = manifest.get("contamination")
  if report is None:
    return
  print(f"contamination: documents that training also holds ({report['match']})")
  for key, entry in report["sets"].items():
    where = f" (in {', '.join(entry['found_in'])})" if entry["found_in"] else ""
    print(f"{key:<28} {entry['contaminated']:>9,} of {entry['documents']:,} contaminated{where}")
  removed = sum(entry["removed"] for entry in report["train"].values())
  matching = sum(entry["documents"] for entry in report["train"].values())
  if report["decontaminate"]:
    print(f"--decontaminate removed {removed:,} training documents")
  elif matching:
    print(
      f"{matching:,} training documents match them; rerun with --decontaminate into a new "
      "--out to drop them"
    )


if __name__ == "__main__":
  sys.exit(main())
