"""The data spec: a YAML file that names a corpus's domains, their files and weights.

  domains:
    code:  {train: ["/data/code/*.jsonl.gz"], validation: ["/data/code-val/*.jsonl"],
            weight: 0.3, text_key: content}
    math:  {train: ["/data/math/*.parquet"], weight: 0.3}
    prose: {train: ["/data/books/**/*.txt"], weight: 0.4}
  heldout:
    gsm: ["/data/gsm/test.jsonl"]          # or {files: [...], text_key: question}
  validation_fraction: 0.01                # optional; per domain too
  seed: 0                                  # optional: seed of the held-out documents

Patterns are globs (``**`` recurses); relative ones resolve against the spec's folder.
A domain without ``validation`` holds out the documents whose seeded content hash falls
below ``validation_fraction``: the choice depends on the text alone, so the same
documents split the same way whatever their files, format or order, and a document
repeated in training never lands on both sides.
"""

import dataclasses
import glob
import hashlib
import json
import math
import pathlib

import yaml

DOMAIN_KEYS = ("train", "validation", "weight", "text_key", "validation_fraction")
HELDOUT_KEYS = ("files", "text_key")
TOP_KEYS = ("domains", "heldout", "validation_fraction", "seed")
DEFAULT_TEXT_KEY = "text"
DEFAULT_VALIDATION_FRACTION = 0.01
SUFFIXES = (".txt", ".jsonl", ".parquet")
COMPRESSIONS = ("", ".gz", ".zst")


class DataError(ValueError):
  """Bad data input (spec, files, tokenizer or cache); the message names the fix."""


@dataclasses.dataclass(frozen=True)
class FileSet:
  """The files of one set and the field that holds their text."""

  patterns: tuple[str, ...]
  text_key: str = DEFAULT_TEXT_KEY


@dataclasses.dataclass(frozen=True)
class Domain:
  name: str
  train: FileSet
  validation: FileSet | None
  weight: float
  validation_fraction: float


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """A parsed spec. ``root`` is the folder that relative patterns resolve against."""

  domains: tuple[Domain, ...]
  heldout: dict[str, FileSet]
  seed: int
  root: pathlib.Path
  text: str  # the spec as written, canonicalised: what its hash covers

  @property
  def hash(self) -> str:
    return hashlib.sha256(self.text.encode()).hexdigest()

  @property
  def weights(self) -> dict[str, float]:
    return {domain.name: domain.weight for domain in self.domains}

  def mixture(self) -> str:
    """The spec's weights as ``train.pretrain``'s ``--mixture`` text."""
    return ",".join(f"{name}={weight:g}" for name, weight in self.weights.items())


def file_format(path: str) -> tuple[str, str]:
  """(format, compression) from a file name: ``("jsonl", ".gz")`` for ``a.jsonl.gz``.

  Example:
    >>> file_format("books/a.txt.zst"), file_format("x.parquet")
    (('txt', '.zst'), ('parquet', ''))
  """
  name = path.lower()
  for compression in COMPRESSIONS[1:]:
    if name.endswith(compression):
      name, found = name[: -len(compression)], compression
      break
  else:
    found = ""
  for suffix in SUFFIXES:
    if name.endswith(suffix):
      return suffix[1:], found
  raise DataError(
    f"{path}: unknown file type; use .txt, .jsonl or .parquet, optionally followed by .gz or .zst."
  )


def expand(file_set: FileSet, root: pathlib.Path, where: str) -> list[pathlib.Path]:
  """The files of a set, each pattern's matches sorted, in pattern order, without repeats."""
  files: dict[pathlib.Path, None] = {}
  for pattern in file_set.patterns:
    absolute = pattern if pathlib.Path(pattern).is_absolute() else str(root / pattern)
    matches = sorted(
      pathlib.Path(p) for p in glob.glob(absolute, recursive=True) if pathlib.Path(p).is_file()
    )
    if not matches:
      raise DataError(
        f"{where}: pattern {pattern!r} matches no file (looked for {absolute}); "
        "fix the path or the glob."
      )
    for match in matches:
      file_format(str(match))
      files[match] = None
  return list(files)


def _fraction(value, where: str) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
    raise DataError(f"{where}: validation_fraction must be a number in (0, 1), got {value!r}.")
  return float(value)


def _patterns(value, where: str) -> tuple[str, ...]:
  if isinstance(value, str):
    value = [value]
  if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
    raise DataError(
      f'{where} must be a list of file patterns, e.g. ["data/*.jsonl"], got {value!r}.'
    )
  return tuple(value)


def _unknown(keys, allowed, where: str) -> None:
  unknown = [key for key in keys if key not in allowed]
  if unknown:
    raise DataError(f"{where}: unknown key {unknown[0]!r}; allowed keys are {', '.join(allowed)}.")


def _text_key(value, where: str) -> str:
  if not isinstance(value, str) or not value:
    raise DataError(f"{where}: text_key must be a field name, got {value!r}.")
  return value


def parse_spec(text: str, root: pathlib.Path, source: str = "the data spec") -> DataSpec:
  """Parses and checks a spec's YAML text; ``root`` resolves its relative patterns."""
  try:
    raw = yaml.safe_load(text)
  except yaml.YAMLError as error:
    mark = getattr(error, "problem_mark", None)
    line = f" at line {mark.line + 1}" if mark is not None else ""
    raise DataError(
      f"{source} is not valid YAML{line} ({getattr(error, 'problem', error)}); fix its syntax."
    ) from None
  if not isinstance(raw, dict):
    raise DataError(f"{source} must be a YAML mapping with a 'domains' key.")
  _unknown(raw, TOP_KEYS, source)
  seed = raw.get("seed", 0)
  if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
    raise DataError(f"{source}: seed must be an integer >= 0, got {seed!r}.")
  default_fraction = _fraction(raw.get("validation_fraction", DEFAULT_VALIDATION_FRACTION), source)
  if not isinstance(raw.get("domains"), dict) or not raw["domains"]:
    raise DataError(
      f"{source} needs 'domains:', a mapping of at least one domain name to "
      "{train: [...], weight: ...}."
    )
  domains = []
  for name, entry in raw["domains"].items():
    where = f"{source}: domain {name!r}"
    if not isinstance(entry, dict):
      raise DataError(f'{where} must be a mapping like {{train: ["files/*.jsonl"], weight: 1}}.')
    _unknown(entry, DOMAIN_KEYS, where)
    if "train" not in entry:
      raise DataError(f"{where} has no 'train' file list; add train: [\"files/*.jsonl\"].")
    weight = entry.get("weight", 1.0)
    if (
      isinstance(weight, bool)
      or not isinstance(weight, (int, float))
      or not (math.isfinite(weight) and weight > 0)
    ):
      raise DataError(
        f"{where}: weight must be a finite number > 0, got {weight!r}; leave the "
        "domain out instead of giving it weight 0."
      )
    text_key = _text_key(entry.get("text_key", DEFAULT_TEXT_KEY), where)
    validation = (
      FileSet(_patterns(entry["validation"], f"{where}: validation"), text_key)
      if entry.get("validation") is not None
      else None
    )
    domains.append(
      Domain(
        str(name),
        FileSet(_patterns(entry["train"], f"{where}: train"), text_key),
        validation,
        float(weight),
        _fraction(entry.get("validation_fraction", default_fraction), where),
      )
    )
  heldout = {}
  for name, entry in (raw.get("heldout") or {}).items():
    where = f"{source}: heldout {name!r}"
    if isinstance(entry, dict):
      _unknown(entry, HELDOUT_KEYS, where)
      heldout[str(name)] = FileSet(
        _patterns(entry.get("files"), f"{where}: files"),
        _text_key(entry.get("text_key", DEFAULT_TEXT_KEY), where),
      )
    else:
      heldout[str(name)] = FileSet(_patterns(entry, where))
  canonical = json.dumps(
    {
      "domains": [dataclasses.asdict(d) for d in domains],
      "heldout": {k: dataclasses.asdict(v) for k, v in heldout.items()},
      "seed": seed,
    },
    sort_keys=True,
  )
  return DataSpec(tuple(domains), heldout, seed, pathlib.Path(root).absolute(), canonical)


def load_spec(path: pathlib.Path) -> DataSpec:
  """The spec in a YAML file; relative patterns resolve against the file's folder."""
  path = pathlib.Path(path)
  try:
    text = path.read_text(encoding="utf-8")
  except (OSError, UnicodeDecodeError) as error:
    raise DataError(
      f"--spec {path} cannot be read ({getattr(error, 'strerror', None) or error}); "
      "point at a YAML data spec."
    ) from None
  return parse_spec(text, path.absolute().parent, source=f"spec {path}")


def is_validation(document: str, seed: int, fraction: float) -> bool:
  """Whether a training document is held out for validation: its seeded hash < fraction.

  Example:
    >>> [is_validation(f"doc {i}", seed=0, fraction=0.5) for i in range(6)]
    [False, True, False, False, False, True]
  """
  digest = hashlib.blake2b(
    document.encode("utf-8"), digest_size=8, key=seed.to_bytes(8, "little")
  ).digest()
  return int.from_bytes(digest, "little") / 2**64 < fraction
