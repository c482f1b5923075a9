"""The tokens a training run reads: its token cache (``--data``'s, or the built-in corpus's),
checked against the run it starts or resumes, and the training stream, each process
reading its own rows of every batch."""

import grain
import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from train import parallel
from train.config import ConfigError, TrainConfig
from train.data.cache import TokenCache
from train.data.corpus import CorpusSpec, ensure_default_cache
from train.data.mixture import LoaderConfig, training_dataset
from train.hf import HFCheckpoint


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


def training_iterator(cache: TokenCache, config: TrainConfig, mesh: Mesh):
  """``(iterator, domains)``: this process's rows of each outer step under ``--mixture``
  (``get_state``/``set_state`` checkpoint its position), and the mixture's domain names."""
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
  return iterator, domains
