"""The run's TensorBoard events, read back record by record from the file's TFRecord framing."""

import importlib.util
import struct
import subprocess
import sys

import pytest
from tensorboardX.proto import event_pb2

from train.metrics_log import MetricsLog


def read_events(folder):
  (path,) = folder.glob("events.out.tfevents.*")
  data, events, offset = path.read_bytes(), [], 0
  while offset < len(data):
    (length,) = struct.unpack("<Q", data[offset : offset + 8])
    start = offset + 12  # the length, then its 4-byte checksum
    events.append(event_pb2.Event.FromString(data[start : start + length]))
    offset = start + length + 4  # the record, then its checksum
  return events


def test_scalars_reach_the_event_file_and_jsonl(tmp_path):
  log = MetricsLog(tmp_path, start_step=0, primary=True)
  log.write({"step": 1, "train_loss": 2.5, "skipped": 0, "finite": True})
  log.write({"step": 2, "train_loss": float("nan")})
  log.close()
  scalars = [
    (event.step, value.tag, value.simple_value)
    for event in read_events(tmp_path / "tensorboard")
    for value in event.summary.value
  ]
  assert len(scalars) == 3 and scalars[:2] == [(1, "train_loss", 2.5), (1, "skipped", 0.0)]
  assert scalars[2][:2] == (2, "train_loss") and scalars[2][2] != scalars[2][2]  # NaN
  assert (tmp_path / "metrics.jsonl").read_text().splitlines()[1] == (
    '{"step": 2, "train_loss": null}'
  )


def test_the_event_writer_leaves_torch_unimported_and_importable(tmp_path):
  if importlib.util.find_spec("torch") is None:  # Python 3.12 here has no CPU wheel
    pytest.skip("PyTorch is not installed: there is no import to keep out")
  code = (
    "import pathlib, sys\n"
    "from train.metrics_log import MetricsLog\n"
    f"MetricsLog(pathlib.Path({str(tmp_path)!r}), 0, True).close()\n"
    "assert 'torch' not in sys.modules\n"
    "import torch\n"
    "assert torch.ones(2).sum().item() == 2.0\n"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
