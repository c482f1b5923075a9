"""Hugging Face interop: export to transformers' Llama, start runs from Llama checkpoints.

transformers' ``LlamaForCausalLM`` (PyTorch, float32, CPU) is the independent reference:
its logits, its scoring of a text file and its own ``save_pretrained`` files are what
ours must match. Tests that need it skip where PyTorch is not installed (Python 3.12).
"""

import dataclasses
import json
import math
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from benchmarks.hf_interop import random_params
from models import PRESETS, Llama, get_preset
from models.hf_llama import HFCheckpointError
from train import evaluate as evaluate_cli
from train import export_hf
from train.data.tokenizer import ByteTokenizer, encode, load_tokenizer, train_bpe
from train.hf import checkpoint_tokenizer, read_checkpoint, write_checkpoint, write_tokenizer
from train.pretrain import main as pretrain_main
from train.runs import restore_run

RELATIVE = 1e-4
TEXT = (
  "Call me Ishmael. Some years ago, never mind how long precisely, having little or no "
  "money in my purse, and nothing particular to interest me on shore, I thought I would "
  "sail about a little and see the watery part of the world. "
) * 3


def torch_and_transformers():
  return pytest.importorskip("torch"), pytest.importorskip("transformers")


def flax_logits(config, params, tokens) -> np.ndarray:
  model = Llama(config, rngs=nnx.Rngs(0))
  graphdef, _ = nnx.split(model, nnx.Param)
  return np.asarray(nnx.merge(graphdef, jax.tree.map(jnp.asarray, params))(jnp.asarray(tokens)))


def transformers_logits(directory, tokens) -> np.ndarray:
  torch, transformers = torch_and_transformers()
  model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
  assert type(model).__name__ == "LlamaForCausalLM"
  with torch.no_grad():
    return model(torch.from_numpy(np.asarray(tokens, np.int64))).logits.numpy()


def assert_close(ours, theirs):
  scale = np.abs(theirs).max()
  assert np.abs(ours - theirs).max() <= RELATIVE * scale, (np.abs(ours - theirs).max(), scale)


def safetensors_of(directory) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file

  return load_file(str(pathlib.Path(directory) / "model.safetensors"))


VARIANTS = {
  # The tiny preset: grouped-query attention (2 query heads per kv head), untied output.
  "tiny-gqa-untied": PRESETS["tiny"],
  # Multi-head, tied, and every number that a converter could drop: a head width that
  # is not hidden / heads, another RoPE base and RMSNorm epsilon, a padded vocabulary.
  "tied-mha": get_preset(
    "tiny",
    num_kv_heads=4,
    tie_embeddings=True,
    head_dim=24,
    rope_theta=500_000.0,
    norm_eps=1e-6,
    vocab_size=512,
  ),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_transformers_llama_gives_the_flax_logits(name, tmp_path):
  _, transformers = torch_and_transformers()
  config = VARIANTS[name]
  params = random_params(config)
  write_checkpoint(tmp_path, params, config, ByteTokenizer())
  hf_config = transformers.AutoConfig.from_pretrained(tmp_path)
  assert (
    hf_config.vocab_size,
    hf_config.num_key_value_heads,
    hf_config.head_dim,
    hf_config.tie_word_embeddings,
    hf_config.rms_norm_eps,
  ) == (
    config.vocab_size,
    config.num_kv_heads,
    config.resolved_head_dim,
    config.tie_embeddings,
    config.norm_eps,
  )
  assert hf_config.rope_parameters["rope_theta"] == config.rope_theta
  assert ("lm_head.weight" in safetensors_of(tmp_path)) == (not config.tie_embeddings)
  tokens = np.random.default_rng(1).integers(0, 257, (2, 40))
  assert_close(flax_logits(config, params, tokens), transformers_logits(tmp_path, tokens))

  # The byte tokenizer, through AutoTokenizer: the same ids, 257 tokens in a padded vocab.
  tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
  # Text that spells the end-of-document token stays text, as in training; the default
  # call adds no special token either.
  text = "naïve café, 日本語 and\ttabs\n a<|endoftext|>b"
  assert tokenizer(text, add_special_tokens=False)["input_ids"] == encode(text).tolist()
  assert tokenizer(text)["input_ids"] == encode(text).tolist()
  assert len(tokenizer) == 257 < config.vocab_size
  assert tokenizer.eos_token_id == tokenizer.bos_token_id == 256 == hf_config.eos_token_id
  assert tokenizer.decode(encode(text)) == text
  assert isinstance(load_tokenizer(tmp_path / "tokenizer.json"), ByteTokenizer)


def test_a_bpe_tokenizer_is_exported_as_the_file_it_trained_with(tmp_path):
  _, transformers = torch_and_transformers()
  ours = train_bpe(
    [TEXT, "def f(x):\n    return x + 1\n"] * 20, 300, tmp_path / "bpe.json", show_progress=False
  )
  exported = tmp_path / "export"
  exported.mkdir()
  write_tokenizer(exported, ours, max_length=128)
  assert (exported / "tokenizer.json").read_bytes() == (tmp_path / "bpe.json").read_bytes()
  tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
  text = TEXT[:200] + " def g(y): return y"
  assert tokenizer(text, add_special_tokens=False)["input_ids"] == ours.encode(text).tolist()
  assert tokenizer.eos_token_id == ours.eod_id and tokenizer.eos_token == "<|endoftext|>"


def test_a_sentencepiece_tokenizer_exports_to_an_equivalent_tokenizer_json(
  sentencepiece_model, tmp_path
):
  _, transformers = torch_and_transformers()
  import sentencepiece as spm

  model = sentencepiece_model
  reference = spm.SentencePieceProcessor(model_file=str(model))
  exported = tmp_path / "export"
  exported.mkdir()
  write_tokenizer(exported, load_tokenizer(model), max_length=128)
  tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
  for text in [
    "plain words",
    "  leading and  inner   spaces ",
    "lines\n\nand\ttabs",
    "日本語 and naïve bytes €",
    TEXT[:300],
  ]:
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == reference.encode(text), text
  assert tokenizer.eos_token_id == reference.eos_id()
  # Runs started from an export read the SentencePiece model itself, the run's tokenizer
  # (its config.json names the model's hash); other folders, what transformers reads.
  run_tokenizer = load_tokenizer(model)
  assert (
    checkpoint_tokenizer(exported, {"tokenizer_hash": run_tokenizer.hash}).hash
    == run_tokenizer.hash
  )
  assert checkpoint_tokenizer(exported).kind == "huggingface"


# ------------------------------------------------------------- a trained run, exported


@pytest.fixture(scope="module")
def trained_run(small_cache, tmp_path_factory):
  """A tiny Nexus run of a few steps on the small corpus, and its export."""
  root = tmp_path_factory.mktemp("hf")
  run, exported = root / "run", root / "exported"
  code = pretrain_main(
    [
      "--preset",
      "tiny",
      "--optimizer",
      "nexus",
      "--steps",
      "6",
      "--checkpoint-every",
      "3",
      "--eval-every",
      "0",
      "--log-every",
      "1",
      "--mesh",
      "data=1",
      "--data",
      str(small_cache.root),
      "--out",
      str(run),
      "--no-progress",
    ]
  )
  assert code == 0
  assert export_hf.main(["--checkpoint", str(run), "--out", str(exported)]) == 0
  return run, exported


def test_an_exported_trained_checkpoint_gives_the_run_s_logits(trained_run):
  run_dir, exported = trained_run
  run = restore_run(run_dir)
  assert run.step == 6
  params = jax.tree.map(np.asarray, jax.device_get(run.params))
  initial = random_params(run.training.model_config, seed=0)  # trained weights moved
  assert not np.allclose(params["embedding"], initial["embedding"])
  tokens = np.random.default_rng(2).integers(0, 257, (2, 64))
  assert_close(
    flax_logits(run.training.model_config, params, tokens), transformers_logits(exported, tokens)
  )
  recorded = json.loads((exported / "config.json").read_text())["nexus_optax"]
  assert recorded["step"] == 6 and recorded["seq_len"] == 64 and recorded["optimizer"] == "nexus"


def test_an_earlier_step_and_bfloat16_export(trained_run, tmp_path):
  import ml_dtypes

  run_dir, exported = trained_run
  assert (
    export_hf.main(
      ["--checkpoint", str(run_dir), "--step", "3", "--out", str(tmp_path), "--dtype", "bfloat16"]
    )
    == 0
  )
  assert json.loads((tmp_path / "config.json").read_text())["nexus_optax"]["step"] == 3
  step3 = restore_run(run_dir / "checkpoints" / "3")
  assert {array.dtype for array in safetensors_of(tmp_path).values()} == {
    np.dtype(ml_dtypes.bfloat16)
  }
  # transformers reads the bfloat16 file back as the step-3 weights rounded to bfloat16.
  rounded = jax.tree.map(
    lambda a: np.asarray(a).astype(ml_dtypes.bfloat16).astype(np.float32),
    jax.device_get(step3.params),
  )
  tokens = np.random.default_rng(4).integers(0, 257, (1, 64))
  assert_close(
    flax_logits(step3.training.model_config, rounded, tokens), transformers_logits(tmp_path, tokens)
  )


def test_transformers_scores_a_text_file_as_train_evaluate_does(trained_run, tmp_path, capsys):
  torch_and_transformers()
  run_dir, exported = trained_run
  text_file = tmp_path / "moby.txt"
  text_file.write_text(TEXT)
  scores = {}
  for flag, path in (("--checkpoint", run_dir), ("--hf", exported)):
    assert evaluate_cli.main([flag, str(path), "--text-file", str(text_file), "--json"]) == 0
    scores[flag] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  ours, theirs = scores["--checkpoint"], scores["--hf"]
  assert ours["tokens"] == theirs["tokens"] == len(TEXT.encode()) > 3 * 64  # several windows
  assert math.isclose(ours["loss"], theirs["loss"], rel_tol=1e-5), (ours, theirs)
  assert math.isclose(ours["bpb"], theirs["bpb"], rel_tol=1e-5)
  assert theirs["step"] == 6


def checkpoint_on_disk(run_dir, step) -> dict:
  """A checkpoint's whole state as plain orbax reads it, with nothing of ours: the
  independent reader that the params-only restore is held to."""
  import orbax.checkpoint as ocp

  path = pathlib.Path(run_dir).absolute() / "checkpoints" / str(step) / "state"
  return jax.tree.map(np.asarray, ocp.StandardCheckpointer().restore(path))


def by_path(tree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(k): np.asarray(leaf) for k, leaf in jax.tree.leaves_with_path(tree)}


def flat_names(tree) -> list[str]:
  """orbax's names of a tree's leaves: their keys joined by dots."""
  return [".".join(str(key.key) for key in path) for path, _ in jax.tree.leaves_with_path(tree)]


def spy_on_orbax_reads(monkeypatch) -> list[str]:
  """The names of the arrays that orbax reads from disk from now on, as it reads them."""
  import orbax.checkpoint as ocp

  read = []
  handlers = (
    ocp.type_handlers.ArrayHandler,
    ocp.type_handlers.NumpyHandler,
    ocp.type_handlers.ScalarHandler,
  )
  for handler in handlers:

    async def deserialize(self, infos, args=None, original=handler.deserialize):
      read.extend(info.name for info in infos)
      return await original(self, infos, args)

    monkeypatch.setattr(handler, "deserialize", deserialize)
  return read


def test_export_and_evaluate_read_the_params_alone(trained_run, monkeypatch):
  run_dir, _ = trained_run
  on_disk = checkpoint_on_disk(run_dir, 6)
  params_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(on_disk["params"]))
  # Nexus over AdamW: the two moments that reading the params alone leaves on disk.
  assert sum(leaf.nbytes for leaf in jax.tree.leaves(on_disk["opt_state"])) >= 2 * params_bytes
  read = spy_on_orbax_reads(monkeypatch)
  run = restore_run(run_dir)  # what train.export_hf and train.evaluate --checkpoint read
  assert run.step == 6
  want, got = by_path(on_disk["params"]), by_path(run.params)
  assert sorted(got) == sorted(want)
  for path, array in want.items():
    np.testing.assert_array_equal(got[path], array, err_msg=path)
  assert sorted(read) == sorted(f"params.{name}" for name in flat_names(on_disk["params"]))


def test_an_unreadable_newest_checkpoint_is_skipped_for_the_one_before(
  trained_run, tmp_path, capsys
):
  run_dir, _ = trained_run
  copy = tmp_path / "run"
  shutil.copytree(run_dir, copy)
  for file in (copy / "checkpoints" / "6" / "state").rglob("*"):
    if file.is_file():
      file.write_bytes(b"\0garbage")
  run = restore_run(copy)
  err = capsys.readouterr().err
  assert run.step == 3
  assert "warning: checkpoint 6 is unreadable" in err and "skipping it" in err, err
  assert (copy / "checkpoints" / "6").is_dir() and not (copy / "corrupt").exists()  # read-only
  want, got = by_path(checkpoint_on_disk(run_dir, 3)["params"]), by_path(run.params)
  assert sorted(got) == sorted(want)
  for path, array in want.items():
    np.testing.assert_array_equal(got[path], array, err_msg=path)


def test_a_run_from_an_export_starts_at_the_exporting_run_s_final_loss_and_resumes_exactly(
  trained_run, small_cache, tmp_path
):
  run_dir, exported = trained_run
  out = tmp_path / "continued"
  flags = [
    "--preset",
    "tiny",
    "--optimizer",
    "adamw",
    "--steps",
    "4",
    "--checkpoint-every",
    "2",
    "--eval-every",
    "0",
    "--log-every",
    "1",
    "--mesh",
    "data=1",
    "--init-from-hf",
    str(exported),
    "--data",
    str(small_cache.root),
    "--out",
    str(out),
    "--no-progress",
  ]
  assert pretrain_main(flags) == 0
  final = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
  records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
  start = records[0]
  assert start["step"] == 0 and final["step"] == 6
  keys = [key for key in final if key.endswith("/loss")]
  assert len(keys) >= 6
  for key in keys:
    assert math.isclose(start[key], final[key], rel_tol=1e-6, abs_tol=1e-6), key
  assert (
    records[-1]["step"] == 4
    and records[-1]["validation/prose/loss"] != final["validation/prose/loss"]
  )
  saved = json.loads((out / "config.json").read_text())
  assert saved["init_from_hf"] == str(exported) and saved["tokenizer"] == ""
  exporting = restore_run(run_dir).training.model_config
  assert saved["model_config"] == dataclasses.asdict(
    dataclasses.replace(exporting, head_dim=exporting.resolved_head_dim)
  )

  # Preempted after step 2: the resumed run ends bit-identical, step-0 record kept.
  uninterrupted = jax.tree.leaves(jax.device_get(restore_run(out).params))
  shutil.rmtree(out / "checkpoints" / "4")
  assert pretrain_main([*flags, "--resume"]) == 0
  resumed = jax.tree.leaves(jax.device_get(restore_run(out).params))
  assert all(np.array_equal(a, b) for a, b in zip(uninterrupted, resumed))
  steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
  assert steps == [0, 1, 2, 3, 4]


# Llama 3.1's RoPE scaling, with an original context short enough that the tiny heads'
# frequencies fall in all three bands (slowed, blended and kept).
LLAMA3_ROPE = {
  "rope_type": "llama3",
  "rope_theta": 10_000.0,
  "factor": 8.0,
  "low_freq_factor": 1.0,
  "high_freq_factor": 4.0,
  "original_max_position_embeddings": 32,
}


def hf_llama_dir(directory, dtype="float32", rope=None, tied=False):
  """A checkpoint written by transformers itself: a random GQA Llama, with our byte
  tokenizer beside it; a tied one is saved in shards with an index."""
  torch, transformers = torch_and_transformers()
  torch.manual_seed(0)
  config = transformers.LlamaConfig(
    vocab_size=384,
    hidden_size=48,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=6,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    tie_word_embeddings=tied,
    rope_parameters=rope,
  )
  model = transformers.LlamaForCausalLM(config)
  with torch.no_grad():
    for name, tensor in model.named_parameters():
      if "norm" in name:
        tensor.uniform_(0.5, 1.5)
  model.to(getattr(torch, dtype)).save_pretrained(
    directory, safe_serialization=True, max_shard_size="20KB" if tied else "5GB"
  )
  write_tokenizer(pathlib.Path(directory), ByteTokenizer(), 128)
  return pathlib.Path(directory)


def hf_tensors(directory) -> dict[str, np.ndarray]:
  """Every tensor of a folder, from one file or from the shards of its index."""
  from safetensors.numpy import load_file

  tensors = {}
  for file in sorted(pathlib.Path(directory).glob("*.safetensors")):
    tensors.update(load_file(str(file)))
  return tensors


@pytest.mark.parametrize(
  "dtype,rope,tied",
  [
    ("float32", None, False),
    ("bfloat16", None, False),
    ("float32", LLAMA3_ROPE, False),
    ("float32", None, True),
  ],
  ids=["f32", "bf16", "llama3", "tied-sharded"],
)
def test_transformers_to_nexus_to_transformers_is_bit_exact(dtype, rope, tied, tmp_path):
  source = hf_llama_dir(tmp_path / "hf", dtype, rope, tied)
  assert (source / "model.safetensors.index.json").exists() == tied
  checkpoint = read_checkpoint(source, get_preset("tiny"))
  assert checkpoint.model_config.num_kv_heads == 2 and checkpoint.model_config.hidden_dim == 48
  assert checkpoint.model_config.tie_embeddings == tied
  params = checkpoint.params()
  assert params["blocks"]["attention"]["query"].shape == (2, 48, 6, 8)
  write_checkpoint(tmp_path / "back", params, checkpoint.model_config, checkpoint.tokenizer, dtype)
  original, back = hf_tensors(source), safetensors_of(tmp_path / "back")
  assert sorted(original) == sorted(back)
  for name in original:
    assert back[name].dtype == original[name].dtype
    np.testing.assert_array_equal(back[name], original[name], err_msg=name)
  if dtype == "float32":  # positions far past the original context, where scaling acts
    tokens = np.random.default_rng(3).integers(0, 257, (1, 120))
    ours = flax_logits(checkpoint.model_config, params, tokens)
    assert_close(ours, transformers_logits(source, tokens))
    assert_close(ours, transformers_logits(tmp_path / "back", tokens))
  if rope:
    scaling = checkpoint.model_config.rope_scaling
    assert (scaling.factor, scaling.original_max_position_embeddings) == (8.0, 32)
    written = json.loads((tmp_path / "back" / "config.json").read_text())["rope_parameters"]
    assert written == {**LLAMA3_ROPE, "rope_theta": 10_000.0}


# --------------------------------------------------------------------------- bad input


def broken_copies(exported: pathlib.Path, root: pathlib.Path) -> dict[str, pathlib.Path]:
  def copy(name, edit=None, remove=None):
    target = root / name
    shutil.copytree(exported, target)
    if edit:
      config = json.loads((target / "config.json").read_text())
      config.update(edit)
      (target / "config.json").write_text(json.dumps(config))
    if remove:
      (target / remove).unlink()
    return target

  return {
    "no config.json": copy("no-config", remove="config.json"),
    "not a Llama": copy("gpt2", edit={"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}),
    "mismatched shapes": copy("shapes", edit={"intermediate_size": 256}),
    "no tokenizer": copy("no-tokenizer", remove="tokenizer.json"),
  }


@pytest.mark.parametrize(
  "case,message",
  [
    ("no config.json", "has no config.json; point at a Hugging Face checkpoint folder"),
    ("not a Llama", "model_type 'gpt2' (GPT2LMHeadModel) is not a Llama"),
    (
      "mismatched shapes",
      "model.layers.0.mlp.gate_proj.weight has shape (192, 64), but config.json needs (256, 64)",
    ),
    ("no tokenizer", "has no tokenizer (tokenizer.json or tokenizer.model)"),
  ],
)
def test_a_bad_checkpoint_gets_a_one_line_error(
  case, message, trained_run, small_cache, tmp_path, capsys
):
  _, exported = trained_run
  folder = broken_copies(exported, tmp_path)[case]
  code = pretrain_main(
    [
      "--preset",
      "tiny",
      "--steps",
      "1",
      "--mesh",
      "data=1",
      "--init-from-hf",
      str(folder),
      "--data",
      str(small_cache.root),
      "--out",
      str(tmp_path / "run"),
      "--no-progress",
    ]
  )
  err = capsys.readouterr().err.strip()
  assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err
  assert message in err, err
  text_file = tmp_path / "t.txt"
  text_file.write_text(TEXT)
  assert evaluate_cli.main(["--hf", str(folder), "--text-file", str(text_file)]) == 2
  err = capsys.readouterr().err.strip()
  assert message in err and len(err.splitlines()) == 1, err


def test_a_cache_of_another_tokenizer_is_refused(trained_run, small_cache, tmp_path, capsys):
  _, exported = trained_run
  folder = tmp_path / "bpe"
  shutil.copytree(exported, folder)
  train_bpe([TEXT] * 10, 300, folder / "tokenizer.json", show_progress=False)
  code = pretrain_main(
    [
      "--preset",
      "tiny",
      "--steps",
      "1",
      "--mesh",
      "data=1",
      "--init-from-hf",
      str(folder),
      "--data",
      str(small_cache.root),
      "--out",
      str(tmp_path / "run"),
      "--no-progress",
    ]
  )
  err = capsys.readouterr().err.strip()
  assert code == 2 and len(err.splitlines()) == 1, err
  assert "was prepared with another tokenizer than --init-from-hf" in err, err
  config = json.loads((exported / "config.json").read_text())
  for rope, message in (
    ({"rope_type": "yarn", "factor": 8.0}, "rope type 'yarn' is not supported"),
    (
      {"rope_type": "default", "partial_rotary_factor": 0.5},
      "partial_rotary_factor 0.5 is not supported",
    ),
  ):
    (folder / "config.json").write_text(json.dumps({**config, "rope_parameters": rope}))
    with pytest.raises(HFCheckpointError, match=message):
      read_checkpoint(folder, get_preset("tiny"))


def test_the_export_benchmark_reports_exact_logits_and_round_trip(tmp_path):
  torch_and_transformers()
  from benchmarks import hf_interop

  assert hf_interop.main(["--presets", "tiny", "--seq-len", "32", "--out", str(tmp_path)]) == 0
  result = json.loads((tmp_path / "results.json").read_text())["results"][0]
  assert result["round_trip_bit_exact"] and result["max_relative_logit_difference"] < RELATIVE
  assert result["megabytes_bfloat16"] < result["megabytes_float32"]
  assert "| tiny | 2 x 64 |" in (tmp_path / "results.md").read_text()


def test_a_preset_s_tokenizer_gives_way_to_the_data_s_or_the_checkpoint_s():
  from train.config import TrainConfig
  from train.pretrain import build_parser, config_from_args

  for flag in ("--data", "--init-from-hf"):
    config = config_from_args(build_parser().parse_args(["--preset", "demo", flag, "/somewhere"]))
    assert config.tokenizer == "" and config.model == "demo"
  assert config_from_args(build_parser().parse_args(["--preset", "demo"])).tokenizer == "bpe-2048"
  # A run recorded with the preset's tokenizer beside its cache resumes: the field applies
  # only to the built-in corpus.
  recorded = TrainConfig(model="tiny", seq_len=64, data="/cache", tokenizer="bytes")
  assert (
    TrainConfig(model="tiny", seq_len=64, data="/cache", tokenizer="").trajectory_mismatch(recorded)
    == []
  )
  assert TrainConfig(model="tiny", seq_len=64, tokenizer="bpe-300").trajectory_mismatch(
    TrainConfig(model="tiny", seq_len=64)
  ) == ["tokenizer: 'bytes' -> 'bpe-300'"]


@pytest.mark.parametrize("source", ["--data", "--init-from-hf"])
def test_an_explicit_tokenizer_beside_data_or_a_checkpoint_is_refused(
  source, trained_run, small_cache, tmp_path, capsys
):
  path = small_cache.root if source == "--data" else trained_run[1]
  code = pretrain_main(
    [
      "--preset",
      "tiny",
      "--steps",
      "1",
      "--mesh",
      "data=1",
      source,
      str(path),
      "--tokenizer",
      "bytes",
      "--out",
      str(tmp_path),
      "--no-progress",
    ]
  )
  err = capsys.readouterr().err.strip()
  assert code == 2 and len(err.splitlines()) == 1, err
  assert "brings its own tokenizer, so drop --tokenizer" in err, err


def test_an_export_goes_to_a_new_folder_or_replaces_an_earlier_export(
  trained_run, tmp_path, capsys
):
  run_dir, exported = trained_run
  target = tmp_path / "again"
  shutil.copytree(exported, target)
  (target / "tokenizer.model").write_bytes(b"stale")  # as a SentencePiece export would leave
  assert export_hf.main(["--checkpoint", str(run_dir), "--out", str(target)]) == 0
  assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in exported.iterdir())
  busy = tmp_path / "busy"
  busy.mkdir()
  (busy / "notes.txt").write_text("mine")
  assert export_hf.main(["--checkpoint", str(run_dir), "--out", str(busy)]) == 2
  err = capsys.readouterr().err.strip()
  assert "is not empty and is not an earlier export" in err and len(err.splitlines()) == 1, err
  assert (busy / "notes.txt").read_text() == "mine"


def test_a_checkpoint_is_placed_on_a_sharded_mesh_like_any_params(
  trained_run, small_cache, tmp_path
):
  from tests.test_pretrain import checked, run_cli

  run_dir, exported = trained_run
  out = tmp_path / "sharded"
  checked(
    run_cli(
      [
        "--preset",
        "tiny",
        "--optimizer",
        "adamw",
        "--steps",
        "1",
        "--eval-every",
        "0",
        "--mesh",
        "data=2,fsdp=2,tensor=2",
        "--init-from-hf",
        exported,
        "--data",
        small_cache.root,
        "--out",
        out,
      ],
      devices=8,
    )
  )
  start = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
  final = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
  assert start["step"] == 0
  for key in [k for k in final if k.endswith("/loss")]:
    assert math.isclose(start[key], final[key], rel_tol=1e-5), key
