"""Pretrain a Llama with Nexus or a baseline: ``python -m train.pretrain --preset demo``.

One CPU to TPU/GPU pods with the same command: the mesh (``--mesh``) and the processes
(``--coordinator-address``/``--num-processes``/``--process-id``, ``JAX_*`` variables, or
``--distributed``) are the only differences. Writes to ``--out``:

  checkpoints/<step>/   params, optimizer state, data position, RNG, config (orbax)
  metrics.jsonl         one object per logged step: train and eval metrics
  tensorboard/          the same scalars as TensorBoard events
  summary.json          the final metrics, also printed as a table

SIGTERM (preemption) saves a checkpoint and exits 0; ``--resume`` continues exactly.

``--init-from-hf DIR`` starts from a Hugging Face Llama checkpoint instead of a fresh
initialisation: its weights, shape and tokenizer (``train.hf``); such a run is evaluated
once before its first step (``step 0`` in metrics.jsonl). ``train.export_hf`` writes one.
"""

import argparse
import dataclasses
import json
import math
import os
import pathlib
import signal
import sys
import time

import grain
import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from models import get_preset
from models.hf_llama import HFCheckpointError
from train import parallel
from train.build import build_training
from train.checkpoints import CheckpointStore
from train.config import ConfigError, TrainConfig
from train.data import sources
from train.data.cache import TokenCache
from train.data.corpus import (
  HELDOUT,
  TRAIN,
  VALIDATION,
  CorpusSpec,
  default_cache_root,
  ensure_default_cache,
)
from train.data.mixture import LoaderConfig, MixtureError, training_dataset
from train.data.spec import DataError
from train.data.tokenizer import TokenizerError
from train.evaluation import Evaluator, cache_eval_sets, domain_batches
from train.hf import HFCheckpoint, read_checkpoint
from train.optimizers import learning_rate_schedule
from train.presets import RUN_PRESETS, get_run_preset

USER_ERRORS = (
  ConfigError,
  MixtureError,
  DataError,
  TokenizerError,
  HFCheckpointError,
  sources.SourceUnavailable,
)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m train.pretrain",
    description=__doc__.split("\n\n")[0],
    formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  parser.add_argument("--preset", default="demo", help=f"run preset: {', '.join(RUN_PRESETS)}")
  for field in dataclasses.fields(TrainConfig):
    kind = float if field.type == (float | None) else field.type
    parser.add_argument(
      "--" + field.name.replace("_", "-"),
      type=kind,
      default=None,
      help=f"(preset's value if not given; TrainConfig.{field.name})",
    )
  parser.add_argument(
    "--resume", action="store_true", help="continue from the newest readable checkpoint in --out"
  )
  parser.add_argument("--no-progress", action="store_true", help="no progress bar")
  parser.add_argument(
    "--compilation-cache",
    default=None,
    help="XLA's persistent compilation cache: a directory, or 'none' (default: "
    "$JAX_COMPILATION_CACHE_DIR, else xla/ in $NEXUS_CORPUS_DIR or ~/.cache/nexus-optax)",
  )
  group = parser.add_argument_group("multi-host")
  group.add_argument("--coordinator-address", default=None, help="HOST:PORT of process 0")
  group.add_argument("--num-processes", type=int, default=None)
  group.add_argument("--process-id", type=int, default=None)
  group.add_argument(
    "--distributed",
    action="store_true",
    help="call jax.distributed.initialize() with no arguments (TPU pods, SLURM)",
  )
  return parser


def use_compilation_cache(directory: str | None) -> None:
  """Points JAX's persistent compilation cache at ``directory`` (see ``--compilation-cache``):
  a rerun, a resumed run, and the second arm of ``train.compare`` (its evaluation is the
  same program) load their compiled programs instead of compiling them again."""
  if directory is not None and directory.lower() == "none":
    jax.config.update("jax_enable_compilation_cache", False)
    return
  if directory is None:
    if jax.config.jax_compilation_cache_dir:  # set by $JAX_COMPILATION_CACHE_DIR
      return
    directory = str(default_cache_root() / "xla")
    if jax.config.jax_compilation_cache_max_size == -1:  # unbounded otherwise; evicts LRU
      jax.config.update("jax_compilation_cache_max_size", 2 << 30)
  jax.config.update("jax_compilation_cache_dir", directory)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
  overrides = {
    field.name: getattr(args, field.name)
    for field in dataclasses.fields(TrainConfig)
    if getattr(args, field.name) is not None
  }
  if (overrides.get("data") or overrides.get("init_from_hf")) and "tokenizer" not in overrides:
    overrides["tokenizer"] = ""  # the cache's or the checkpoint's, not the preset's
  if overrides.get("init_from_hf"):  # resumable from any working directory
    overrides["init_from_hf"] = str(pathlib.Path(overrides["init_from_hf"]).absolute())
  return get_run_preset(args.preset, **overrides)


def prepare_out_dir(out: pathlib.Path, resume: bool) -> None:
  try:
    out.mkdir(parents=True, exist_ok=True)
    probe = out / f".write-probe-{os.getpid()}"
    probe.write_text("ok")
    probe.unlink()
  except OSError as error:
    raise ConfigError(
      f"--out {out} is not writable ({error.strerror}); choose a directory you can write to."
    ) from None
  has_checkpoints = any(p.name.isdigit() for p in (out / "checkpoints").glob("*"))
  if has_checkpoints and not resume:
    raise ConfigError(
      f"--out {out} already holds checkpoints; pass --resume to continue that run "
      "or choose a new --out."
    )
  if resume and not has_checkpoints:
    raise ConfigError(
      f"--resume: no checkpoint in {out / 'checkpoints'}; drop --resume to start a new run."
    )


def load_data(config: TrainConfig, primary: bool, checkpoint: HFCheckpoint | None) -> TokenCache:
  """``--data``'s token cache, or the built-in corpus's (prepared on first use, with the
  ``--init-from-hf`` checkpoint's tokenizer when there is one)."""
  if config.tokenizer and (config.data or checkpoint):
    brings = f"the cache {config.data}" if config.data else f"--init-from-hf {config.init_from_hf}"
    raise ConfigError(
      f"--tokenizer {config.tokenizer} applies to the built-in corpus; {brings} "
      "brings its own tokenizer, so drop --tokenizer."
    )
  if config.data:
    cache = TokenCache(config.data)
    if checkpoint and cache.tokenizer_info["hash"] != checkpoint.tokenizer.hash:
      raise ConfigError(
        f"--data {config.data} was prepared with another tokenizer than "
        f"--init-from-hf {config.init_from_hf}'s; prepare it with `python -m "
        f"train.data.prepare --tokenizer {checkpoint.tokenizer.source} ...`."
      )
    return cache
  spec = CorpusSpec(seed=config.corpus_seed)
  tokenizer = (
    {"tokenizer": config.tokenizer}
    if not checkpoint
    else {"tokenizer_file": checkpoint.tokenizer.source}
  )
  if jax.process_count() > 1:
    if primary:  # one builder per shared cache; the others wait, then find it or build their own
      ensure_default_cache(spec, show_progress=True, **tokenizer)
    multihost_utils.sync_global_devices("corpus built")
  return ensure_default_cache(spec, show_progress=primary, **tokenizer)


def read_init_checkpoint(config: TrainConfig) -> HFCheckpoint | None:
  """The ``--init-from-hf`` checkpoint, checked against the run's sequence length."""
  if not config.init_from_hf:
    return None
  checkpoint = read_checkpoint(config.init_from_hf, get_preset(config.model))
  if config.seq_len > checkpoint.model_config.max_seq_len:
    raise ConfigError(
      f"--seq-len {config.seq_len} exceeds --init-from-hf {config.init_from_hf}'s "
      f"max_position_embeddings {checkpoint.model_config.max_seq_len}; lower it."
    )
  return checkpoint


def check_resumed_data(saved: dict, cache: TokenCache) -> None:
  """A resumed run must read the same tokens: the same tokenizer and spec as it saved."""
  recorded = saved.get("dataset")
  if not recorded:
    return
  for what, then, now in (
    ("tokenizer", recorded["tokenizer"]["hash"], cache.tokenizer_info["hash"]),
    ("data spec", recorded["spec_hash"], cache.spec_hash),
  ):
    if then != now:
      raise ConfigError(
        f"--resume: the cache {cache.root} has another {what} than the checkpoint's "
        f"(hash {now[:12]} vs {then[:12]}); resume with the cache the run started "
        "on, or start a new --out."
      )


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
    from tensorboardX import SummaryWriter

    self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=start_step + 1)

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


class StopRequest:
  """Set by SIGTERM; on multi-process runs every process learns of any one's signal."""

  def __init__(self):
    self.requested = False
    signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def agreed(self, step: int, every: int) -> bool:
    """Whether to stop now. Processes compare notes only every ``every`` steps, as a
    collective each step would stall the host's run-ahead."""
    if jax.process_count() == 1:
      return self.requested
    if step % every:
      return False
    return bool(np.any(multihost_utils.process_allgather(np.array(self.requested))))


def to_floats(metrics: dict) -> dict:
  return {key: float(value) for key, value in jax.device_get(metrics).items()}


def run(args: argparse.Namespace) -> int:
  started = time.perf_counter()
  config = config_from_args(args)
  use_compilation_cache(args.compilation_cache)
  stop = StopRequest()
  multi_process = parallel.initialize_distributed(
    args.coordinator_address, args.num_processes, args.process_id, auto=args.distributed
  )
  primary = jax.process_index() == 0
  say = print if primary else (lambda *a, **k: None)
  out = pathlib.Path(config.out)
  prepare_out_dir(out, args.resume)
  mesh = parallel.make_mesh(parallel.parse_mesh(config.mesh, jax.device_count()), multi_process)
  checkpoint = read_init_checkpoint(config)
  data_start = time.perf_counter()
  cache = load_data(config, primary, checkpoint)
  data_seconds = time.perf_counter() - data_start
  if not config.mixture:
    config = dataclasses.replace(config, mixture=cache.default_mixture)
  loader_config = LoaderConfig(
    seq_len=config.seq_len,
    micro_batch_size=config.micro_batch_size,
    microbatches=config.microbatches,
    mode=config.batch_mode,
    seed=config.seed,
  )
  shard_index, shard_count = parallel.process_batch_rows(mesh, config.micro_batch_size)
  dataset, domains = training_dataset(
    cache, config.mixture, loader_config, grain.sharding.ShardOptions(shard_index, shard_count)
  )
  iterator = iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)))
  if checkpoint:
    training = build_training(config, mesh, model_config=checkpoint.model_config)
  else:
    training = build_training(config, mesh, vocab_size=cache.padded_vocab_size)
  model_record = dataclasses.asdict(training.model_config)
  schedule = learning_rate_schedule(config)
  store = CheckpointStore(out, config.keep_checkpoints, warn=say)

  start_step, data_state = 0, None
  if args.resume:
    saved = store.newest_config()
    mismatch = config.trajectory_mismatch(TrainConfig.from_dict(saved)) if saved else []
    if mismatch:
      raise ConfigError(
        f"--resume: the checkpoint's run differs ({'; '.join(mismatch)}); "
        "rerun with its settings or choose a new --out."
      )
    check_resumed_data(saved, cache)
    if saved.get("model_config", model_record) != model_record:
      raise ConfigError(
        f"--resume: the model differs from the checkpoint's (was "
        f"{saved['model_config']}); resume with the --init-from-hf folder the run "
        "started from, or start a new --out."
      )
    restored = store.restore_latest(training.abstract_state)
    if restored is None:
      raise ConfigError(f"--resume: no readable checkpoint left in {store.directory}; start anew.")
    state, start_step, data_state = restored.state, restored.step, restored.data_state["iterator"]
    say(f"resumed from checkpoint {start_step} in {store.directory}")
  elif checkpoint:
    state = training.init_from_params(checkpoint.lazy_params())
    say(f"initialised from {checkpoint.directory}")
  else:
    state = training.init()
  run_record = {**config.to_dict(), "dataset": cache.identity(), "model_config": model_record}
  if primary:
    (out / "config.json").write_text(json.dumps(run_record, indent=1) + "\n")
    cache.tokenizer.save_copy(out)  # the run stays scorable without its cache

  if data_state is not None:
    iterator.set_state(data_state)
  global_shape = (config.microbatches, config.micro_batch_size, config.seq_len + 1)

  # Training windows too: every optimizer's training loss measured at its outer params
  # (Nexus's logged train_loss is taken along its inner trajectory).
  eval_sets = cache_eval_sets(
    cache, config.seq_len, config.eval_sequences, roles=(TRAIN, VALIDATION, HELDOUT)
  )
  cosine_batches, cosine_domains = domain_batches(eval_sets, domains, config.eval_sequences)
  evaluator = Evaluator(training.graphdef, mesh, config.micro_batch_size)

  say(
    f"{config.optimizer} on {config.init_from_hf or config.model} "
    f"({training.model_config.non_embedding_params() / 1e6:.2f}M "
    f"non-embedding params), mesh {dict(mesh.shape)}, {jax.process_count()} process(es), "
    f"{config.tokens_per_step:,} tokens per step, steps {start_step} -> {config.steps}"
  )
  log = MetricsLog(out, start_step, primary)
  progress = tqdm(
    total=config.steps,
    initial=start_step,
    unit="step",
    dynamic_ncols=True,
    disable=not primary or args.no_progress,
  )
  summary: dict = {}
  window_start, window_steps, run_start, run_steps = time.perf_counter(), 0, time.perf_counter(), 0
  setup_seconds = run_start - started - data_seconds
  eval_seconds = first_step_seconds = 0.0
  if checkpoint and start_step == 0:  # where the starting model stands, before any step
    results = evaluator.evaluate(state.params, eval_sets, cosine_batches, cosine_domains)
    eval_seconds = time.perf_counter() - run_start
    log.write({"step": 0, **results, "seconds": eval_seconds, "eval_seconds": eval_seconds})
    window_start = time.perf_counter()
  for step in range(start_step + 1, config.steps + 1):
    element = next(iterator)
    tokens = parallel.global_batch(element["tokens"], training.batch_sharding, global_shape)
    state, metrics = training.step(state, tokens)
    if run_steps == 0:  # the step's compile, apart from the steady state
      jax.block_until_ready(metrics)
      first_step_seconds = time.perf_counter() - window_start
    window_steps += 1
    run_steps += 1
    record = {}
    if step % config.log_every == 0 or step == config.steps:
      values = to_floats(metrics)
      seconds = time.perf_counter() - window_start
      record.update(
        step=step,
        train_loss=values.pop("train_loss"),
        lr=float(schedule(step - 1)),
        tokens=step * config.tokens_per_step,
        tokens_per_s=window_steps * config.tokens_per_step / seconds,
        skipped_steps=int(jax.device_get(state.skipped_steps)),
        skipped=bool(values.pop("skipped")),
        **{k: v for k, v in values.items() if k != "finite"},
      )
      progress.set_postfix(
        loss=f"{record['train_loss']:.4f}", tok_s=f"{record['tokens_per_s']:,.0f}"
      )
      summary.update({k: v for k, v in record.items() if k != "tokens_per_s"})
    if (config.eval_every and step % config.eval_every == 0) or step == config.steps:
      eval_start = time.perf_counter()
      results = evaluator.evaluate(state.params, eval_sets, cosine_batches, cosine_domains)
      eval_seconds += time.perf_counter() - eval_start
      # Wall time of this process so far, and the part of it spent evaluating.
      record.update(
        step=step, **results, seconds=time.perf_counter() - run_start, eval_seconds=eval_seconds
      )
      summary.update(results)
    if record:
      log.write(record)
    if step % config.checkpoint_every == 0 or step == config.steps:
      store.save(step, state, {"iterator": iterator.get_state()}, run_record)
    if record:
      window_start, window_steps = time.perf_counter(), 0
    progress.update(1)
    if step < config.steps and stop.agreed(step, config.log_every):
      store.save(step, state, {"iterator": iterator.get_state()}, run_record)
      store.wait()
      progress.close()
      log.close()
      say(f"SIGTERM: saved checkpoint {step} in {store.directory}; continue with --resume.")
      return 0
  progress.close()
  store.wait()
  log.close()
  elapsed = time.perf_counter() - run_start
  summary.update(
    steps_this_run=run_steps,
    seconds_this_run=round(elapsed, 1),
    mean_tokens_per_s=run_steps * config.tokens_per_step / max(elapsed, 1e-9),
  )
  # Where this process's time went, in seconds: preparing or opening the data, building
  # and initialising, the first step (its compile), the other steps with their logging and
  # checkpoints, and evaluation (its own compile included).
  summary["time"] = {
    "data": round(data_seconds, 1),
    "setup": round(setup_seconds, 1),
    "first_step": round(first_step_seconds, 1),
    "train": round(elapsed - eval_seconds - first_step_seconds, 1),
    "eval": round(eval_seconds, 1),
    "total": round(time.perf_counter() - started, 1),
  }
  if primary:
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    say(summary_table(summary))
  return 0


def main(argv=None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  previous_handler = signal.getsignal(signal.SIGTERM)  # a caller's own, when run in-process
  try:
    return run(args)
  except USER_ERRORS as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  finally:
    signal.signal(signal.SIGTERM, previous_handler)


if __name__ == "__main__":
  sys.exit(main())
