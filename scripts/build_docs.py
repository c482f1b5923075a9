"""Builds the documentation site and runs its doctests: ``python -m scripts.build_docs``.

Two Sphinx builders share one doctree folder, so the pages are read once: ``html`` into
``docs/_build/html`` and ``doctest``, which runs every ``>>>`` Example of the API pages'
docstrings. Warnings are errors (``-W --keep-going``), and the API coverage check
(``docs/ext/coverage_check.py``) fails the build when a public name has no entry.
``bash scripts/docs.sh`` creates the environment first.
"""

import argparse
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def sphinx_build(builder: str, source: pathlib.Path, out: pathlib.Path) -> int:
  command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", builder]
  command += ["-d", str(out / "doctrees"), str(source), str(out / builder)]
  return subprocess.run(command, check=False).returncode


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--source", type=pathlib.Path, default=ROOT / "docs")
  parser.add_argument("--out", type=pathlib.Path, default=ROOT / "docs" / "_build")
  parser.add_argument("--no-doctest", action="store_true", help="build the html only")
  args = parser.parse_args(argv)
  builders = ["html"] + ([] if args.no_doctest else ["doctest"])
  for builder in builders:
    status = sphinx_build(builder, args.source, args.out)
    if status:
      print(f"error: the {builder} build of {args.source} failed (status {status}); see above.")
      return status
  print(f"[docs] {args.out / 'html' / 'index.html'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
