"""A prepared token cache on disk, read lazily: the one data path of every run.

``python -m train.data.prepare`` writes it (:mod:`train.data.prepare`):

  CACHE/manifest.json              written last: sets, counts, tokenizer, spec and hashes
  CACHE/tokenizer.json|.model      a copy of the tokenizer (none for bytes)
  CACHE/parts/<role>/<set>/<task>.bin
                                   flat token streams (uint16, or uint32 above 65,536
                                   tokens): ``doc EOD doc EOD ...``
  CACHE/parts/<role>/<set>/<task>.docs.npy
                                   per document: tokens (with its EOD) and UTF-8 bytes

The manifest records every part's tokens and the sha256 of both its files;
``python -m train.data.verify CACHE`` re-reads the parts against them (:mod:`train.data.verify`).
Opening a cache checks only that every part is there at its recorded size, so a run starts
without reading the corpus.

A set's stream is its parts in order. Training windows are cut from that stream as
``tokenizer.pack`` cuts a list of documents: window i holds tokens
``[i T, (i + 1) T]``, so consecutive windows overlap by one and every token is a
target once. Windows are read from memory-mapped parts on demand, so a run's memory
holds the loader's buffers, not the corpus.
"""

import bisect
import hashlib
import json
import pathlib

import numpy as np

from train.data.spec import DataError
from train.data.tokenizer import BYTES, Tokenizer, load_tokenizer, padded_vocab_size

MANIFEST = "manifest.json"
# Checksums and the contamination report are fields a reader may lack, not a new layout: the
# version stays, so caches prepared before them still open.
CACHE_VERSION = 1


def file_sha256(path: pathlib.Path) -> str:
  """The sha256 of a file's bytes, read in bounded chunks."""
  with open(path, "rb") as stream:
    return hashlib.file_digest(stream, "sha256").hexdigest()


def docs_file(part_file: str) -> str:
  """A part's per-document table, beside its token stream."""
  return part_file[: -len(".bin")] + ".docs.npy"


def part_problem(
  root: pathlib.Path, part: dict, itemsize: int, checksums: bool = True
) -> str | None:
  """What is wrong with a part's two files against its record (``None``: nothing).

  Sizes are checked first and always; the files are read only with ``checksums`` and when
  the record has them (caches prepared before checksums have none).
  """
  files = [(part["file"], part["tokens"] * itemsize, part.get("sha256"))]
  if "docs_size" in part:
    files.append((docs_file(part["file"]), part["docs_size"], part.get("docs_sha256")))
  for name, size, _ in files:
    path = root / name
    if not path.exists():
      return f"{path} is missing"
    if path.stat().st_size != size:
      return f"{path} has {path.stat().st_size:,} bytes where the manifest records {size:,}"
  for name, _, digest in files if checksums else ():
    if digest is not None and file_sha256(root / name) != digest:
      return f"{root / name} fails its checksum (its sha256 differs from the recorded one)"
  return None


def load_manifest(root: pathlib.Path, flag: str = "--data") -> dict:
  """The manifest of the complete cache at ``root``.

  Raises:
    DataError: when ``root`` holds no cache, one whose prepare did not finish, or one of
      another cache version.
  """
  path = pathlib.Path(root) / MANIFEST
  if not pathlib.Path(root).is_dir():
    raise DataError(
      f"{flag} {root}: no such folder; prepare one with `python -m "
      "train.data.prepare --spec SPEC --tokenizer TOK --out CACHE`."
    )
  if not path.exists():
    started = (pathlib.Path(root) / "parts").exists()
    raise DataError(
      f"{flag} {root} is "
      + (
        "an incomplete cache (its prepare did not finish); "
        "rerun the same `python -m train.data.prepare` "
        "to finish it."
        if started
        else "not a prepared cache (no manifest.json); "
        "prepare it with `python -m train.data.prepare`."
      )
    )
  try:
    manifest = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as error:
    raise DataError(
      f"{flag} {root}: manifest.json is unreadable ({error}); prepare the cache again."
    ) from None
  if manifest.get("version") != CACHE_VERSION:
    raise DataError(
      f"{flag} {root} was prepared by another version of nexus-optax (cache "
      f"version {manifest.get('version')}, this one reads {CACHE_VERSION}); "
      "prepare it again."
    )
  return manifest


class PackedWindows:
  """Windows ``[seq_len + 1]`` of a token stream held in parts, read on demand.

  A ``Sequence`` for ``grain.MapDataset.source``: ``len`` and integer indexing.

  Example:
    >>> windows = PackedWindows([np.arange(5), np.arange(5, 9)], seq_len=3)
    >>> len(windows), windows[1].tolist(), windows[-1].tolist()
    (2, [3, 4, 5, 6], [3, 4, 5, 6])
  """

  def __init__(self, parts, seq_len: int):
    self.parts = [part for part in parts if len(part)]
    self.seq_len = seq_len
    self.offsets = np.cumsum([0] + [len(part) for part in self.parts]).tolist()
    self.tokens = self.offsets[-1]
    self.count = max(0, (self.tokens - 1) // seq_len)

  def __len__(self) -> int:
    return self.count

  def read(self, start: int, stop: int) -> np.ndarray:
    """Tokens ``[start, stop)`` of the stream, as int32."""
    first = bisect.bisect_right(self.offsets, start) - 1
    pieces, position, index = [], start, first
    while position < stop:
      part, base = self.parts[index], self.offsets[index]
      take = part[position - base : min(stop, self.offsets[index + 1]) - base]
      pieces.append(take)
      position += len(take)
      index += 1
    return (
      np.concatenate(pieces).astype(np.int32) if len(pieces) > 1 else pieces[0].astype(np.int32)
    )

  def __getitem__(self, index) -> np.ndarray:
    index = int(index)
    if index < 0:
      index += self.count
    if not 0 <= index < self.count:
      raise IndexError(f"window {index} of {self.count}")
    start = index * self.seq_len
    return self.read(start, start + self.seq_len + 1)


class TokenCache:
  """A complete prepared cache: its sets, tokenizer and manifest.

  Raises:
    DataError: when ``root`` holds no cache, or one that is incomplete.
  """

  def __init__(self, root: pathlib.Path, flag: str = "--data"):
    self.root = pathlib.Path(root).absolute()
    self.manifest = load_manifest(root, flag)
    self.dtype = np.dtype(self.manifest["token_dtype"])
    for key, entry in self.manifest["sets"].items():
      for part in entry["parts"]:
        if part_problem(self.root, part, self.dtype.itemsize, checksums=False) is not None:
          raise DataError(
            f"{flag} {root} is incomplete: {part['file']} of set {key} is missing or "
            "truncated; rerun its `python -m train.data.prepare`."
          )
    self._tokenizer: Tokenizer | None = None

  # ---- what the cache holds -------------------------------------------------------

  def names(self, role: str) -> list[str]:
    """Set names of a role (``train``, ``validation``, ``heldout``), in spec order."""
    return [key.split("/", 1)[1] for key in self.manifest["sets"] if key.split("/", 1)[0] == role]

  def set_info(self, role: str, name: str) -> dict:
    key = f"{role}/{name}"
    if key not in self.manifest["sets"]:
      raise DataError(
        f"the cache {self.root} has no set {key!r}; it has {', '.join(self.manifest['sets'])}."
      )
    return self.manifest["sets"][key]

  @property
  def default_mixture(self) -> str:
    """The spec's weights as ``--mixture`` text."""
    return ",".join(
      f"{name}={domain['weight']:g}" for name, domain in self.manifest["domains"].items()
    )

  @property
  def tokenizer_info(self) -> dict:
    return self.manifest["tokenizer"]

  @property
  def vocab_size(self) -> int:
    return self.manifest["tokenizer"]["vocab_size"]

  @property
  def padded_vocab_size(self) -> int:
    return padded_vocab_size(self.vocab_size)

  @property
  def spec_hash(self) -> str:
    return self.manifest["spec_hash"]

  def identity(self) -> dict:
    """What a run records of its data: the cache, its tokenizer and its spec's hash."""
    return {
      "cache": str(self.root),
      "tokenizer": self.tokenizer_info,
      "spec_hash": self.spec_hash,
      "vocab_size": self.padded_vocab_size,
    }

  @property
  def tokenizer(self) -> Tokenizer:
    if self._tokenizer is None:
      info = self.tokenizer_info
      self._tokenizer = load_tokenizer(BYTES if info["kind"] == BYTES else self.root / info["file"])
    return self._tokenizer

  # ---- reading -------------------------------------------------------------------

  def parts(self, role: str, name: str) -> list[np.ndarray]:
    """Memory maps of a set's parts, in stream order."""
    return [
      np.memmap(self.root / part["file"], dtype=self.dtype, mode="r")
      for part in self.set_info(role, name)["parts"]
      if part["tokens"]
    ]

  def windows(self, role: str, name: str, seq_len: int) -> PackedWindows:
    return PackedWindows(self.parts(role, name), seq_len)

  def documents(self, role: str, name: str) -> np.ndarray:
    """Per document of a set: ``[tokens (EOD included), UTF-8 bytes]``, int64 [D, 2]."""
    tables = [
      np.load(self.root / docs_file(part["file"])) for part in self.set_info(role, name)["parts"]
    ]
    return np.concatenate(tables) if tables else np.zeros((0, 2), np.int64)

  def decode_documents(self, role: str, name: str) -> list[str]:
    """A set's documents decoded back to text (for checks and small sets)."""
    stream = np.concatenate(self.parts(role, name)).astype(np.int64)
    ends = np.flatnonzero(stream == self.tokenizer.eod_id)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [self.tokenizer.decode(stream[a:b]) for a, b in zip(starts, ends)]
