"""A lost process ends every other process of the run, within a bound and with one line.

A multi-process run is lost when any one of its processes is: killed (SIGKILL, out of
memory), on a node that is gone, or alive but silent (stopped, hung). JAX's coordination
service notices through heartbeats and then aborts each survivor from C++, with a stack
dump: after ``heartbeat_timeout_seconds`` for a silent process, at once when the lost one
is the coordinator (process 0, which hosts the service); a survivor inside a collective
first gets a Python traceback from gloo or NCCL. No Python code runs in a process that
JAX aborts (its fatal-error callback is not callable from Python), so each process of a
multi-process run is a small supervisor around a worker child that trains: the
supervisor passes the worker's output through, and when the worker ends on a lost peer it
drops the dump and prints

  error: process 1 of 2 was lost (...); process 0 stops. Relaunch every process with ...

then exits with :data:`PEER_LOST_EXIT`. ``--peer-timeout`` is JAX's heartbeat timeout,
so every survivor stops within that many seconds of the loss (plus the few seconds a
heartbeat takes); a worker whose collective fails waits that long for JAX to name the
lost peer, then stops naming none. The supervisor forwards SIGTERM and SIGINT to its
worker, and the worker dies with its supervisor. orbax renames a checkpoint into place only
once every process has written it, so a save cut off by the loss is never the latest.
"""

import ctypes
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading

PEER_LOST_EXIT = 3
DEFAULT_PEER_TIMEOUT = 45
WORKER_VARIABLE = "NEXUS_PEER_WORKER"

# What JAX prints when it aborts a process over another one (glog lines, the C++ dump,
# gloo's collective errors); from the first of them on, the worker's output is dropped.
LOSS_MARKERS = re.compile(
  r"coordination service|coordination_service|heartbeat|Terminating process because|"
  r"Gloo .*failed|Check failure stack trace|terminate called after",
  re.IGNORECASE,
)


def complete_checkpoints(directory: pathlib.Path) -> list[int]:
  """Steps of the checkpoints orbax has renamed into place (in-flight saves are in
  temporary folders with a suffix)."""
  if not directory.is_dir():
    return []
  return sorted(int(path.name) for path in directory.iterdir() if path.name.isdigit())


def resume_hint(checkpoints: pathlib.Path) -> str:
  steps = complete_checkpoints(checkpoints)
  if not steps:
    return "No checkpoint is complete: relaunch every process without --resume."
  return (
    f"Relaunch every process with --resume to continue from checkpoint {steps[-1]} "
    f"in {checkpoints}."
  )


def lost_process(text: str, process_index: int | None) -> int | None:
  """The process JAX's messages name as lost: a task that stopped sending heartbeats, or
  the coordinator when the service itself is unreachable.

  Example:
    >>> lost_process("UNAVAILABLE: Task 1 heartbeat timeout. This indicates ...", 0)
    1
    >>> lost_process("tasks are unhealthy (stopped sending heartbeats):\\n2\\nThe tasks", 0)
    2
    >>> lost_process("Failed to send RPC to coordination service. Either the leader ...", 1)
    0
    >>> lost_process("DEADLINE_EXCEEDED RPC: /xla.coordination.CoordinationService/Heartbeat", 1)
    0
  """
  named = re.findall(r"\bTask (\d+)\b", text)
  named += re.findall(r"stopped sending heartbeats\):\s*((?:\d+[\s,]*)+)", text)
  tasks = [int(t) for group in named for t in re.findall(r"\d+", group)]
  tasks = [task for task in tasks if task != process_index]
  if tasks:
    return tasks[0]
  # Its own heartbeats to the service time out when the coordinator is silent.
  if re.search(r"leader|coordination service|CoordinationService/Heartbeat", text, re.IGNORECASE):
    return None if process_index == 0 else 0
  return None


def lost_line(
  lost: int | None, process_index: int | None, process_count: int | None, cause: str
) -> str:
  """The one line a survivor prints (indices unknown under ``--distributed``: None)."""
  of = f" of {process_count}" if process_count else ""
  if lost is None:
    who = "a process of the run"
  elif lost == 0:
    who = f"the coordinator (process 0{of})"
  else:
    who = f"process {lost}{of}"
  me = "this process" if process_index is None else f"process {process_index}"
  return f"error: {who} was lost ({cause}); {me} stops."


class OutputFilter:
  """Passes a worker's stderr through, holding back each Python traceback until its last
  line shows whether it is a lost peer's; drops everything from the first sign of a loss,
  keeping its text to name the lost process."""

  def __init__(self, stream):
    self.stream = stream
    self.pending = b""
    self.traceback: list[bytes] = []
    self.dropped: list[str] = []
    self.said_error = False

  def feed(self, chunk: bytes) -> None:
    self.pending += chunk
    while True:
      ends = [i for i in (self.pending.find(b"\n"), self.pending.find(b"\r")) if i >= 0]
      if not ends:
        return
      cut = min(ends) + 1
      line, self.pending = self.pending[:cut], self.pending[cut:]
      self._line(line)

  def close(self) -> None:
    if self.pending:
      self._line(self.pending)
    if self.traceback:
      self.dropped.append(b"".join(self.traceback).decode(errors="replace"))

  def release(self) -> None:
    """Writes what was held back: the worker did not end on a lost peer after all."""
    self._write("".join(self.dropped).encode())
    self.dropped = []

  def _line(self, line: bytes) -> None:
    text = line.decode(errors="replace")
    if self.dropped:
      self.dropped.append(text)
      return
    if self.traceback or text.startswith("Traceback (most recent call last)"):
      self.traceback.append(line)
      if text[:1].isspace() or text.startswith("Traceback") or not text.strip():
        return
      held, self.traceback = b"".join(self.traceback), []
      if LOSS_MARKERS.search(text):
        self.dropped.append(held.decode(errors="replace"))
      else:
        self._write(held)
      return
    if LOSS_MARKERS.search(text):
      self.dropped.append(text)
      return
    self.said_error |= text.startswith("error: ")
    self._write(line)

  def _write(self, data: bytes) -> None:
    self.stream.write(data)
    self.stream.flush()


def _die_with_parent() -> None:
  """In the worker, before exec: SIGKILL when the supervisor dies (Linux's prctl)."""
  try:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass


def supervise(
  module: str,
  argv: list[str],
  process_index: int | None,
  process_count: int | None,
  out: pathlib.Path,
) -> int:
  """Runs ``python -m module argv`` as this process's worker and returns its exit status,
  or :data:`PEER_LOST_EXIT` with one line when it ended on a lost peer."""
  worker = subprocess.Popen(
    [sys.executable, "-m", module, *argv],
    env={**os.environ, WORKER_VARIABLE: "1"},
    stderr=subprocess.PIPE,
    preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
  )

  def forward(signum, frame):
    del frame
    if worker.poll() is None:
      worker.send_signal(signum)

  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, forward)
  output = OutputFilter(sys.stderr.buffer)
  assert worker.stderr is not None
  while chunk := os.read(worker.stderr.fileno(), 65536):
    output.feed(chunk)
  output.close()
  status = worker.wait()
  if not output.dropped or status == 0 or output.said_error:
    output.release()
    return status if status >= 0 else 128 - status
  text = "".join(output.dropped)
  lost = lost_process(text, process_index)
  cause = "it stopped answering JAX's heartbeats: killed, out of memory, stopped or its node gone"
  print(
    f"{lost_line(lost, process_index, process_count, cause)} {resume_hint(out / 'checkpoints')}",
    file=sys.stderr,
    flush=True,
  )
  return PEER_LOST_EXIT


def is_worker() -> bool:
  return os.environ.get(WORKER_VARIABLE) == "1"


def stop_after_failed_collective(
  error: BaseException, timeout: int, process_index: int, process_count: int, out: pathlib.Path
) -> None:
  """In a worker whose collective raised: JAX names the lost peer within ``timeout`` (and
  aborts the worker, which its supervisor reports); if it does not, stop naming none."""
  threading.Event().wait(timeout + 10)
  cause = f"a collective failed: {str(error).splitlines()[0][:160]}"
  print(
    f"{lost_line(None, process_index, process_count, cause)} {resume_hint(out / 'checkpoints')}",
    file=sys.stderr,
    flush=True,
  )
  os._exit(PEER_LOST_EXIT)
