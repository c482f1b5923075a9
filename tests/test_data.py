"""The data pipeline: packing, the grain mixture's proportions, order, state and shards,
the built corpus's split, and the errors of bad input."""

import collections
import hashlib
import os
import pathlib
import subprocess
import sys

import grain
import numpy as np
import pytest

from train.data import (
  Corpus,
  CorpusSpec,
  LoaderConfig,
  MixtureError,
  epochs_per_source,
  outer_step_dataset,
  parse_mixture,
  source_sequences,
  tokenizer,
  training_dataset,
)


# A corpus small enough to build in seconds: every source, little generated math.
def numbered_sources(sizes: dict[str, int], seq_len: int = 4) -> dict[str, np.ndarray]:
  """Sequences whose first token is a global id: source s, row r -> 1000 * s + r."""
  return {
    name: np.stack([np.full(seq_len + 1, 1000 * s + r, np.int32) for r in range(size)])
    for s, (name, size) in enumerate(sizes.items())
  }


def take(dataset, steps, start=0):
  return [dataset[i] for i in range(start, start + steps)]


# ---- packing ------------------------------------------------------------------------


def test_pack_cuts_the_document_stream_into_overlapping_windows():
  documents = ["The quick brown fox", "jumps", "", "över the lazy dog"]
  seq_len = 6
  stream = []
  for doc in documents:  # reference: plain Python over the UTF-8 bytes
    stream += list(doc.encode("utf-8")) + [tokenizer.END_OF_DOCUMENT]
  expected = [
    stream[i * seq_len : i * seq_len + seq_len + 1] for i in range((len(stream) - 1) // seq_len)
  ]
  packed = tokenizer.pack(documents, seq_len)
  assert packed.dtype == np.int32 and packed.tolist() == expected
  # Every token but the first is a target exactly once.
  assert sum(len(w) - 1 for w in expected) == len(expected) * seq_len
  assert tokenizer.decode(packed[0]) == "The qui"


# ---- the mixture ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["mixed", "source"])
def test_mixture_proportions_match_the_weights(mode):
  weights = {"a": 0.5, "b": 0.3, "c": 0.2}
  sequences = numbered_sources({"a": 50, "b": 40, "c": 30})
  config = LoaderConfig(seq_len=4, micro_batch_size=10, microbatches=4, mode=mode, seed=3)
  steps = take(outer_step_dataset(sequences, weights, config), 100)
  sources = np.stack([s["source"] for s in steps])  # [steps, K, B]
  assert sources.shape == (100, 4, 10)
  counts = np.bincount(sources.ravel(), minlength=3) / sources.size
  np.testing.assert_allclose(counts, [0.5, 0.3, 0.2], atol=0.01)
  ids = np.stack([s["tokens"][..., 0] for s in steps]) // 1000
  np.testing.assert_array_equal(ids, sources)  # labels say where each sequence came from
  single_source = np.all(sources == sources[..., :1], axis=-1)
  if mode == "source":
    assert single_source.all()
  else:  # every mixed micro-batch holds several sources
    assert not single_source.any()


def test_each_epoch_of_a_source_is_a_fresh_permutation():
  sequences = numbered_sources({"a": 16})
  config = LoaderConfig(seq_len=4, micro_batch_size=4, microbatches=2, seed=0)
  steps = take(outer_step_dataset(sequences, {"a": 1.0}, config), 4)
  ids = np.concatenate([s["tokens"][..., 0].ravel() for s in steps])
  first, second = ids[:16], ids[16:]
  assert sorted(first) == sorted(second) == list(range(16))
  assert first.tolist() != second.tolist() and first.tolist() != list(range(16))


def test_two_runs_see_identical_micro_batches():
  sequences = numbered_sources({"a": 30, "b": 30})
  config = LoaderConfig(seq_len=4, micro_batch_size=6, microbatches=3, seed=7)
  run_a = take(outer_step_dataset(sequences, {"a": 1, "b": 2}, config), 20)
  run_b = take(outer_step_dataset(dict(sequences), {"a": 1, "b": 2}, config), 20)
  for x, y in zip(run_a, run_b):
    np.testing.assert_array_equal(x["tokens"], y["tokens"])
  other_seed = take(
    outer_step_dataset(sequences, {"a": 1, "b": 2}, LoaderConfig(4, 6, 3, seed=8)), 20
  )
  assert any((x["tokens"] != y["tokens"]).any() for x, y in zip(run_a, other_seed))


def test_iterator_state_restores_the_exact_next_batches():
  sequences = numbered_sources({"a": 30, "b": 20, "c": 10})
  config = LoaderConfig(seq_len=4, micro_batch_size=4, microbatches=2, mode="source", seed=1)
  dataset = outer_step_dataset(sequences, {"a": 1, "b": 1, "c": 2}, config)
  iterator = iter(dataset.to_iter_dataset())
  for _ in range(7):
    next(iterator)
  state = iterator.get_state()
  expected = [next(iterator) for _ in range(5)]
  restored = iter(dataset.to_iter_dataset())
  restored.set_state(state)
  for want in expected:
    got = next(restored)
    np.testing.assert_array_equal(got["tokens"], want["tokens"])
    np.testing.assert_array_equal(got["source"], want["source"])


@pytest.mark.parametrize("mode", ["mixed", "source"])
def test_process_shards_split_each_global_micro_batch_by_rows(mode):
  sizes = {"a": 40, "b": 24}
  weights = {"a": 0.625, "b": 0.375}
  sequences = numbered_sources(sizes)
  config = LoaderConfig(seq_len=4, micro_batch_size=8, microbatches=2, mode=mode, seed=5)
  shards = [
    outer_step_dataset(
      sequences, weights, config, grain.sharding.ShardOptions(shard_index=i, shard_count=2)
    )
    for i in range(2)
  ]
  # 4 steps x 2 micro-batches x 8 sequences = 64 = one epoch of both sources at these weights.
  steps = [take(shard, 4) for shard in shards]
  ids = [np.concatenate([s["tokens"][..., 0].ravel() for s in run]) for run in steps]
  assert all(len(x) == 32 for x in ids)  # each process holds half of every micro-batch
  assert not set(ids[0].tolist()) & set(ids[1].tolist())
  everything = sorted(ids[0].tolist() + ids[1].tolist())
  assert everything == list(range(40)) + list(range(1000, 1024))
  whole = take(outer_step_dataset(sequences, weights, config), 4)
  for s0, s1, single in zip(*steps, whole):  # process order rebuilds the global batch
    for key in ("tokens", "source"):
      np.testing.assert_array_equal(np.concatenate([s0[key], s1[key]], axis=1), single[key])


def test_epochs_per_source_counts_reads_through_each_source():
  sequences = numbered_sources({"a": 100, "b": 10})
  config = LoaderConfig(seq_len=4, micro_batch_size=5, microbatches=4)
  epochs = epochs_per_source(sequences, {"a": 3, "b": 1}, config, steps=20)
  assert epochs == pytest.approx({"a": 400 * 0.75 / 100, "b": 400 * 0.25 / 10})


# ---- bad input ------------------------------------------------------------------------

AVAILABLE = ["code", "math", "prose", "technical"]


@pytest.mark.parametrize(
  "text, message",
  [
    ("", "empty"),
    ("   ", "empty"),
    ("prose", "malformed"),
    ("prose=", "malformed"),
    ("=1", "malformed"),
    ("prose=1,,code=1", "malformed"),
    ("poetry=1", "unknown source 'poetry'.*choose from code, math"),
    ("prose=0", "must be a finite number > 0"),
    ("prose=-0.5", "must be a finite number > 0"),
    ("prose=nan", "must be a finite number > 0"),
    ("prose=inf", "must be a finite number > 0"),
    ("prose=lots", "is not a number"),
    ("prose=1,prose=2", "appears twice"),
  ],
)
def test_bad_mixture_text_gets_a_one_line_error(text, message):
  with pytest.raises(MixtureError, match=message) as error:
    parse_mixture(text, AVAILABLE)
  assert "\n" not in str(error.value)


def test_bad_loader_input_gets_a_one_line_error(small_cache):
  errors = []
  with pytest.raises(MixtureError, match="micro_batch_size must be an integer >= 1") as e:
    LoaderConfig(seq_len=8, micro_batch_size=0, microbatches=2)
  errors.append(e)
  with pytest.raises(MixtureError, match="unknown micro-batch mode") as e:
    LoaderConfig(seq_len=8, micro_batch_size=2, microbatches=2, mode="domain")
  errors.append(e)
  with pytest.raises(MixtureError, match="fewer than .* tokens; lower the sequence length") as e:
    source_sequences(small_cache, "technical", seq_len=10_000_000)
  errors.append(e)
  with pytest.raises(MixtureError, match="not divisible by the 2 data shards") as e:
    outer_step_dataset(
      numbered_sources({"a": 8}),
      {"a": 1},
      LoaderConfig(4, 3, 2),
      grain.sharding.ShardOptions(shard_index=0, shard_count=2),
    )
  errors.append(e)
  with pytest.raises(MixtureError, match="no sources") as e:
    outer_step_dataset(numbered_sources({"a": 8}), {}, LoaderConfig(4, 2, 2))
  errors.append(e)
  assert all("\n" not in str(error.value) for error in errors)


@pytest.mark.parametrize(
  "field, value", [("math_train_rounds", 0), ("rounds_per_task", -2), ("seed", -1)]
)
def test_bad_corpus_spec_gets_a_one_line_error(field, value):
  with pytest.raises(ValueError, match=f"CorpusSpec.{field} must be an integer >= "):
    CorpusSpec(**{field: value})


def test_a_missing_corpus_names_the_build_command(tmp_path):
  with pytest.raises(FileNotFoundError, match="python -m train.data.corpus"):
    Corpus(tmp_path / "nowhere")


# ---- the built corpus -----------------------------------------------------------------


def test_corpus_has_every_domain_and_held_out_set(small_corpus):
  assert small_corpus.names("train") == ["code", "math", "prose", "technical"]
  assert small_corpus.names("validation") == ["code", "math", "prose", "technical"]
  assert small_corpus.names("heldout") == ["champ", "humaneval", "math_extrapolate", "milton"]
  sets = small_corpus.manifest["sets"]
  assert sets["train/prose"]["documents"] == 38 and sets["validation/prose"]["documents"] == 4
  assert sets["heldout/humaneval"]["documents"] == 164
  assert sets["heldout/milton"]["documents"] == 3
  assert sets["train/code"]["bytes"] > 5_000_000
  for key, stats in sets.items():
    role, name = key.split("/")
    payload = (small_corpus.root / role / f"{name}.jsonl").read_bytes()
    assert hashlib.sha256(payload).hexdigest() == stats["sha256"]
  hamlet = [d for d in small_corpus.documents("train", "prose") if "HAMLET" in d[:200]]
  milton = small_corpus.documents("heldout", "milton")
  assert len(hamlet) == 1 and any("PARADISE LOST" in d[:200] for d in milton)
  assert any("def " in d for d in small_corpus.documents("heldout", "humaneval"))


def test_no_validation_or_held_out_text_appears_in_training(small_corpus):
  train_hashes, train_text = set(), []
  for name in small_corpus.names("train"):
    for doc in small_corpus.documents("train", name):
      train_hashes.add(hashlib.sha256(" ".join(doc.split()).encode()).hexdigest())
      train_text.append(doc)
  train_text = "\x00".join(train_text)
  rng = np.random.default_rng(0)
  for role in ("validation", "heldout"):
    for name in small_corpus.names(role):
      docs = small_corpus.documents(role, name)
      for doc in docs:
        assert hashlib.sha256(" ".join(doc.split()).encode()).hexdigest() not in train_hashes
      # Beyond whole documents: long passages of the prose, code and held-out sets are
      # not in training either (math questions are short and formulaic, so skipped).
      if name in ("math", "math_extrapolate"):
        continue
      long_docs = [d for d in docs if len(d) > 400]
      for doc in (long_docs[i] for i in rng.integers(0, len(long_docs), 5)):
        start = int(rng.integers(0, len(doc) - 300))
        assert doc[start : start + 300] not in train_text, (role, name)


def test_math_generation_depends_on_neither_the_callers_hash_seed_nor_its_workers():
  # One worker generates in the calling process (under PYTHONHASHSEED 1 and 2); two
  # spawn workers, each with a hash seed of its own.
  script = (
    "import hashlib, random; from train.data.corpus import generate_math; "
    "random.seed(5); before = random.random(); random.seed(5); "
    "docs = generate_math('train', 11, rounds=2, rounds_per_task=1, workers={workers}); "
    "assert random.random() == before, 'the caller random state moved'; "
    "print(hashlib.sha256(''.join(docs).encode()).hexdigest())"
  )
  digests = set()
  for hash_seed, workers in (("1", 1), ("2", 1), ("3", 2)):
    env = dict(os.environ, PYTHONHASHSEED=hash_seed)
    result = subprocess.run(
      [sys.executable, "-c", script.format(workers=workers)],
      capture_output=True,
      text=True,
      env=env,
      cwd=pathlib.Path(__file__).parents[1],
      check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    digests.add(result.stdout.strip())
  assert len(digests) == 1


def test_training_dataset_streams_the_cache(small_corpus, small_cache):
  config = LoaderConfig(seq_len=64, micro_batch_size=4, microbatches=4, seed=0)
  dataset, names = training_dataset(small_cache, "prose=2,code=1,math=1", config)
  assert names == ["prose", "code", "math"]
  step = dataset[0]
  assert step["tokens"].shape == (4, 4, 65) and step["tokens"].dtype == np.int32
  assert step["tokens"].max() <= tokenizer.END_OF_DOCUMENT
  counts = collections.Counter(np.concatenate([dataset[i]["source"].ravel() for i in range(10)]))
  assert counts[0] == 80 and counts[1] == counts[2] == 40
  # The cache's windows are exactly the byte-level packing of the corpus's documents.
  prose = {
    tuple(row) for row in tokenizer.pack(small_corpus.documents("train", "prose"), 64).tolist()
  }
  windows = source_sequences(small_cache, "prose", 64)
  assert len(windows) == len(prose)
  assert {tuple(windows[i].tolist()) for i in range(0, len(windows), 97)} <= prose
  first_prose = step["tokens"][step["source"] == 0][0]
  assert tuple(first_prose.tolist()) in prose
