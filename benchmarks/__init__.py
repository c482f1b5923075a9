"""Reproducible measurements; each module is a command (``python -m benchmarks.<name>``)."""

import json
import pathlib


def write_report(path: pathlib.Path, result: dict) -> None:
  """Writes ``result`` as indented JSON to ``path`` and prints it on one line, the last
  line of a benchmark's output, which the tests and RESULTS.md read."""
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(result, indent=1) + "\n")
  print(json.dumps(result))
