"""Child processes pinned to disjoint shares of this process's CPU cores.

``train.compare`` trains its runs side by side this way, and the confirmatory study runs its
workers so; neither imports the other's command line.
"""

import os
import subprocess
import sys


def core_shares(count: int) -> list[list[int]]:
  """This process's CPU cores dealt round-robin into ``count`` disjoint shares."""
  cores = sorted(os.sched_getaffinity(0))
  return [cores[index::count] for index in range(count)]


def start_pinned(module: str, argv: list[str], cores: list[int], log) -> subprocess.Popen:
  """``python -m module *argv`` pinned to ``cores``, its stdout and stderr into ``log``."""
  # XLA sizes its CPU thread pool by the process's affinity, set before JAX starts.
  launcher = (
    f"import os, runpy, sys; os.sched_setaffinity(0, {cores}); "
    f"sys.argv[0] = {module!r}; runpy.run_module({module!r}, run_name='__main__')"
  )
  return subprocess.Popen(
    [sys.executable, "-c", launcher, *argv], stdout=log, stderr=subprocess.STDOUT
  )
