"""Check a prepared token cache byte for byte against its manifest.

  python -m train.data.verify CACHE

Re-reads every part (each ``.bin`` token stream and ``.docs.npy`` table under
``CACHE/parts/``) and the tokenizer copy, a chunk at a time, and compares each file's size
and sha256 with what ``python -m train.data.prepare`` recorded in ``manifest.json``.

Exit status 0: every file matches; one line says how many parts and bytes were read, and
how fast. Status 2: one line ``error: ...`` names the first file that is missing, has
another size or fails its checksum, and the fix (rerun the cache's prepare, which redoes
the parts that fail). A cache prepared before checksums were recorded has only its sizes
checked: status 0, and one line saying there are no checksums and how to add them.
Training itself checks only that every part is there at its size, so a run starts without
reading the corpus; this command is the full read.
"""

import argparse
import pathlib
import sys
import time

import numpy as np

from train.data.cache import docs_file, file_sha256, load_manifest, part_problem
from train.data.spec import DataError

RERUN = (
  "rerun its `python -m train.data.prepare` (the same --spec, --tokenizer and --out), "
  "which redoes the parts that fail"
)


def verify(root: pathlib.Path) -> dict:
  """Checks the cache at ``root``; returns what was checked.

  Returns:
    ``{"parts", "files", "bytes", "seconds", "checksums"}``; ``checksums`` is False for a
    cache prepared before they were recorded (then only sizes were checked).

  Raises:
    DataError: naming the first file that is missing, has another size or fails its
      checksum.
  """
  root = pathlib.Path(root).absolute()
  start = time.perf_counter()
  manifest = load_manifest(root, "cache")
  itemsize = np.dtype(manifest["token_dtype"]).itemsize
  parts = [(key, part) for key, entry in manifest["sets"].items() for part in entry["parts"]]
  checksums = any("sha256" in part for _, part in parts)
  files = size = 0
  for key, part in parts:
    problem = part_problem(root, part, itemsize)
    if problem is not None:
      raise DataError(f"cache {root}, set {key}: {problem}; {RERUN}.")
    names = [part["file"]] + ([docs_file(part["file"])] if "docs_size" in part else [])
    files += len(names)
    size += sum((root / name).stat().st_size for name in names)
  tokenizer = manifest["tokenizer"]
  if checksums and tokenizer.get("file"):
    path = root / tokenizer["file"]
    if not path.exists() or file_sha256(path) != tokenizer["hash"]:
      raise DataError(
        f"cache {root}: its tokenizer copy {path} is missing or fails its checksum; {RERUN}."
      )
    files += 1
    size += path.stat().st_size
  return {
    "parts": len(parts),
    "files": files,
    "bytes": size,
    "seconds": time.perf_counter() - start,
    "checksums": checksums,
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m train.data.verify", description=__doc__.split("\n\n")[0]
  )
  parser.add_argument("cache", type=pathlib.Path, help="a folder written by train.data.prepare")
  args = parser.parse_args(argv)
  try:
    result = verify(args.cache)
  except DataError as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  root = args.cache.absolute()
  if not result["checksums"]:
    print(
      f"cache {root}: its {result['parts']} parts are present at their recorded sizes, but it "
      "was prepared before checksums were recorded, so there are none to check; to add them, "
      "rerun its `python -m train.data.prepare` (the same --spec, --tokenizer and --out)."
    )
    return 0
  rate = result["bytes"] / max(result["seconds"], 1e-9) / 1e6
  print(
    f"cache {root}: {result['parts']} parts ({result['files']} files, {result['bytes']:,} "
    f"bytes) match their sizes and sha256 in manifest.json; read in "
    f"{result['seconds']:.2f} s ({rate:,.0f} MB/s)."
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
