"""Users' corpora: specs, file formats, tokenizers, the token cache, and their errors.

References are independent of the code under test: documents written by the test and read
back through the cache, ``len(text.encode())`` for byte counts, the ``tokenizers`` and
``sentencepiece`` libraries called directly, and losses recomputed in NumPy.
"""

import gzip
import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import time

import grain
import numpy as np
import pytest

from tests.test_pretrain import REPO, checked, run_cli
from train.data import (
  DataError,
  LoaderConfig,
  TokenCache,
  load_spec,
  load_tokenizer,
  outer_step_dataset,
  parse_spec,
  source_sequences,
)
from train.data import prepare as prepare_lib
from train.data.corpus import SPEC_FILE
from train.data.prepare import prepare

DOCUMENTS = [
  "The quick brown fox\njumps over the lazy dog.\n",
  "def f(x):\n\treturn x ** 2  # square\n",
  "Ünïcödé: naïve café, 日本語, emoji 🙂.",
  "A document that spells <|endoftext|> stays one document.",
  "   leading spaces and trailing ones   ",
  "x",
  "Line one\n\nLine three after a blank line\n",
]


def write_documents(folder: pathlib.Path, form: str, documents=DOCUMENTS) -> str:
  """The documents in one format; returns the spec's train pattern (relative to folder)."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  import zstandard

  folder.mkdir(parents=True, exist_ok=True)
  kind, _, compression = form.partition(".")
  compress = {
    "": lambda data: data,
    "gz": gzip.compress,
    "zst": zstandard.ZstdCompressor().compress,
  }[compression]
  suffix = f".{compression}" if compression else ""
  if kind == "txt":
    for index, document in enumerate(documents):
      (folder / f"doc{index:03d}.txt{suffix}").write_bytes(compress(document.encode()))
    return f"{folder.name}/*.txt{suffix}"
  if kind == "jsonl":
    lines = "".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(documents))
    (folder / f"docs.jsonl{suffix}").write_bytes(compress(lines.encode()))
    return f"{folder.name}/docs.jsonl{suffix}"
  plain = folder / "docs.parquet"
  pq.write_table(
    pa.table({"id": list(range(len(documents))), "text": documents}), plain, row_group_size=3
  )
  if compression:
    (folder / f"docs.parquet{suffix}").write_bytes(compress(plain.read_bytes()))
    plain.unlink()
  return f"{folder.name}/docs.parquet{suffix}"


def write_spec(folder: pathlib.Path, text: str) -> pathlib.Path:
  path = folder / "spec.yaml"
  path.write_text(text)
  return path


def one_domain_spec(folder: pathlib.Path, form: str, documents=DOCUMENTS) -> pathlib.Path:
  pattern = write_documents(folder / "docs", form, documents)
  validation = write_documents(folder / "val", "jsonl", ["held out one", "held out two"])
  return write_spec(
    folder,
    f'domains:\n  prose: {{train: ["{pattern}"], validation: ["{validation}"], weight: 2}}\n',
  )


# ---- formats and round trips ------------------------------------------------------------

FORMATS = ["txt", "jsonl", "parquet", "txt.gz", "jsonl.gz", "parquet.gz", "jsonl.zst"]


@pytest.fixture(scope="module")
def bpe_file(small_corpus, tmp_path_factory):
  """A byte-level BPE trained offline, through the CLI, on the built-in corpus's training text."""
  out = tmp_path_factory.mktemp("bpe") / "tok.json"
  result = checked(
    run_cli(
      ["--spec", small_corpus.root / SPEC_FILE, "--vocab-size", 512, "--out", out, "--no-progress"],
      module="train.data.tokenizer",
    )
  )
  assert "512 tokens" in result.stdout
  return out


@pytest.mark.parametrize("tokenizer", ["bytes", "bpe"])
def test_every_format_round_trips_and_gives_the_same_cache(tokenizer, bpe_file, tmp_path):
  source = "bytes" if tokenizer == "bytes" else str(bpe_file)
  streams = {}
  for form in FORMATS:
    folder = tmp_path / form.replace(".", "_")
    cache = prepare(
      load_spec(one_domain_spec(folder, form)),
      source,
      folder / "cache",
      workers=1,
      show_progress=False,
    )
    assert cache.decode_documents("train", "prose") == DOCUMENTS, form
    assert cache.decode_documents("validation", "prose") == ["held out one", "held out two"]
    info = cache.set_info("train", "prose")
    assert info["documents"] == len(DOCUMENTS)
    assert info["bytes"] == sum(len(d.encode("utf-8")) for d in DOCUMENTS)
    streams[form] = np.concatenate(cache.parts("train", "prose"))
    assert info["tokens"] == len(streams[form])
    assert cache.default_mixture == "prose=2"
  reference = streams["jsonl"]
  for form, stream in streams.items():
    np.testing.assert_array_equal(stream, reference, err_msg=form)
  if tokenizer == "bytes":  # independent reference: UTF-8 bytes, then 256, per document
    expected = np.concatenate(
      [np.append(np.frombuffer(d.encode(), np.uint8), 256) for d in DOCUMENTS]
    )
    np.testing.assert_array_equal(reference, expected)


def test_bpe_tokens_add_up_to_the_texts_bytes(bpe_file, small_corpus):
  from tokenizers import Tokenizer

  ours = load_tokenizer(bpe_file)
  theirs = Tokenizer.from_file(str(bpe_file))
  theirs.encode_special_tokens = True
  assert ours.eod_id == theirs.token_to_id("<|endoftext|>") == 0
  lengths = ours.token_bytes()
  texts = DOCUMENTS + small_corpus.documents("validation", "technical")[:3]
  for text in texts:
    ids = theirs.encode(text, add_special_tokens=False).ids
    np.testing.assert_array_equal(ours.encode(text), ids)
    assert theirs.decode(ids) == text
    assert lengths[ids].sum() == len(text.encode("utf-8"))
  # Subword tokens: fewer tokens than bytes on held-out English.
  text = small_corpus.documents("validation", "prose")[0]
  assert len(ours.encode(text)) < 0.6 * len(text.encode())


def test_a_sentencepiece_model_prepares_and_decodes(sentencepiece_model, tmp_path):
  import sentencepiece as spm

  model = sentencepiece_model
  reference = spm.SentencePieceProcessor(model_file=str(model))
  documents = ["plain words in a sentence", "numbers 12345 and symbols ()[]"]
  folder = tmp_path / "data"
  cache = prepare(
    load_spec(one_domain_spec(folder, "jsonl", documents)),
    str(model),
    folder / "cache",
    workers=1,
    show_progress=False,
  )
  assert cache.tokenizer_info["kind"] == "sentencepiece"
  assert cache.tokenizer_info["eod_id"] == reference.eos_id()
  assert cache.vocab_size == 500 and cache.padded_vocab_size == 512
  stream = np.concatenate(cache.parts("train", "prose")).tolist()
  expected = [t for d in documents for t in reference.encode(d) + [reference.eos_id()]]
  assert stream == expected
  assert cache.decode_documents("train", "prose") == documents
  assert (cache.root / "tokenizer.model").read_bytes() == model.read_bytes()


def test_held_out_fraction_splits_documents_and_is_stated(tmp_path):
  documents = [f"document number {i} with some text" for i in range(3000)]
  pattern = write_documents(tmp_path / "docs", "jsonl", documents)
  spec = write_spec(
    tmp_path, f"domains:\n  a: {{train: [{pattern}], validation_fraction: 0.1}}\nseed: 3\n"
  )
  cache = prepare(load_spec(spec), "bytes", tmp_path / "cache", show_progress=False)
  train = cache.decode_documents("train", "a")
  validation = cache.decode_documents("validation", "a")
  assert sorted(train + validation) == sorted(documents) and not set(train) & set(validation)
  # Binomial(3000, 0.1): mean 300, sd 16.4; 4 sd either way.
  assert 234 < len(validation) < 366
  assert [d for d in documents if d in set(train)] == train  # file order kept
  stated = cache.manifest["domains"]["a"]
  assert stated["validation_fraction"] == 0.1 and "seed 3" in stated["validation"]
  assert f"{len(validation)} of 3000" in stated["validation"]
  other_seed = prepare(
    load_spec(write_spec(tmp_path, spec.read_text().replace("seed: 3", "seed: 4"))),
    "bytes",
    tmp_path / "cache4",
    show_progress=False,
  )
  assert other_seed.decode_documents("validation", "a") != validation


def test_relative_patterns_resolve_against_the_spec_folder(tmp_path, monkeypatch):
  spec = one_domain_spec(tmp_path / "project", "txt")
  monkeypatch.chdir(tmp_path)
  assert load_spec(spec).root == (tmp_path / "project").absolute()
  cache = prepare(
    load_spec(pathlib.Path("project/spec.yaml")), "bytes", tmp_path / "c", show_progress=False
  )
  assert cache.set_info("train", "prose")["documents"] == len(DOCUMENTS)


# ---- the cache feeds the loader -----------------------------------------------------------


@pytest.mark.parametrize("mode", ["mixed", "source"])
def test_cache_streams_keep_proportions_resume_exactly_and_shard_by_rows(small_cache, mode):
  weights = {"prose": 0.5, "code": 0.3, "math": 0.2}
  sequences = {name: source_sequences(small_cache, name, 32) for name in weights}
  config = LoaderConfig(seq_len=32, micro_batch_size=10, microbatches=4, mode=mode, seed=2)
  dataset = outer_step_dataset(sequences, weights, config)
  steps = [dataset[i] for i in range(60)]
  counts = np.bincount(np.concatenate([s["source"].ravel() for s in steps]), minlength=3)
  np.testing.assert_allclose(counts / counts.sum(), [0.5, 0.3, 0.2], atol=0.01)
  iterator = iter(dataset.to_iter_dataset())
  for _ in range(5):
    next(iterator)
  state = iterator.get_state()
  expected = [next(iterator)["tokens"] for _ in range(3)]
  resumed = iter(dataset.to_iter_dataset())
  resumed.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(resumed)["tokens"], want)
  shards = [
    outer_step_dataset(
      sequences, weights, config, grain.sharding.ShardOptions(shard_index=i, shard_count=2)
    )
    for i in range(2)
  ]
  for index in range(4):
    rebuilt = np.concatenate([shard[index]["tokens"] for shard in shards], axis=1)
    np.testing.assert_array_equal(rebuilt, dataset[index]["tokens"])


def test_windows_cross_part_boundaries_like_one_packed_stream(tmp_path):
  documents = [f"file {i}: " + "abc" * (i + 1) for i in range(40)]  # 40 one-document parts
  pattern = write_documents(tmp_path / "docs", "txt", documents)
  spec = write_spec(
    tmp_path, f'domains:\n  a: {{train: ["{pattern}"], validation: ["{pattern}"]}}\n'
  )
  original = prepare_lib.TASK_BYTES
  prepare_lib.TASK_BYTES = 50  # a task, and a part, for about every file
  try:
    cache = prepare(load_spec(spec), "bytes", tmp_path / "cache", show_progress=False)
  finally:
    prepare_lib.TASK_BYTES = original
  assert len(cache.set_info("train", "a")["parts"]) > 20
  from train.data.tokenizer import pack

  expected = pack(documents, 16)
  windows = cache.windows("train", "a", 16)
  assert len(windows) == len(expected)
  np.testing.assert_array_equal(np.stack([windows[i] for i in range(len(windows))]), expected)


# ---- a run on a BPE cache ---------------------------------------------------------------


def test_a_run_on_a_bpe_cache_trains_evaluates_and_reports_bpb_by_hand(
  small_corpus, small_cache, bpe_file, tmp_path, capsys
):
  cache_dir = tmp_path / "cache"
  root = small_corpus.root  # two of its domains and one held-out set, to keep the test short
  spec = write_spec(
    tmp_path,
    "domains:\n"
    + "".join(
      f"  {d}: {{train: [{root}/train/{d}.jsonl], validation: [{root}/validation/{d}.jsonl]}}\n"
      for d in ("technical", "math")
    )
    + f"heldout:\n  milton: [{root}/heldout/milton.jsonl]\n",
  )
  checked(
    run_cli(
      ["--spec", spec, "--tokenizer", bpe_file, "--out", cache_dir, "--no-progress"],
      module="train.data.prepare",
    )
  )
  cache = TokenCache(cache_dir)
  assert cache.padded_vocab_size == 512 and cache.tokenizer_info["kind"] == "huggingface"
  out = tmp_path / "run"
  checked(
    run_cli(
      [
        "--preset",
        "tiny",
        "--steps",
        12,
        "--lr",
        1e-2,
        "--eval-every",
        0,
        "--log-every",
        1,
        "--checkpoint-every",
        12,
        "--mesh",
        "data=1",
        "--data",
        cache_dir,
        "--out",
        out,
      ]
    )
  )
  records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
  losses = [r["train_loss"] for r in records if "train_loss" in r]
  assert np.mean(losses[-5:]) < np.mean(losses[:3]) - 0.5, losses
  config = json.loads((out / "config.json").read_text())
  assert config["dataset"]["tokenizer"]["hash"] == cache.tokenizer_info["hash"]
  assert config["dataset"]["vocab_size"] == 512
  assert (out / "tokenizer.json").read_bytes() == pathlib.Path(bpe_file).read_bytes()
  final = records[-1]
  for key in (
    "validation/technical",
    "heldout/milton",
  ):  # bpb = nats / (ln 2 bytes), bytes > tokens
    assert final[f"{key}/bpb"] < final[f"{key}/loss"] / math.log(2)

  text = small_corpus.documents("heldout", "milton")[0][:3000]
  text_file = tmp_path / "milton.txt"
  text_file.write_text(text)
  result = json.loads(
    checked(
      run_cli(["--checkpoint", out, "--text-file", text_file, "--json"], module="train.evaluate")
    ).stdout
  )

  # By hand: tokenize with the tokenizers library, window, and score in NumPy.
  import orbax.checkpoint as ocp
  from flax import nnx
  from tokenizers import Tokenizer

  from models import Llama, get_preset

  hf = Tokenizer.from_file(str(bpe_file))
  hf.encode_special_tokens = True
  stream = np.array([0] + hf.encode(text, add_special_tokens=False).ids)
  state = ocp.StandardCheckpointer().restore(out.absolute() / "checkpoints" / "12" / "state")
  graphdef = nnx.split(
    nnx.eval_shape(lambda: Llama(get_preset("tiny", vocab_size=512), rngs=nnx.Rngs(0))), nnx.Param
  )[0]
  model = nnx.merge(graphdef, state["params"])
  nats = []
  for start in range(0, len(stream) - 1, 64):
    window = stream[start : start + 65]
    logits = np.asarray(model(window[None, :-1]), np.float64)[0]
    logits -= logits.max(axis=-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    nats.extend(-log_probs[np.arange(len(window) - 1), window[1:]])
  assert result["tokens"] == len(stream) - 1 == len(nats)
  assert result["bytes"] == len(text.encode("utf-8"))
  assert result["loss"] == pytest.approx(np.mean(nats), rel=1e-4)
  assert result["bpb"] == pytest.approx(np.sum(nats) / (math.log(2) * len(text.encode())), rel=1e-4)
  assert result["bpb"] == pytest.approx(
    result["loss"] * result["tokens"] / (result["bytes"] * math.log(2)), rel=1e-9
  )

  # --resume on a cache with another tokenizer, or another spec, is refused.
  from tests.test_pretrain import expect_error

  resume = [
    "--preset",
    "tiny",
    "--steps",
    12,
    "--lr",
    1e-2,
    "--mesh",
    "data=1",
    "--out",
    out,
    "--resume",
    "--no-progress",
  ]
  expect_error(
    [*resume, "--data", small_cache.root, "--mixture", "technical=1,math=1"],
    "has another tokenizer than the checkpoint's",
    capsys,
  )
  reweighted = write_spec(tmp_path, spec.read_text().replace("]}", "], weight: 2}"))
  other = prepare(load_spec(reweighted), str(bpe_file), tmp_path / "other", show_progress=False)
  expect_error(
    [*resume, "--data", other.root, "--mixture", "technical=1,math=1"],
    "has another data spec than the checkpoint's",
    capsys,
  )


# ---- crash safety -----------------------------------------------------------------------


def test_a_killed_prepare_leaves_no_complete_cache_and_a_rerun_finishes_it(tmp_path, capsys):
  documents = [f"{i} " + "lorem ipsum dolor sit amet " * 40 for i in range(3000)]
  folder = tmp_path / "data"
  for shard in range(8):  # 8 tasks of about 1 MB, done one after another
    write_documents(folder / f"s{shard}", "jsonl", documents)
  spec = write_spec(
    folder, 'domains:\n  a: {train: ["s*/docs.jsonl"], validation: ["s0/docs.jsonl"]}\n'
  )
  reference = prepare(load_spec(spec), "bytes", tmp_path / "reference", show_progress=False)
  out = tmp_path / "cache"
  environment = dict(os.environ, NEXUS_PREPARE_TASK_BYTES="1")
  command = [
    sys.executable,
    "-m",
    "train.data.prepare",
    "--spec",
    str(spec),
    "--tokenizer",
    "bytes",
    "--out",
    str(out),
    "--workers",
    "1",
    "--no-progress",
  ]
  process = subprocess.Popen(
    command,
    cwd=REPO,
    env=environment,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    start_new_session=True,
  )
  deadline = time.time() + 120
  while time.time() < deadline and not list(out.glob("parts/train/a/*.done.json")):
    time.sleep(0.05)
  os.killpg(process.pid, signal.SIGKILL)  # the pool's worker too
  process.wait()
  finished = list(out.glob("parts/*/a/*.done.json"))
  tasks = 8 + 1  # one task per file with NEXUS_PREPARE_TASK_BYTES=1: 8 train, 1 validation
  assert 1 <= len(finished) < tasks  # killed midway: some parts done, others not
  assert not (out / "manifest.json").exists()
  with pytest.raises(DataError, match="incomplete cache .* rerun the same"):
    TokenCache(out)
  refused = run_cli(["--preset", "tiny", "--data", out, "--out", tmp_path / "run"])
  assert refused.returncode == 2
  assert refused.stderr.strip().splitlines()[-1].startswith(f"error: --data {out} is an incomplete")
  stamps = {p.name: p.stat().st_mtime_ns for p in finished}
  checked(subprocess.run(command, cwd=REPO, env=environment, capture_output=True, check=False))
  for path in finished:  # finished tasks were kept, not redone
    assert path.stat().st_mtime_ns == stamps[path.name]
  assert len(list(out.glob("parts/*/a/*.done.json"))) == tasks
  cache = TokenCache(out)
  for role in ("train", "validation"):
    np.testing.assert_array_equal(
      np.concatenate(cache.parts(role, "a")), np.concatenate(reference.parts(role, "a"))
    )


# ---- bad input --------------------------------------------------------------------------


def expect_prepare_error(spec_text, files, message, tmp_path, capsys, tokenizer="bytes"):
  for name, payload in files.items():
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
  spec = write_spec(tmp_path, spec_text)
  code = prepare_lib.main(
    [
      "--spec",
      str(spec),
      "--tokenizer",
      str(tokenizer),
      "--out",
      str(tmp_path / "cache"),
      "--no-progress",
    ]
  )
  err = capsys.readouterr().err.strip()
  assert code == 2, err
  assert err.startswith("error: ") and len(err.splitlines()) == 1, err
  assert message in err, err
  assert not (tmp_path / "cache" / "manifest.json").exists()


GOOD = {"a.jsonl": b'{"text": "hello"}\n{"text": "world"}\n'}


def _bad_parquet() -> bytes:
  return b"PAR1" + b"\x00" * 64 + b"PAR1"


@pytest.mark.parametrize(
  "spec_text, files, message",
  [
    (
      "domains:\n  a: {train: [nothing/*.jsonl]}\n",
      {},
      "pattern 'nothing/*.jsonl' matches no file",
    ),
    (
      "domains:\n  a: {train: [a.jsonl]}\n",
      {"a.jsonl": b'{"text": "ok"}\n{"text": oops}\n'},
      "a.jsonl, line 2: not valid JSON",
    ),
    (
      "domains:\n  a: {train: [a.jsonl.gz]}\n",
      {"a.jsonl.gz": gzip.compress(b'{"text": "x"}\n')[:12]},
      "a.jsonl.gz is unreadable or corrupt",
    ),
    (
      "domains:\n  a: {train: [a.parquet]}\n",
      {"a.parquet": _bad_parquet()},
      "a.parquet is unreadable or corrupt",
    ),
    (
      "domains:\n  a: {train: [a.jsonl], text_key: content}\n",
      GOOD,
      "a.jsonl, line 1: no field 'content' (it has 'text'); set text_key",
    ),
    (
      "domains:\n  a: {train: [a.jsonl]}\n",
      {"a.jsonl": b'{"text": ""}\n'},
      "train set 'a' is empty",
    ),
    ("domains:\n  a: {train: [a.jsonl], weight: 0}\n", GOOD, "weight must be a finite number > 0"),
    ("domains:\n  a: {train: [a.jsonl], weight: -1}\n", GOOD, "weight must be a finite number > 0"),
    ("domains:\n  a: {train: [a.csv]}\n", {"a.csv": b"x"}, "a.csv: unknown file type; use .txt"),
    ("domains: [a, b\n", {}, "is not valid YAML at line"),
    ("domains:\n  a: {train: [a.jsonl], wieght: 1}\n", GOOD, "unknown key 'wieght'"),
    ("domian:\n  a: {train: [a.jsonl]}\n", GOOD, "unknown key 'domian'"),
    (
      "domains:\n  a: {train: [a.jsonl], validation_fraction: 0.001}\n",
      GOOD,
      "held out no validation document at validation_fraction 0.001",
    ),
  ],
)
def test_bad_data_input_gets_a_one_line_error(spec_text, files, message, tmp_path, capsys):
  expect_prepare_error(spec_text, files, message, tmp_path, capsys)


def test_a_missing_parquet_column_names_the_columns(tmp_path, capsys):
  write_documents(tmp_path / "docs", "parquet")
  expect_prepare_error(
    "domains:\n  a: {train: [docs/docs.parquet], text_key: body}\n",
    {},
    "no column 'body' (it has 'id', 'text')",
    tmp_path,
    capsys,
  )


@pytest.mark.parametrize(
  "name, payload, message",
  [
    ("tok.json", b'{"model": "nonsense"}', "does not load as a Hugging Face tokenizers file"),
    ("tok.model", b"\x00\x01garbage", "does not load as a SentencePiece model"),
    ("missing.json", None, "is not a file"),
  ],
)
def test_a_tokenizer_that_does_not_load_gets_a_one_line_error(
  name, payload, message, tmp_path, capsys
):
  if payload is not None:
    (tmp_path / name).write_bytes(payload)
  expect_prepare_error(
    "domains:\n  a: {train: [a.jsonl]}\n",
    GOOD,
    message,
    tmp_path,
    capsys,
    tokenizer=tmp_path / name,
  )


def test_data_that_is_missing_or_not_a_cache_is_refused(small_cache, tmp_path, capsys):
  from tests.test_pretrain import expect_error, tiny_args

  expect_error(
    tiny_args(small_cache, tmp_path / "r2", data=tmp_path / "nowhere"),
    "no such folder; prepare one with",
    capsys,
  )
  expect_error(
    tiny_args(small_cache, tmp_path / "r3", data=tmp_path),
    "is not a prepared cache (no manifest.json)",
    capsys,
  )
  expect_error(
    [*tiny_args(small_cache, tmp_path / "r4"), "--tokenizer", "bpe-512"],
    "applies to the built-in corpus",
    capsys,
  )


def test_spec_parsing_fills_defaults_and_hashes_content():
  text = (
    "domains:\n  code: {train: [c/*.jsonl], weight: 0.3, text_key: content}\n"
    "  prose: {train: ['b/**/*.txt'], validation: [v.txt]}\nheldout:\n  gsm: [g.jsonl]\n"
    "  champ: {files: [c.parquet], text_key: problem}\n"
  )
  spec = parse_spec(text, pathlib.Path("/data"))
  assert [d.name for d in spec.domains] == ["code", "prose"]
  assert spec.weights == {"code": 0.3, "prose": 1.0} and spec.mixture() == "code=0.3,prose=1"
  assert spec.domains[0].train.text_key == "content" and spec.domains[0].validation is None
  assert spec.domains[1].validation.patterns == ("v.txt",)
  assert spec.heldout["champ"].text_key == "problem" and spec.heldout["gsm"].text_key == "text"
  assert spec.hash == parse_spec(text.replace("0.3", "0.30"), pathlib.Path("/elsewhere")).hash
  assert spec.hash != parse_spec(text.replace("0.3", "0.4"), pathlib.Path("/data")).hash


def test_the_worked_example_writes_files_that_prepare(small_corpus, tmp_path):
  from examples import own_data

  data = tmp_path / "mydata"
  assert own_data.main(["--out", str(data), "--corpus", str(small_corpus.root)]) == 0
  cache = prepare(
    load_spec(data / "spec.yaml"), "bytes", tmp_path / "cache", workers=1, show_progress=False
  )
  assert cache.names("train") == ["code", "math", "prose"]
  assert cache.names("heldout") == ["humaneval", "milton"]
  assert cache.default_mixture == "code=0.4,math=0.3,prose=0.3"
  works = small_corpus.documents("train", "prose")[:10]
  train, validation = (cache.decode_documents(role, "prose") for role in ("train", "validation"))
  assert len(validation) == 2 and sorted(train + validation) == sorted(works)
  assert cache.decode_documents("validation", "code") == small_corpus.documents(
    "validation", "code"
  )
  assert cache.manifest["domains"]["code"]["validation"] == "files"


def test_a_rerun_finds_a_complete_cache_and_redoes_only_changed_inputs(tmp_path):
  spec = one_domain_spec(tmp_path, "jsonl")
  first = prepare(load_spec(spec), "bytes", tmp_path / "cache", show_progress=False)
  validation_part = first.root / first.set_info("validation", "prose")["parts"][0]["file"]
  stamp = validation_part.stat().st_mtime_ns
  with open(tmp_path / "docs" / "docs.jsonl", "a") as stream:
    stream.write(json.dumps({"text": "a document added later"}) + "\n")
  again = prepare(load_spec(spec), "bytes", tmp_path / "cache", show_progress=False)
  assert again.decode_documents("train", "prose") == DOCUMENTS + ["a document added later"]
  assert validation_part.stat().st_mtime_ns == stamp  # its input did not change
  reweighted = write_spec(tmp_path, spec.read_text().replace("weight: 2", "weight: 5"))
  with pytest.raises(DataError, match="already holds a cache of another spec or tokenizer"):
    prepare(load_spec(reweighted), "bytes", tmp_path / "cache", show_progress=False)


def test_the_built_in_corpus_prepares_with_a_bpe_trained_on_it(small_corpus, bpe_file, tmp_path):
  import shutil

  from train.data.corpus import CorpusSpec, ensure_default_cache
  from train.data.tokenizer import TokenizerError

  spec = CorpusSpec(
    math_train_rounds=12,
    math_validation_rounds=4,
    math_extrapolate_rounds=2,
    rounds_per_task=6,
    extrapolate_rounds_per_task=1,
  )
  shutil.copytree(small_corpus.root, tmp_path / "corpus" / spec.key())  # found, not rebuilt
  cache = ensure_default_cache(spec, root=tmp_path, show_progress=False, tokenizer="bpe-512")
  assert cache.tokenizer_info["kind"] == "huggingface" and cache.vocab_size == 512
  # The same training text as the CLI's, so the same tokenizer, byte for byte.
  assert cache.tokenizer_info["hash"] == load_tokenizer(bpe_file).hash
  assert cache.names("train") == ["prose", "code", "math", "technical"]
  assert ensure_default_cache(spec, root=tmp_path, tokenizer="bpe-512").root == cache.root
  with pytest.raises(TokenizerError, match="unknown built-in tokenizer 'wordpiece'"):
    ensure_default_cache(spec, root=tmp_path, tokenizer="wordpiece")
