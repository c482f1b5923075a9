"""Hugging Face checkpoint folders: written by ``train.export_hf``, read by
``train.pretrain --init-from-hf`` and ``train.evaluate --hf``.

A folder holds what ``transformers.AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` read:

  config.json               transformers' LlamaConfig (:func:`models.hf_llama.to_hf_config`)
  model.safetensors         the weights (or model.safetensors.index.json and its shards)
  tokenizer.json            the tokenizer (``tokenizers`` JSON; the byte tokenizer as
                            ``train.data.tokenizer.byte_tokenizer_json``), or tokenizer.model
  tokenizer_config.json     its class and special tokens
  special_tokens_map.json

Writing needs NumPy and ``safetensors`` only (no torch). Exported folders also carry
``nexus_optax`` in config.json: the run, step and sequence length they come from.

This module holds the folder: its files, read by :func:`read_checkpoint` and written by
:func:`write_checkpoint`, each followed by its helpers in the order it calls them. What
the files mean (transformers' config and tensor names, and their conversion to
:mod:`models.llama`'s) is :mod:`models.hf_llama`'s; nothing there reads or writes a file.
"""

import dataclasses
import json
import pathlib
import shutil
from typing import Literal, get_args

from safetensors import safe_open
from safetensors.numpy import save_file

from models.hf_llama import (
  HFCheckpointError,
  check_hf_tensors,
  from_hf_config,
  from_hf_tensors,
  lazy_hf_params,
  to_hf,
)
from models.llama import LlamaConfig
from train.data.tokenizer import (
  BYTES,
  Tokenizer,
  TokenizerError,
  byte_tokenizer_json,
  load_tokenizer,
)

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_MODEL = "tokenizer.model"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS = "special_tokens_map.json"
# What an export writes (and a re-export into the same folder replaces).
EXPORT_FILES = (
  CONFIG,
  WEIGHTS,
  WEIGHTS_INDEX,
  TOKENIZER_JSON,
  TOKENIZER_MODEL,
  TOKENIZER_CONFIG,
  SPECIAL_TOKENS,
  "generation_config.json",
)
ExportDType = Literal["float32", "bfloat16"]
EXPORT_DTYPES = get_args(ExportDType)


@dataclasses.dataclass
class HFCheckpoint:
  """A Llama checkpoint folder, checked: config, tensor shapes and tokenizer agree.

  Attributes:
    directory: the folder.
    hf_config: its config.json.
    model_config: our :class:`models.LlamaConfig` of it.
    tokenizer: its tokenizer (the byte tokenizer when it is the byte tokenizer's JSON).
  """

  directory: pathlib.Path
  hf_config: dict
  model_config: LlamaConfig
  tokenizer: Tokenizer
  _files: dict[str, pathlib.Path]

  def _reader(self):
    handles = {file: safe_open(str(file), "np") for file in set(self._files.values())}

    def read(name):
      try:
        return handles[self._files[name]].get_tensor(name)
      except Exception as error:  # safetensors raises its own SafetensorError
        raise HFCheckpointError(
          f"{self._files[name]}: tensor {name} is unreadable ({error}); copy the checkpoint again."
        ) from None

    return read

  def params(self) -> dict:
    """The weights as our params: a pure dict of NumPy arrays in ``model_config.param_dtype``."""
    return from_hf_tensors(self._reader(), self.model_config)

  def lazy_params(self) -> dict:
    """The same tree of :class:`models.hf_llama.LazyParam`: indexing one reads only the
    layers its slice selects, so each process reads what its shards need."""
    return lazy_hf_params(self._reader(), self.model_config)

  @property
  def metadata(self) -> dict:
    """What ``train.export_hf`` recorded of the run (empty for other checkpoints)."""
    return self.hf_config.get("nexus_optax", {})


def read_checkpoint(directory, base: LlamaConfig) -> HFCheckpoint:
  """Reads and checks a Llama checkpoint folder; ``base`` gives how the model computes
  (:func:`models.hf_llama.from_hf_config`). Raises :class:`HFCheckpointError`."""
  directory = pathlib.Path(directory).absolute()
  if not directory.is_dir():
    raise HFCheckpointError(
      f"{directory} is not a folder; point at a Hugging Face checkpoint "
      "folder (config.json, model.safetensors, tokenizer.json)."
    )
  path = directory / CONFIG
  if not path.exists():
    raise HFCheckpointError(
      f"{directory} has no {CONFIG}; point at a Hugging Face checkpoint "
      "folder (save_pretrained or train.export_hf writes one)."
    )
  try:
    hf_config = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as error:
    raise HFCheckpointError(f"{path} is not JSON ({error}); write the checkpoint again.") from None
  model_config = from_hf_config(hf_config, base, where=str(path))
  files, shapes = _weight_files(directory)
  check_hf_tensors(shapes, model_config, where=str(directory))
  tokenizer = checkpoint_tokenizer(directory, hf_config.get("nexus_optax"))
  if tokenizer.vocab_size > model_config.vocab_size:
    raise HFCheckpointError(
      f"{directory}: the tokenizer has {tokenizer.vocab_size} tokens but the "
      f"model only {model_config.vocab_size} embedding rows; use the "
      "model's own tokenizer."
    )
  return HFCheckpoint(directory, hf_config, model_config, tokenizer, files)


def _weight_files(directory: pathlib.Path) -> tuple[dict[str, pathlib.Path], dict]:
  """(tensor name -> the safetensors file that holds it, tensor name -> shape), from
  ``model.safetensors`` or else the sharded index, as transformers looks for them."""
  single = directory / WEIGHTS
  if single.exists():
    shapes = _safetensors_keys(single)
    return {name: single for name in shapes}, shapes
  index = directory / WEIGHTS_INDEX
  if index.exists():
    try:
      weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError):
      raise HFCheckpointError(
        f"{index} is not a safetensors index (no weight_map); write the checkpoint again."
      ) from None
    files = {name: directory / file for name, file in weight_map.items()}
    missing = sorted({str(f.name) for f in files.values() if not f.exists()})
    if missing:
      raise HFCheckpointError(
        f"{directory}: the shards {', '.join(missing[:3])} named in "
        f"{WEIGHTS_INDEX} are missing; copy the whole checkpoint."
      )
    shapes = {}
    for file in sorted(set(files.values())):
      shapes.update(
        {name: shape for name, shape in _safetensors_keys(file).items() if files.get(name) == file}
      )
    return files, shapes
  if any(directory.glob("*.bin")) or any(directory.glob("*.pt")):
    raise HFCheckpointError(
      f"{directory} has PyTorch pickle weights only; save them as "
      "safetensors (model.save_pretrained(dir, safe_serialization=True))."
    )
  raise HFCheckpointError(
    f"{directory} has no {WEIGHTS} or {WEIGHTS_INDEX}; point at a "
    "folder written by save_pretrained or train.export_hf."
  )


def _safetensors_keys(file: pathlib.Path) -> dict[str, tuple[int, ...]]:
  """Tensor name -> shape of one safetensors file (its header only)."""
  try:
    with safe_open(str(file), "np") as handle:
      return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
  except Exception as error:  # safetensors raises its own SafetensorError
    raise HFCheckpointError(
      f"{file} is not a readable safetensors file ({error}); copy the checkpoint again."
    ) from None


def checkpoint_tokenizer(directory: pathlib.Path, metadata: dict | None = None) -> Tokenizer:
  """The folder's tokenizer: ``tokenizer.json``, what transformers reads, else
  ``tokenizer.model``. An export of a SentencePiece run (``metadata``, its config.json's
  ``nexus_optax``, names the model's hash) is read as that model, from which its
  ``tokenizer.json`` was converted."""
  try:
    if metadata and (directory / TOKENIZER_MODEL).exists():
      model = load_tokenizer(directory / TOKENIZER_MODEL)
      if model.hash == metadata.get("tokenizer_hash"):
        return model
    for name in (TOKENIZER_JSON, TOKENIZER_MODEL):
      if (directory / name).exists():
        return load_tokenizer(directory / name)
  except TokenizerError as error:
    raise HFCheckpointError(f"{directory}: {error}") from None
  raise HFCheckpointError(
    f"{directory} has no tokenizer ({TOKENIZER_JSON} or {TOKENIZER_MODEL}); "
    "copy the model's tokenizer files into it."
  )


def write_checkpoint(
  directory,
  params: dict,
  model_config: LlamaConfig,
  tokenizer: Tokenizer,
  dtype: ExportDType = "float32",
  metadata: dict | None = None,
) -> pathlib.Path:
  """Writes our params (a pure dict of arrays) as a transformers Llama folder."""
  if dtype not in EXPORT_DTYPES:
    raise HFCheckpointError(f"--dtype {dtype!r} is not one of {', '.join(EXPORT_DTYPES)}.")
  directory = pathlib.Path(directory)
  _clear_earlier_export(directory)
  directory.mkdir(parents=True, exist_ok=True)
  config, tensors = to_hf(params, model_config, tokenizer.eod_id, dtype)
  if metadata:
    config["nexus_optax"] = metadata
  # Weights first, config last: a folder with a config.json is complete.
  save_file(tensors, str(directory / WEIGHTS), metadata={"format": "pt"})
  write_tokenizer(directory, tokenizer, model_config.max_seq_len)
  (directory / CONFIG).write_text(json.dumps(config, indent=1) + "\n")
  return directory


def _clear_earlier_export(directory: pathlib.Path) -> None:
  """Empties ``directory`` of an earlier export's files; any other content is refused, so
  that no stale file (a shard index, a tokenizer.model) outranks the new ones."""
  if not directory.exists() or not any(directory.iterdir()):
    return
  try:
    earlier = "nexus_optax" in json.loads((directory / CONFIG).read_text())
  except (OSError, ValueError, TypeError):
    earlier = False
  others = [p.name for p in directory.iterdir() if p.name not in EXPORT_FILES]
  if not earlier or others:
    raise HFCheckpointError(
      f"--out {directory} is not empty and is not an earlier export "
      f"(it holds {', '.join(sorted(p.name for p in directory.iterdir())[:3])}"
      "); choose a new or empty folder."
    )
  for path in directory.iterdir():
    path.unlink()


def write_tokenizer(directory: pathlib.Path, tokenizer: Tokenizer, max_length: int) -> None:
  """The tokenizer as transformers reads it: ``tokenizer.json``, its class and special tokens.

  The byte tokenizer is written as its ``tokenizers`` JSON form; a ``tokenizers`` file is
  copied as it is; a SentencePiece model is converted (and copied beside it, as
  ``tokenizer.model``, the file runs started from the folder read). The end-of-document
  token is begin, end and padding token; no special token is added on encoding, so
  ``AutoTokenizer`` encodes text to the ids training saw.
  """
  if tokenizer.kind == BYTES:
    (directory / TOKENIZER_JSON).write_text(
      json.dumps(byte_tokenizer_json(), indent=1, ensure_ascii=False) + "\n"
    )
  elif tokenizer.file_name == TOKENIZER_JSON:
    shutil.copyfile(tokenizer.source, directory / TOKENIZER_JSON)
  else:
    (directory / TOKENIZER_JSON).write_text(sentencepiece_tokenizer_json(tokenizer.source))
    shutil.copyfile(tokenizer.source, directory / TOKENIZER_MODEL)
  special = {
    "bos_token": tokenizer.eod_token,
    "eos_token": tokenizer.eod_token,
    "pad_token": tokenizer.eod_token,
  }
  # split_special_tokens: text that spells a special token stays text, as in training.
  config = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    **special,
    "model_max_length": max_length,
    "add_bos_token": False,
    "add_eos_token": False,
    "clean_up_tokenization_spaces": False,
    "split_special_tokens": True,
  }
  (directory / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=1) + "\n")
  (directory / SPECIAL_TOKENS).write_text(json.dumps(special, indent=1) + "\n")


def sentencepiece_tokenizer_json(model_file) -> str:
  """A SentencePiece model as a ``tokenizers`` JSON that encodes as
  ``SentencePieceProcessor.encode`` does (its normalizer spec, merges by piece score,
  byte fallback), built by transformers' converter; its control and unknown pieces are
  special tokens."""
  # optional: only exporting a SentencePiece run needs protobuf and transformers' converter.
  try:
    from sentencepiece import sentencepiece_model_pb2  # pylint: disable=import-outside-toplevel
    from tokenizers import AddedToken  # pylint: disable=import-outside-toplevel
    from transformers.convert_slow_tokenizer import SpmConverter  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise HFCheckpointError(
      f"exporting a SentencePiece tokenizer as {TOKENIZER_JSON} uses "
      f"transformers' converter and protobuf ({error.name} is not "
      "installed); pip install transformers protobuf."
    ) from None
  proto = sentencepiece_model_pb2.ModelProto()
  proto.ParseFromString(pathlib.Path(model_file).read_bytes())
  unigram, bpe = 1, 2  # ModelProto.TrainerSpec.ModelType
  if proto.trainer_spec.model_type == bpe:
    vocab = {piece.piece: index for index, piece in enumerate(proto.pieces)}
  elif proto.trainer_spec.model_type == unigram:
    vocab = [(piece.piece, piece.score) for piece in proto.pieces]
  else:
    raise HFCheckpointError(
      f"{model_file}: only BPE and unigram SentencePiece models export "
      f"(this one is model type {proto.trainer_spec.model_type})."
    )
  if not hasattr(SpmConverter, "build_tokenizer_from_spm_proto"):
    raise HFCheckpointError(
      "exporting a SentencePiece tokenizer needs a transformers with "
      "SpmConverter.build_tokenizer_from_spm_proto (5.24 has it); "
      "upgrade transformers."
    )
  # legacy=True: the dummy prefix and extra-whitespace rules exactly as SentencePiece applies them.
  tokenizer = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, legacy=True)
  unknown, control = 2, 3  # ModelProto.SentencePiece.Type
  tokenizer.add_special_tokens(
    [
      AddedToken(piece.piece, special=True, normalized=False)
      for piece in proto.pieces
      if piece.type in (unknown, control)
    ]
  )
  return tokenizer.to_str(pretty=True)
