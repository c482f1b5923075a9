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
import contextlib
import dataclasses
import functools
import json
import os
import pathlib
import signal
import sys
import time
from collections.abc import Callable

import jax
from tqdm import tqdm

from models import get_preset
from train import faults, parallel, peers
from train.build import Training, build_training
from train.checkpoints import CheckpointSaveError, CheckpointStore, Restored
from train.config import ConfigError, TrainConfig
from train.data.cache import TokenCache
from train.data.corpus import default_cache_root
from train.data.roles import HELDOUT, TRAIN, VALIDATION
from train.evaluation import Evaluator, cache_eval_sets, domain_batches
from train.faults import RUN_FAULT_EXIT, RunFault, SkippedSteps
from train.flags import USER_ERRORS, build_parser, config_from_args
from train.hf import HFCheckpoint, read_checkpoint
from train.metrics_log import MetricsLog, summary_table
from train.optimizers import learning_rate_schedule
from train.preemption import StopRequest
from train.training_data import check_resumed_data, load_data, training_iterator


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


class RunClock:
  """Where this process's seconds go (``summary.json``'s ``time``), and the throughput of
  each logging window."""

  def __init__(self):
    self.started = time.perf_counter()
    self.data = self.setup = self.first_step = self.eval = 0.0

  @contextlib.contextmanager
  def timing(self, part: str):
    """Adds the seconds of the ``with`` body to ``part`` (``data`` or ``eval``)."""
    start = time.perf_counter()
    yield
    setattr(self, part, getattr(self, part) + time.perf_counter() - start)

  def start_loop(self) -> None:
    self.window_start = self.run_start = time.perf_counter()
    self.window_steps = self.run_steps = 0
    self.setup = self.run_start - self.started - self.data

  def stepped(self, metrics) -> None:
    """Counts a step; the first waits for its result: its compile, apart from the steady
    state."""
    if self.run_steps == 0:
      jax.block_until_ready(metrics)
      self.first_step = time.perf_counter() - self.window_start
    self.window_steps += 1
    self.run_steps += 1

  def new_window(self) -> None:
    self.window_start, self.window_steps = time.perf_counter(), 0

  def window_seconds(self) -> float:
    return time.perf_counter() - self.window_start

  def run_seconds(self) -> float:
    return time.perf_counter() - self.run_start

  def parts(self, elapsed: float) -> dict[str, float]:
    """Seconds spent preparing or opening the data, building and initialising, on the
    first step (its compile), on the other steps with their logging and checkpoints, and
    evaluating (its own compile included), of ``elapsed`` in the loop."""
    return {
      "data": round(self.data, 1),
      "setup": round(self.setup, 1),
      "first_step": round(self.first_step, 1),
      "train": round(elapsed - self.eval - self.first_step, 1),
      "eval": round(self.eval, 1),
      "total": round(time.perf_counter() - self.started, 1),
    }


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


def build_run_training(
  config: TrainConfig, mesh, checkpoint: HFCheckpoint | None, cache: TokenCache
) -> Training:
  """The model, optimizer and jitted step, the model shaped as ``--init-from-hf``'s
  checkpoint or by the cache's (padded) vocabulary."""
  if checkpoint:
    return build_training(config, mesh, model_config=checkpoint.model_config)
  return build_training(config, mesh, vocab_size=cache.padded_vocab_size)


def starting_state(
  resume: bool,
  store: CheckpointStore,
  training: Training,
  checkpoint: HFCheckpoint | None,
  config: TrainConfig,
  cache: TokenCache,
  say,
):
  """``(state, step, data position)`` to train from: ``--out``'s newest checkpoint on
  ``--resume``, else ``--init-from-hf``'s weights or a fresh initialisation at step 0."""
  if resume:
    restored = restore_run(store, training, config, cache)
    started = restored.state, restored.step, restored.data_state["iterator"]
    say(f"resumed from checkpoint {restored.step} in {store.directory}")
    return started
  if checkpoint:
    state = training.init_from_params(checkpoint.lazy_params())
    say(f"initialised from {checkpoint.directory}")
    return state, 0, None
  return training.init(), 0, None


def restore_run(
  store: CheckpointStore, training: Training, config: TrainConfig, cache: TokenCache
) -> Restored:
  """The newest readable checkpoint of ``--out``, once its run is this one: the same
  trajectory settings, tokens and model."""
  saved = store.newest_config()
  mismatch = config.trajectory_mismatch(TrainConfig.from_dict(saved)) if saved else []
  if mismatch:
    raise ConfigError(
      f"--resume: the checkpoint's run differs ({'; '.join(mismatch)}); "
      "rerun with its settings or choose a new --out."
    )
  check_resumed_data(saved, cache)
  model_record = dataclasses.asdict(training.model_config)
  if saved.get("model_config", model_record) != model_record:
    raise ConfigError(
      f"--resume: the model differs from the checkpoint's (was "
      f"{saved['model_config']}); resume with the --init-from-hf folder the run "
      "started from, or start a new --out."
    )
  restored = store.restore_latest(training.abstract_state)
  if restored is None:
    raise ConfigError(f"--resume: no readable checkpoint left in {store.directory}; start anew.")
  return restored


def save_run_record(
  out: pathlib.Path, config: TrainConfig, cache: TokenCache, training: Training, primary: bool
) -> dict:
  """The run's settings, data identity and model shape, saved with every checkpoint;
  process 0 also writes them to ``config.json``, with a copy of the tokenizer."""
  model_record = dataclasses.asdict(training.model_config)
  run_record = {**config.to_dict(), "dataset": cache.identity(), "model_config": model_record}
  if primary:
    (out / "config.json").write_text(json.dumps(run_record, indent=1) + "\n")
    cache.tokenizer.save_copy(out)  # the run stays scorable without its cache
  return run_record


def run_evaluation(
  cache: TokenCache, config: TrainConfig, domains: list[str], training: Training, mesh
) -> Callable[[object], dict]:
  """``evaluate(params)``: losses on fixed windows of every validation, held-out and
  training set, and the cosine matrix of the training domains' gradients."""
  # Training windows too: every optimizer's training loss measured at its outer params
  # (Nexus's logged train_loss is taken along its inner trajectory).
  eval_sets = cache_eval_sets(
    cache, config.seq_len, config.eval_sequences, roles=(TRAIN, VALIDATION, HELDOUT)
  )
  cosine_batches, cosine_domains = domain_batches(eval_sets, domains, config.eval_sequences)
  evaluator = Evaluator(training.graphdef, mesh, config.micro_batch_size)
  return functools.partial(
    evaluator.evaluate,
    eval_sets=eval_sets,
    cosine_batches=cosine_batches,
    domain_names=cosine_domains,
  )


def run_banner(config: TrainConfig, training: Training, mesh, start_step: int) -> str:
  """The line a run opens with: optimizer, model, mesh, processes, batch and steps."""
  return (
    f"{config.optimizer} on {config.init_from_hf or config.model} "
    f"({training.model_config.non_embedding_params() / 1e6:.2f}M "
    f"non-embedding params), mesh {dict(mesh.shape)}, {jax.process_count()} process(es), "
    f"{config.tokens_per_step:,} tokens per step, steps {start_step} -> {config.steps}"
  )


def progress_bar(config: TrainConfig, start_step: int, disable: bool) -> tqdm:
  return tqdm(
    total=config.steps, initial=start_step, unit="step", dynamic_ncols=True, disable=disable
  )


def progress_figures(record: dict) -> dict[str, str]:
  """What the progress bar shows of a logged step: its loss and tokens per second."""
  return {"loss": f"{record['train_loss']:.4f}", "tok_s": f"{record['tokens_per_s']:,.0f}"}


def close_outputs(progress: tqdm, store: CheckpointStore, log: MetricsLog) -> None:
  """Closes the progress bar, waits for the checkpoints being written, closes the log."""
  progress.close()
  store.wait()
  log.close()


def next_batch(iterator, training: Training, config: TrainConfig, step: int, poisoned) -> jax.Array:
  """Step ``step``'s tokens ``[K, B, T + 1]``, one global array of the processes' rows
  (marked non-finite in the test-only ``poisoned`` range of :mod:`train.faults`)."""
  global_shape = (config.microbatches, config.micro_batch_size, config.seq_len + 1)
  rows = faults.poison_tokens(next(iterator)["tokens"], step, poisoned)
  return parallel.global_batch(rows, training.batch_sharding, global_shape)


def due(step: int, every: int, last: int) -> bool:
  """Whether ``step`` is a multiple of ``every`` (none when 0) or the ``last``."""
  return bool(every and step % every == 0) or step == last


def train_record(step: int, metrics: dict, state, schedule, config: TrainConfig, clock: RunClock):
  """The logged training metrics of ``step``, with the tokens per second of the window
  since the last logged step."""
  values = {key: float(value) for key, value in jax.device_get(metrics).items()}
  seconds = clock.window_seconds()
  return dict(
    step=step,
    train_loss=values.pop("train_loss"),
    lr=float(schedule(step - 1)),
    tokens=step * config.tokens_per_step,
    tokens_per_s=clock.window_steps * config.tokens_per_step / seconds,
    skipped_steps=int(jax.device_get(state.skipped_steps)),
    skipped=bool(values.pop("skipped")),
    **{k: v for k, v in values.items() if k != "finite"},
  )


def log_starting_point(evaluate, state, clock: RunClock, log: MetricsLog) -> None:
  """Evaluates a run from a checkpoint before its first step: where the starting model
  stands, as step 0."""
  with clock.timing("eval"):
    results = evaluate(state.params)
  log.write({"step": 0, **results, "seconds": clock.eval, "eval_seconds": clock.eval})
  clock.new_window()


def save_checkpoint(store: CheckpointStore, step: int, state, iterator, run_record: dict) -> None:
  """``state`` at ``step``, with the data position and the run's record (asynchronously)."""
  store.save(step, state, {"iterator": iterator.get_state()}, run_record)


def write_summary(
  summary: dict, clock: RunClock, config: TrainConfig, out: pathlib.Path, primary: bool
) -> None:
  """Adds this run's steps, seconds, throughput and where its seconds went to the final
  metrics; process 0 writes them to ``summary.json`` and prints them as a table."""
  elapsed = clock.run_seconds()
  summary.update(
    steps_this_run=clock.run_steps,
    seconds_this_run=round(elapsed, 1),
    mean_tokens_per_s=clock.run_steps * config.tokens_per_step / max(elapsed, 1e-9),
  )
  summary["time"] = clock.parts(elapsed)
  if primary:
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(summary_table(summary))


@dataclasses.dataclass
class Loop:
  """What the training loop reads and writes besides the state."""

  config: TrainConfig
  training: Training
  iterator: object
  evaluate: Callable[[object], dict]
  store: CheckpointStore
  log: MetricsLog
  progress: tqdm
  clock: RunClock
  run_record: dict
  say: Callable


def run(args: argparse.Namespace) -> int:
  clock = RunClock()
  config = config_from_args(args)
  use_compilation_cache(args.compilation_cache)
  stop = StopRequest()
  multi_process = parallel.initialize_distributed(
    args.coordinator_address,
    args.num_processes,
    args.process_id,
    auto=args.distributed,
    peer_timeout=args.peer_timeout,
  )
  primary = jax.process_index() == 0
  say = print if primary else (lambda *a, **k: None)
  out = pathlib.Path(config.out)
  prepare_out_dir(out, args.resume)
  mesh = parallel.make_mesh(parallel.parse_mesh(config.mesh, jax.device_count()), multi_process)
  checkpoint = read_init_checkpoint(config)
  with clock.timing("data"):
    cache = load_data(config, primary, checkpoint)
  if not config.mixture:
    config = dataclasses.replace(config, mixture=cache.default_mixture)
  iterator, domains = training_iterator(cache, config, mesh)
  training = build_run_training(config, mesh, checkpoint, cache)
  store = CheckpointStore(out, config.keep_checkpoints, warn=say)
  state, start_step, data_state = starting_state(
    args.resume, store, training, checkpoint, config, cache, say
  )
  run_record = save_run_record(out, config, cache, training, primary)
  if data_state is not None:
    iterator.set_state(data_state)
  evaluate = run_evaluation(cache, config, domains, training, mesh)
  say(run_banner(config, training, mesh, start_step))
  loop = Loop(
    config,
    training,
    iterator,
    evaluate,
    store,
    MetricsLog(out, start_step, primary),
    progress_bar(config, start_step, disable=not primary or args.no_progress),
    clock,
    run_record,
    say,
  )
  clock.start_loop()
  if checkpoint and start_step == 0:
    log_starting_point(evaluate, state, clock, loop.log)
  try:
    summary = train_steps(loop, state, start_step, stop)
  except RunFault as fault:
    newest = stop_outputs(loop)
    if isinstance(fault, CheckpointSaveError):
      raise
    raise RunFault(f"{fault} {newest}") from None
  except jax.errors.JaxRuntimeError as error:
    if not multi_process:
      raise
    peers.stop_after_failed_collective(
      error, args.peer_timeout, jax.process_index(), jax.process_count(), out
    )
    raise
  if summary is None:
    return 0
  write_summary(summary, clock, config, out, primary)
  return 0


def stop_outputs(loop: Loop) -> str:
  """Closes the outputs of a run that stops on a fault, its saves in flight waited for;
  returns where ``--resume`` would continue."""
  loop.progress.close()
  try:
    loop.store.wait()
  except RunFault:  # the fault's message names the failed save already
    pass
  loop.log.close()
  steps = loop.store.completed_steps()
  if not steps:
    return "No checkpoint was written."
  return f"The newest checkpoint is {steps[-1]} in {loop.store.directory}."


def train_steps(loop: Loop, state, start_step: int, stop: StopRequest) -> dict | None:
  """Steps ``start_step + 1`` to ``config.steps``, logging, evaluating and saving as due;
  the final metrics, or None when SIGTERM stopped the run after saving a checkpoint.

  A checkpoint that falls due while the newest steps were skipped waits for the next step
  that is not, so the checkpoint from before a storm of non-finite steps stays the latest.
  """
  config, clock = loop.config, loop.clock
  schedule = learning_rate_schedule(config)
  skips = SkippedSteps(config.max_skipped_steps)
  poisoned = faults.nonfinite_steps()
  summary: dict = {}
  checkpoint_due = False
  for step in range(start_step + 1, config.steps + 1):
    tokens = next_batch(loop.iterator, loop.training, config, step, poisoned)
    state, metrics = loop.training.step(state, tokens)
    clock.stepped(metrics)
    skips.stepped(step, metrics["skipped"])
    loop.store.raise_if_failed()
    record = {}
    if due(step, config.log_every, config.steps):
      record = train_record(step, metrics, state, schedule, config, clock)
      loop.progress.set_postfix(progress_figures(record))
      summary.update({k: v for k, v in record.items() if k != "tokens_per_s"})
    if due(step, config.eval_every, config.steps):
      with clock.timing("eval"):
        results = loop.evaluate(state.params)
      # Wall time of this process so far, and the part of it spent evaluating.
      record.update(step=step, **results, seconds=clock.run_seconds(), eval_seconds=clock.eval)
      summary.update(results)
    if record:
      loop.log.write(record)
    checkpoint_due |= due(step, config.checkpoint_every, config.steps)
    if checkpoint_due and (skips.settle() == 0 or step == config.steps):
      save_checkpoint(loop.store, step, state, loop.iterator, loop.run_record)
      checkpoint_due = False
    if record:
      clock.new_window()
    loop.progress.update(1)
    if step < config.steps and stop.agreed(step, config.log_every):
      save_checkpoint(loop.store, step, state, loop.iterator, loop.run_record)
      close_outputs(loop.progress, loop.store, loop.log)
      loop.say(
        f"SIGTERM: saved checkpoint {step} in {loop.store.directory}; continue with --resume."
      )
      return None
  skips.settle()
  close_outputs(loop.progress, loop.store, loop.log)
  return summary


def train(args: argparse.Namespace) -> int:
  """``run(args)`` for a caller in this process (``main``, ``train.compare --jobs 1``): a
  user error prints one line and returns 2, a fault that stops the run (a storm of
  skipped steps, a failed save) one line and 3; the caller's SIGTERM handler is restored."""
  previous_handler = signal.getsignal(signal.SIGTERM)
  try:
    return run(args)
  except USER_ERRORS as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  except RunFault as fault:
    print(f"error: {fault}", file=sys.stderr)
    return RUN_FAULT_EXIT
  finally:
    signal.signal(signal.SIGTERM, previous_handler)


def main(argv=None) -> int:
  """Trains in this process, or, on a multi-process run, supervises a worker process that
  does (:mod:`train.peers`: a lost peer then ends this process with one line)."""
  argv = sys.argv[1:] if argv is None else [str(item) for item in argv]
  args = build_parser(__doc__.split("\n\n")[0]).parse_args(argv)
  if peers.is_worker():
    return train(args)
  try:
    settings = parallel.distributed_settings(
      args.coordinator_address, args.num_processes, args.process_id, auto=args.distributed
    )
    out = pathlib.Path(config_from_args(args).out)
  except USER_ERRORS as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  if settings is None:
    return train(args)
  index, count = settings.get("process_id"), settings.get("num_processes")
  return peers.supervise("train.pretrain", argv, index, count, out)


if __name__ == "__main__":
  sys.exit(main())
