"""Shared fixtures: a multi-source softmax regression with hand-written NumPy math, and a
small built corpus for the data and training tests."""

import importlib.metadata
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import filelock
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train.data import TokenCache, load_spec
from train.data import corpus as corpus_lib
from train.data.corpus import SPEC_FILE
from train.data.prepare import prepare

_CACHE_DIR = pytest.StashKey[str]()
# The controller's compilation cache, inherited by its pytest-xdist workers through the
# environment: every worker reads and writes the one cache.
_SHARED_CACHE_ENV = "NEXUS_TEST_XLA_CACHE_DIR"
# scripts/test.sh runs the suite in two passes: ``parallel`` (pytest-xdist, one worker per
# core) deselects the tests marked ``serial``; ``serial`` runs only those, with every core.
PASSES = ("all", "parallel", "serial")


# XLA:CPU's code generation is most of a small test's time. The tests compile with LLVM at
# opt level 0 and, on jaxlib 0.10, with its older loop emitters in place of the MLIR fusion
# emitters (the tiny preset's training step then compiles in 1.1 s, not 5.1 s, on one core;
# jaxlib 0.11 has only the new emitters and refuses the flag). Both choices are code
# generation only: the HLO passes, which decide what this code controls (fusions,
# shardings, buffers), run as before, and every test holds the results to an independent
# reference or to another program compiled the same way. NEXUS_TEST_XLA_OPT_LEVEL=2 tests
# the code as users compile it, with neither.
TEST_OPT_LEVEL = os.environ.get("NEXUS_TEST_XLA_OPT_LEVEL", "0")
TEST_XLA_FLAGS = f"--xla_backend_optimization_level={TEST_OPT_LEVEL}"
if TEST_OPT_LEVEL == "0" and int(importlib.metadata.version("jaxlib").split(".")[1]) < 11:
  TEST_XLA_FLAGS += " --xla_cpu_use_fusion_emitters=false"


def xla_flags(devices: int | None = None) -> str:
  """The session's XLA_FLAGS, with ``devices`` host CPU devices forced when given."""
  forced = f" --xla_force_host_platform_device_count={devices}" if devices else ""
  return os.environ.get("XLA_FLAGS", "") + forced


def pytest_addoption(parser):
  parser.addoption(
    "--pass",
    dest="nexus_pass",
    choices=PASSES,
    default="all",
    help="parallel: all but the tests marked serial; serial: only those (scripts/test.sh)",
  )


def xdist_worker_index() -> int | None:
  """This process's pytest-xdist worker number (gw3 is 3), None outside a worker."""
  worker = os.environ.get("PYTEST_XDIST_WORKER")
  return int(worker.removeprefix("gw")) if worker else None


def pin_worker_to_one_core(index: int) -> None:
  """Pins xdist worker ``index`` to one CPU core of this process's share.

  XLA:CPU sizes its thread pool by the process's affinity when the backend starts (after
  this), so each worker runs one XLA thread on its own core instead of every worker
  spreading a full-size pool over all of them; subprocesses a test starts inherit the core.
  """
  cores = sorted(os.sched_getaffinity(0))
  os.sched_setaffinity(0, {cores[index % len(cores)]})


def pytest_configure(config):
  """The session's XLA flags and one persistent compilation cache, for the tests, every
  pytest-xdist worker and every subprocess they start.

  Most tests build the same few steps (the tiny preset's, the CLI's) in fresh closures or
  fresh processes; XLA's cache keys on the compiled program, so each is compiled once.
  The cache starts empty, so a run measures its own compiles and cannot see a stale one.
  Workers share the controller's cache: its size bound makes JAX lock the directory
  (``filelock``) around every read and write, so concurrent workers cannot tear an entry.
  """
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()
  worker = xdist_worker_index()
  if worker is None:
    cache = tempfile.mkdtemp(prefix="nexus-optax-xla-cache-")
    config.stash[_CACHE_DIR] = cache
    os.environ[_SHARED_CACHE_ENV] = cache
  else:
    cache = os.environ[_SHARED_CACHE_ENV]
    pin_worker_to_one_core(worker)
  settings = {
    "jax_compilation_cache_dir": cache,
    "jax_persistent_cache_min_compile_time_secs": 0,
    "jax_persistent_cache_min_entry_size_bytes": 0,
    # Bounded, JAX locks the cache directory: concurrent test processes write one entry.
    "jax_compilation_cache_max_size": 4 << 30,
  }
  for name, value in settings.items():
    os.environ[name.upper()] = str(value)
    jax.config.update(name, value)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
  """The pass's tests; under ``--dist loadgroup``, one worker for each module's tests that
  share a module-scoped fixture (a training run, an 8-device subprocess), so that it is
  built once rather than once per worker."""
  for item in items if config.getoption("dist", "no") == "loadgroup" else ():
    definitions = getattr(item, "_fixtureinfo", None)
    definitions = definitions.name2fixturedefs.values() if definitions else ()
    if any(defs[-1].scope == "module" for defs in definitions):
      item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
  chosen = config.getoption("nexus_pass")
  if chosen == "all":
    return
  keep = lambda item: (item.get_closest_marker("serial") is not None) == (chosen == "serial")
  config.hook.pytest_deselected(items=[item for item in items if not keep(item)])
  items[:] = [item for item in items if keep(item)]


def pytest_unconfigure(config):
  shutil.rmtree(config.stash.get(_CACHE_DIR, ""), ignore_errors=True)


def built_once(tmp_path_factory, name: str, build) -> pathlib.Path:
  """``build(directory)`` run once per test session however many xdist workers share it:
  the first to arrive builds under a file lock; the others wait, then reuse the folder."""
  root = tmp_path_factory.getbasetemp()
  if xdist_worker_index() is not None:
    root = root.parent  # the session's folder, above each worker's own
  directory = root / "built-once" / name
  directory.parent.mkdir(parents=True, exist_ok=True)
  with filelock.FileLock(f"{directory}.lock"):
    done = directory / ".built"
    if not done.exists():
      shutil.rmtree(directory, ignore_errors=True)
      directory.mkdir()
      build(directory)
      done.touch()
  return directory


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def run_on_cpu_devices(script: str, devices: int = 8, timeout: int = 300) -> dict:
  """Runs ``script`` in a fresh Python that sees ``devices`` CPU devices; its last line, as JSON."""
  env = dict(
    os.environ,
    XLA_FLAGS=xla_flags(devices),
    JAX_PLATFORMS="cpu",
  )
  out = subprocess.run(
    [sys.executable, "-c", script],
    capture_output=True,
    text=True,
    env=env,
    timeout=timeout,
    check=False,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def numpy_global_norm(tree: dict) -> float:
  """One L2 norm over every array of a dict, in NumPy float64."""
  return float(np.sqrt(sum(np.sum(np.square(v)) for v in tree.values())))


class SoftmaxRegression:
  """K sources of softmax regression; the loss of source i is mean cross-entropy.

  Gradients are written out by hand in NumPy float64:
    P = softmax(X W + b),  dL/dW = X^T (P - Y) / n,  dL/db = mean_n (P - Y).
  """

  def __init__(self, num_sources=3, n=16, d=5, c=4, seed=0):
    rng = np.random.default_rng(seed)
    self.xs = []
    self.ys = []
    for _ in range(num_sources):
      shift = rng.normal(size=d) * 0.5
      x = rng.normal(size=(n, d)) + shift
      labels = rng.integers(0, c, size=n)
      self.xs.append(x)
      self.ys.append(np.eye(c)[labels])
    self.params = {"w": rng.normal(size=(d, c)) * 0.3, "b": rng.normal(size=c) * 0.1}

  @staticmethod
  def loss(params, batch):
    """The JAX loss, for the library under test."""
    logits = batch["x"] @ params["w"] + params["b"]
    return -jnp.mean(jnp.sum(batch["y"] * jax.nn.log_softmax(logits), axis=-1))

  def numpy_grad(self, params, source):
    x, y = self.xs[source], self.ys[source]
    logits = x @ params["w"] + params["b"]
    logits = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    return {"w": x.T @ (p - y) / len(x), "b": (p - y).mean(axis=0)}

  def numpy_loss(self, params, source):
    x, y = self.xs[source], self.ys[source]
    logits = x @ params["w"] + params["b"]
    logits = logits - logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -np.mean(np.sum(y * log_p, axis=1))

  def numpy_nexus(self, params, sequence, gamma, normalize="global"):
    """Algorithm 1's inner loop in float64 NumPy; returns g_hat = theta_0 - theta_K."""
    theta = {k: np.array(v, np.float64) for k, v in params.items()}
    start = {k: v.copy() for k, v in theta.items()}
    for source in sequence:
      g = self.numpy_grad(theta, source)
      if normalize == "global":
        norm = numpy_global_norm(g)
        theta = {k: theta[k] - gamma * g[k] / norm for k in theta}
      else:
        theta = {k: theta[k] - gamma * g[k] / np.linalg.norm(g[k]) for k in theta}
    return {k: start[k] - theta[k] for k in theta}

  def microbatches(self, sequence, dtype=np.float64):
    return {
      "x": np.stack([self.xs[s] for s in sequence]).astype(dtype),
      "y": np.stack([self.ys[s] for s in sequence]).astype(dtype),
    }


@pytest.fixture
def problem():
  return SoftmaxRegression()


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory):
  """A corpus with every domain and held-out set, small enough to build in seconds."""
  spec = corpus_lib.CorpusSpec(
    math_train_rounds=12,
    math_validation_rounds=4,
    math_extrapolate_rounds=2,
    rounds_per_task=6,
    extrapolate_rounds_per_task=1,
  )
  download_dir = corpus_lib.default_cache_root() / "downloads"
  built = built_once(
    tmp_path_factory,
    "corpus",
    lambda directory: corpus_lib.build_corpus(
      directory / "small", spec, download_dir=download_dir, show_progress=False
    ),
  )
  return corpus_lib.Corpus(built / "small")


@pytest.fixture(scope="session")
def small_cache(small_corpus, tmp_path_factory):
  """The small corpus prepared with the byte tokenizer: the token cache runs read."""
  built = built_once(
    tmp_path_factory,
    "cache",
    lambda directory: prepare(
      load_spec(small_corpus.root / SPEC_FILE), "bytes", directory / "small", show_progress=False
    ),
  )
  return TokenCache(built / "small")


@pytest.fixture(scope="session")
def sentencepiece_model(small_corpus, tmp_path_factory):
  """A 500-piece BPE SentencePiece model (byte fallback) trained on the small corpus."""

  def train(directory):
    import sentencepiece as spm  # heavy: only the tokenizer tests need it

    lines = [
      line
      for doc in small_corpus.documents("train", "technical")[:30]
      for line in doc.splitlines()
      if line.strip()
    ]
    with open(directory / "sp.model", "wb") as stream:
      spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=stream,
        vocab_size=500,
        model_type="bpe",
        byte_fallback=True,
        minloglevel=2,
      )

  return built_once(tmp_path_factory, "sentencepiece", train) / "sp.model"
