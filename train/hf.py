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
"""

import dataclasses
import json
import pathlib
import shutil

import numpy as np

from models.hf_llama import (HFCheckpointError, check_hf_tensors, from_hf_config, from_hf_tensors,
                             to_hf_config, to_hf_tensors)
from models.llama import LlamaConfig
from train.data.tokenizer import (BYTES, Tokenizer, TokenizerError, byte_tokenizer_json,
                                  load_tokenizer)

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_MODEL = "tokenizer.model"
EXPORT_DTYPES = ("float32", "bfloat16")


def _numpy_dtype(name: str):
  if name == "bfloat16":
    import ml_dtypes  # pylint: disable=import-outside-toplevel  (a JAX dependency)
    return np.dtype(ml_dtypes.bfloat16)
  return np.dtype(name)


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

  def params(self) -> dict:
    """The weights as our params: a pure dict of NumPy arrays in ``model_config.param_dtype``."""
    from safetensors import safe_open  # pylint: disable=import-outside-toplevel
    handles = {file: safe_open(str(file), "np") for file in set(self._files.values())}
    return from_hf_tensors(lambda name: handles[self._files[name]].get_tensor(name),
                           self.model_config, _numpy_dtype(self.model_config.param_dtype))

  @property
  def metadata(self) -> dict:
    """What ``train.export_hf`` recorded of the run (empty for other checkpoints)."""
    return self.hf_config.get("nexus_optax", {})


def _weight_files(directory: pathlib.Path) -> dict[str, pathlib.Path]:
  """Tensor name -> the safetensors file that holds it."""
  index = directory / WEIGHTS_INDEX
  if index.exists():
    try:
      weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError):
      raise HFCheckpointError(f"{index} is not a safetensors index (no weight_map); write the "
                              "checkpoint again.") from None
    files = {name: directory / file for name, file in weight_map.items()}
    missing = sorted({str(f.name) for f in files.values() if not f.exists()})
    if missing:
      raise HFCheckpointError(f"{directory}: the shards {', '.join(missing[:3])} named in "
                              f"{WEIGHTS_INDEX} are missing; copy the whole checkpoint.")
    return files
  single = directory / WEIGHTS
  if single.exists():
    from safetensors import safe_open  # pylint: disable=import-outside-toplevel
    with safe_open(str(single), "np") as handle:
      return {name: single for name in handle.keys()}
  if any(directory.glob("*.bin")) or any(directory.glob("*.pt")):
    raise HFCheckpointError(f"{directory} has PyTorch pickle weights only; save them as "
                            "safetensors (model.save_pretrained(dir, safe_serialization=True)).")
  raise HFCheckpointError(f"{directory} has no {WEIGHTS} or {WEIGHTS_INDEX}; point at a "
                          "folder written by save_pretrained or train.export_hf.")


def _tensor_shapes(files: dict[str, pathlib.Path]) -> dict[str, tuple[int, ...]]:
  from safetensors import safe_open  # pylint: disable=import-outside-toplevel
  shapes = {}
  for file in set(files.values()):
    with safe_open(str(file), "np") as handle:
      shapes.update({name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()
                     if files.get(name) == file})
  return shapes


def checkpoint_tokenizer(directory: pathlib.Path) -> Tokenizer:
  """The folder's tokenizer: ``tokenizer.model`` (SentencePiece, which a ``tokenizer.json``
  beside it was converted from), else ``tokenizer.json``."""
  for name in (TOKENIZER_MODEL, TOKENIZER_JSON):
    if (directory / name).exists():
      try:
        return load_tokenizer(directory / name)
      except TokenizerError as error:
        raise HFCheckpointError(f"{directory}: {error}") from None
  raise HFCheckpointError(f"{directory} has no tokenizer ({TOKENIZER_JSON} or {TOKENIZER_MODEL}); "
                          "copy the model's tokenizer files into it.")


def read_checkpoint(directory, base: LlamaConfig) -> HFCheckpoint:
  """Reads and checks a Llama checkpoint folder; ``base`` gives how the model computes
  (:func:`models.hf_llama.from_hf_config`). Raises :class:`HFCheckpointError`."""
  directory = pathlib.Path(directory).absolute()
  if not directory.is_dir():
    raise HFCheckpointError(f"{directory} is not a folder; point at a Hugging Face checkpoint "
                            "folder (config.json, model.safetensors, tokenizer.json).")
  path = directory / CONFIG
  if not path.exists():
    raise HFCheckpointError(f"{directory} has no {CONFIG}; point at a Hugging Face checkpoint "
                            "folder (save_pretrained or train.export_hf writes one).")
  try:
    hf_config = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as error:
    raise HFCheckpointError(f"{path} is not JSON ({error}); write the checkpoint again.") from None
  model_config = from_hf_config(hf_config, base, where=str(path))
  files = _weight_files(directory)
  check_hf_tensors(_tensor_shapes(files), model_config, where=str(directory))
  tokenizer = checkpoint_tokenizer(directory)
  if tokenizer.vocab_size > model_config.vocab_size:
    raise HFCheckpointError(f"{directory}: the tokenizer has {tokenizer.vocab_size} tokens but the "
                            f"model only {model_config.vocab_size} embedding rows; use the "
                            "model's own tokenizer.")
  return HFCheckpoint(directory, hf_config, model_config, tokenizer, files)


def sentencepiece_tokenizer_json(model_file) -> str:
  """A SentencePiece model as a ``tokenizers`` JSON that encodes as
  ``SentencePieceProcessor.encode`` does (its normalizer spec, merges by piece score,
  byte fallback), built by transformers' converter; its control and unknown pieces are
  special tokens."""
  try:
    from sentencepiece import sentencepiece_model_pb2  # pylint: disable=import-outside-toplevel
    from tokenizers import AddedToken  # pylint: disable=import-outside-toplevel
    from transformers.convert_slow_tokenizer import SpmConverter  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise HFCheckpointError(f"exporting a SentencePiece tokenizer as {TOKENIZER_JSON} uses "
                            f"transformers' converter and protobuf ({error.name} is not "
                            "installed); pip install transformers protobuf.") from None
  proto = sentencepiece_model_pb2.ModelProto()
  proto.ParseFromString(pathlib.Path(model_file).read_bytes())
  unigram, bpe = 1, 2  # ModelProto.TrainerSpec.ModelType
  if proto.trainer_spec.model_type == bpe:
    vocab = {piece.piece: index for index, piece in enumerate(proto.pieces)}
  elif proto.trainer_spec.model_type == unigram:
    vocab = [(piece.piece, piece.score) for piece in proto.pieces]
  else:
    raise HFCheckpointError(f"{model_file}: only BPE and unigram SentencePiece models export "
                            f"(this one is model type {proto.trainer_spec.model_type}).")
  # legacy=True: the dummy prefix and extra-whitespace rules exactly as SentencePiece applies them.
  tokenizer = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, legacy=True)
  unknown, control = 2, 3  # ModelProto.SentencePiece.Type
  tokenizer.add_special_tokens([AddedToken(piece.piece, special=True, normalized=False)
                                for piece in proto.pieces if piece.type in (unknown, control)])
  return tokenizer.to_str(pretty=True)


def write_tokenizer(directory: pathlib.Path, tokenizer: Tokenizer, max_length: int) -> None:
  """The tokenizer as transformers reads it: ``tokenizer.json``, its class and special tokens.

  The byte tokenizer is written as its ``tokenizers`` JSON form; a ``tokenizers`` file is
  copied as it is; a SentencePiece model is converted (and copied beside it, as
  ``tokenizer.model``, the file runs started from the folder read). The end-of-document
  token is begin, end and padding token; no special token is added on encoding, so
  ``AutoTokenizer`` encodes text to the ids training saw.
  """
  if tokenizer.kind == BYTES:
    (directory / TOKENIZER_JSON).write_text(json.dumps(byte_tokenizer_json(), indent=1,
                                                       ensure_ascii=False) + "\n")
  elif tokenizer.file_name == TOKENIZER_JSON:
    shutil.copyfile(tokenizer.source, directory / TOKENIZER_JSON)
  else:
    (directory / TOKENIZER_JSON).write_text(sentencepiece_tokenizer_json(tokenizer.source))
    shutil.copyfile(tokenizer.source, directory / TOKENIZER_MODEL)
  special = {"bos_token": tokenizer.eod_token, "eos_token": tokenizer.eod_token,
             "pad_token": tokenizer.eod_token}
  config = {"tokenizer_class": "PreTrainedTokenizerFast",
            **special, "model_max_length": max_length, "add_bos_token": False,
            "add_eos_token": False, "clean_up_tokenization_spaces": False}
  (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n")
  (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=1) + "\n")


def write_checkpoint(directory, params: dict, model_config: LlamaConfig, tokenizer: Tokenizer,
                     dtype: str = "float32", metadata: dict | None = None) -> pathlib.Path:
  """Writes our params (a pure dict of arrays) as a transformers Llama folder."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  if dtype not in EXPORT_DTYPES:
    raise HFCheckpointError(f"--dtype {dtype!r} is not one of {', '.join(EXPORT_DTYPES)}.")
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  numpy_dtype = _numpy_dtype(dtype)
  tensors = {name: array.astype(numpy_dtype, copy=False)
             for name, array in to_hf_tensors(params, model_config).items()}
  config = to_hf_config(model_config, tokenizer.eod_id, dtype)
  if metadata:
    config["nexus_optax"] = metadata
  # Weights first, config last: a folder with a config.json is complete.
  (directory / CONFIG).unlink(missing_ok=True)
  save_file(tensors, str(directory / WEIGHTS), metadata={"format": "pt"})
  write_tokenizer(directory, tokenizer, model_config.max_seq_len)
  (directory / CONFIG).write_text(json.dumps(config, indent=1) + "\n")
  return directory
