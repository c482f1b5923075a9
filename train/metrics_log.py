"""A run's metrics: ``metrics.jsonl`` and TensorBoard events as it trains, and the final
summary as a text table."""

import json
import math
import pathlib
import sys


class MetricsLog:
  """``metrics.jsonl`` and TensorBoard, written by process 0; a resume drops later lines."""

  def __init__(self, out: pathlib.Path, start_step: int, primary: bool):
    self.primary = primary
    self.path = out / "metrics.jsonl"
    self.writer = None
    if not primary:
      return
    if start_step and self.path.exists():
      kept = [
        line
        for line in self.path.read_text().splitlines()
        if line and json.loads(line)["step"] <= start_step
      ]
      self.path.write_text("".join(line + "\n" for line in kept))
    elif not start_step:
      self.path.write_text("")
    self.writer = _summary_writer(out / "tensorboard", purge_step=start_step + 1)

  def write(self, record: dict) -> None:
    if not self.primary:
      return
    clean = {
      k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in record.items()
    }
    with self.path.open("a") as stream:
      stream.write(json.dumps(clean) + "\n")
    for key, value in record.items():
      if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
        self.writer.add_scalar(key, value, record["step"])

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()


def _summary_writer(folder: pathlib.Path, purge_step: int):
  """tensorboardX's writer, imported without torch where torch is not loaded already.

  tensorboardX imports torch whenever it is installed, only to accept torch tensors,
  which a run never logs; that import is over a second of every run's start. Imported lazily
  because only process 0 writes events."""
  shielded = "torch" not in sys.modules
  if shielded:
    sys.modules["torch"] = None  # `import torch` then raises ImportError, which it catches
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
  finally:
    if shielded:
      del sys.modules["torch"]
  return SummaryWriter(str(folder), purge_step=purge_step)


def summary_table(summary: dict) -> str:
  """The final metrics as an aligned two-column text table."""
  rows = [
    (key, f"{value:.4f}" if isinstance(value, float) else str(value))
    for key, value in summary.items()
    if not isinstance(value, (list, dict))
  ]
  width = max(len(key) for key, _ in rows)
  rule = "-" * (width + 14)
  return "\n".join([rule, *(f"{key:<{width}}  {value:>12}" for key, value in rows), rule])
