"""Tokenizers: UTF-8 bytes, Hugging Face ``tokenizers`` files and SentencePiece models.

``load_tokenizer("bytes")`` is the built-in byte tokenizer: tokens are the UTF-8 bytes of
the text (0..255) plus one end-of-document token (256). ``load_tokenizer(path)`` loads a
``tokenizer.json`` (Hugging Face ``tokenizers``) or a SentencePiece ``.model``, from the
local file only. Every tokenizer has an end-of-document token, a vocabulary size, a
hash of what defines it (the file's bytes) and, per token, the number of UTF-8 bytes it
stands for, so every run reports bits per byte whatever its tokenizer:

  bpb = (sum of target nats) / (ln 2 * bytes scored).

The byte tokenizer also has a ``tokenizers`` JSON form (:func:`byte_tokenizer_json`: a
byte-level BPE with no merges), which is what an exported Hugging Face checkpoint carries;
``load_tokenizer`` reads that file back as the byte tokenizer itself.

Documents are packed: concatenated, each followed by the end-of-document token, and cut
into windows of ``seq_len + 1`` tokens that overlap by one, so every token is a target
exactly once.

Train a byte-level BPE on a data spec's training text (offline, with ``tokenizers``):

  python -m train.data.tokenizer --spec SPEC --vocab-size N --out tok.json
"""

import argparse
import functools
import hashlib
import json
import os
import pathlib
import shutil
import sys
import time
from typing import Literal

import numpy as np

from train.data import files
from train.data import spec as spec_lib

END_OF_DOCUMENT = 256
VOCAB_SIZE = 257
TokenizerKind = Literal["bytes", "huggingface", "sentencepiece"]
BYTES = "bytes"
END_OF_TEXT = "<|endoftext|>"
# End-of-document tokens of common tokenizer files, in order of preference.
EOD_CANDIDATES = (END_OF_TEXT, "<|end_of_text|>", "</s>", "<eos>", "<|eot_id|>", "[SEP]")


def encode(text: str) -> np.ndarray:
  """UTF-8 bytes of ``text`` as int32 tokens.

  Example:
    >>> encode("héllo").tolist()
    [104, 195, 169, 108, 108, 111]
  """
  return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)


def decode(tokens) -> str:
  """Text of byte tokens; end-of-document tokens become newlines.

  Example:
    >>> decode([104, 105, 256])
    'hi\\n'
  """
  tokens = np.asarray(tokens)
  return bytes(np.where(tokens == END_OF_DOCUMENT, 10, tokens).astype(np.uint8)).decode(
    "utf-8", errors="replace"
  )


def pack(documents: list[str], seq_len: int) -> np.ndarray:
  """Packed training windows [N, seq_len + 1] (int32) of the documents, byte tokenizer.

  The stream is ``doc_0 EOD doc_1 EOD ...``; window i covers tokens
  ``[i * seq_len, (i + 1) * seq_len]`` inclusive, and a tail shorter than one window
  is dropped. (The token cache packs the same way, for every tokenizer.)

  Example:
    >>> pack(["abc", "de"], seq_len=3).tolist()
    [[97, 98, 99, 256], [256, 100, 101, 256]]
  """
  if seq_len < 1:
    raise ValueError(f"seq_len must be >= 1, got {seq_len}.")
  stream = np.empty(sum(len(doc.encode("utf-8")) + 1 for doc in documents), np.int32)
  position = 0
  for doc in documents:
    tokens = encode(doc)
    stream[position : position + len(tokens)] = tokens
    stream[position + len(tokens)] = END_OF_DOCUMENT
    position += len(tokens) + 1
  windows = (len(stream) - 1) // seq_len
  if windows < 1:
    return np.zeros((0, seq_len + 1), np.int32)
  starts = np.arange(windows) * seq_len
  return stream[starts[:, None] + np.arange(seq_len + 1)]


class TokenizerError(ValueError):
  """A tokenizer that cannot be used; the message names the fix."""


class Tokenizer:
  """What the data pipeline needs of a tokenizer.

  Attributes:
    kind: ``bytes``, ``huggingface`` or ``sentencepiece``.
    source: ``"bytes"`` or the file it was loaded from.
    vocab_size: number of token ids.
    eod_id: the end-of-document token.
    eod_token: its text (what a Hugging Face tokenizer config names).
    hash: sha256 of what defines it (the file's bytes).
  """

  kind: TokenizerKind
  source: str
  vocab_size: int
  eod_id: int
  hash: str
  eod_token: str

  def encode(self, text: str) -> np.ndarray:
    raise NotImplementedError

  def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
    return [self.encode(text) for text in texts]

  def decode(self, tokens) -> str:
    raise NotImplementedError

  def token_bytes(self) -> np.ndarray:
    """UTF-8 bytes each token id stands for [vocab_size] (0 for special tokens)."""
    raise NotImplementedError

  @property
  def file_name(self) -> str | None:
    """Name of the file a run or cache keeps a copy under (None for bytes)."""
    return None

  def describe(self) -> dict:
    """What a run's config and a cache's manifest record of the tokenizer."""
    return {
      "kind": self.kind,
      "source": self.source,
      "hash": self.hash,
      "vocab_size": self.vocab_size,
      "eod_id": self.eod_id,
      "file": self.file_name,
    }

  def save_copy(self, directory: pathlib.Path) -> None:
    """Copies the tokenizer's file into ``directory`` (nothing for bytes)."""
    if self.file_name is not None:
      shutil.copyfile(self.source, pathlib.Path(directory) / self.file_name)


class ByteTokenizer(Tokenizer):
  """UTF-8 bytes and one end-of-document token (256).

  Example:
    >>> tok = ByteTokenizer()
    >>> tok.encode("hé").tolist(), tok.vocab_size, tok.eod_id
    ([104, 195, 169], 257, 256)
  """

  kind, source, vocab_size, eod_id = BYTES, BYTES, VOCAB_SIZE, END_OF_DOCUMENT
  hash = hashlib.sha256(b"nexus-optax byte tokenizer v1").hexdigest()
  eod_token = END_OF_TEXT

  def encode(self, text):
    return encode(text)

  def decode(self, tokens):
    tokens = np.asarray(tokens)
    return bytes(tokens[tokens != END_OF_DOCUMENT].astype(np.uint8)).decode("utf-8", "replace")

  def token_bytes(self):
    return np.append(np.ones(256, np.int64), 0)


@functools.lru_cache(maxsize=1)
def _byte_level_alphabet() -> dict[str, int]:
  """GPT-2's byte-to-printable-character map, inverted: character -> byte."""
  printable = (
    list(range(ord("!"), ord("~") + 1))
    + list(range(ord("¡"), ord("¬") + 1))
    + list(range(ord("®"), ord("ÿ") + 1))
  )
  characters, extra = {}, 0
  for byte in range(256):
    if byte in printable:
      characters[chr(byte)] = byte
    else:
      characters[chr(256 + extra)] = byte
      extra += 1
  return characters


class HuggingFaceTokenizer(Tokenizer):
  """A ``tokenizers`` JSON file; its end-of-document token is the first of
  :data:`EOD_CANDIDATES` that it defines."""

  kind = "huggingface"

  def __init__(self, path: pathlib.Path):
    # optional: only Hugging Face tokenizer files need it
    from tokenizers import Tokenizer as HFTokenizer

    self.source = str(pathlib.Path(path).absolute())
    try:
      self._tokenizer = HFTokenizer.from_file(self.source)
    except Exception as error:  # tokenizers raises a plain Exception for bad JSON
      reason = str(error).splitlines()[0][:160]
      raise TokenizerError(
        f"tokenizer {path} does not load as a Hugging Face tokenizers file "
        f"({reason}); pass a tokenizer.json, a SentencePiece .model or "
        "'bytes'."
      ) from None
    # Text that spells a special token ("<|endoftext|>" in a document) stays text: only
    # the pipeline inserts end-of-document tokens.
    self._tokenizer.encode_special_tokens = True
    self.hash = hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()
    self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
    vocab = self._tokenizer.get_vocab(with_added_tokens=True)
    found = [token for token in EOD_CANDIDATES if token in vocab]
    if not found:
      raise TokenizerError(
        f"tokenizer {path} has no end-of-document token; add one of "
        f"{', '.join(EOD_CANDIDATES)} as a special token."
      )
    self.eod_id = vocab[found[0]]
    self.eod_token = found[0]
    self._special = {
      token.content
      for token in self._tokenizer.get_added_tokens_decoder().values()
      if token.special
    }

  @property
  def file_name(self):
    return "tokenizer.json"

  def encode(self, text):
    return np.asarray(self._tokenizer.encode(text, add_special_tokens=False).ids, np.int32)

  def encode_batch(self, texts):
    # The fast form skips character offsets, which nothing here uses.
    encode = getattr(self._tokenizer, "encode_batch_fast", self._tokenizer.encode_batch)
    return [np.asarray(e.ids, np.int32) for e in encode(texts, add_special_tokens=False)]

  def decode(self, tokens):
    return self._tokenizer.decode([int(t) for t in tokens], skip_special_tokens=True)

  def token_bytes(self):
    alphabet = _byte_level_alphabet()
    lengths = np.zeros(self.vocab_size, np.int64)
    for token, index in self._tokenizer.get_vocab(with_added_tokens=True).items():
      if token in self._special:
        continue
      if all(character in alphabet for character in token):  # byte-level BPE: exact
        lengths[index] = len(token)
      else:  # other models: what the token decodes to on its own
        lengths[index] = len(self._tokenizer.decode([index]).encode("utf-8"))
    return lengths


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece ``.model``; its end-of-document token is the model's ``eos``."""

  kind = "sentencepiece"

  def __init__(self, path: pathlib.Path):
    import sentencepiece  # optional: only SentencePiece models need it

    self.source = str(pathlib.Path(path).absolute())
    try:
      self._model = sentencepiece.SentencePieceProcessor(model_file=self.source)
    except Exception as error:  # RuntimeError or OSError from the C++ loader
      reason = str(error).splitlines()[0][:160]
      raise TokenizerError(
        f"tokenizer {path} does not load as a SentencePiece model ({reason}); "
        "pass a tokenizer.json, a SentencePiece .model or 'bytes'."
      ) from None
    self.hash = hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()
    self.vocab_size = self._model.get_piece_size()
    self.eod_id = self._model.eos_id()
    if self.eod_id < 0:
      raise TokenizerError(
        f"tokenizer {path} has no eos piece; train it with eos_id set "
        "(SentencePiece's default is 2)."
      )
    self.eod_token = self._model.id_to_piece(self.eod_id)

  @property
  def file_name(self):
    return "tokenizer.model"

  def encode(self, text):
    return np.asarray(self._model.encode(text), np.int32)

  def encode_batch(self, texts):
    return [np.asarray(ids, np.int32) for ids in self._model.encode(texts)]

  def decode(self, tokens):
    return self._model.decode([int(t) for t in tokens if int(t) != self.eod_id])

  def token_bytes(self):
    lengths = np.zeros(self.vocab_size, np.int64)
    for index in range(self.vocab_size):
      if self._model.is_byte(index):
        lengths[index] = 1
      elif not (self._model.is_control(index) or self._model.is_unknown(index)):
        lengths[index] = len(self._model.id_to_piece(index).replace("\u2581", " ").encode("utf-8"))
    return lengths


def byte_tokenizer_json() -> dict:
  """The byte tokenizer as a ``tokenizers`` JSON document: a byte-level BPE whose 256 base
  tokens are the bytes (id = byte value, spelled in GPT-2's byte alphabet), with no merges
  and no regex split, and ``<|endoftext|>`` as the special token 256. It encodes every text
  to its UTF-8 bytes, as :class:`ByteTokenizer` does.

  Example:
    >>> from tokenizers import Tokenizer as HFTokenizer
    >>> hf = HFTokenizer.from_str(json.dumps(byte_tokenizer_json()))
    >>> hf.encode("héllo").ids == encode("héllo").tolist(), hf.token_to_id(END_OF_TEXT)
    (True, 256)
  """
  byte_level = {
    "type": "ByteLevel",
    "add_prefix_space": False,
    "trim_offsets": False,
    "use_regex": False,
  }
  vocab = {
    character: byte
    for character, byte in sorted(_byte_level_alphabet().items(), key=lambda item: item[1])
  }
  return {
    "version": "1.0",
    "truncation": None,
    "padding": None,
    "added_tokens": [
      {
        "id": END_OF_DOCUMENT,
        "content": END_OF_TEXT,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": True,
      }
    ],
    "normalizer": None,
    "pre_tokenizer": byte_level,
    "post_processor": None,
    "decoder": byte_level,
    "model": {
      "type": "BPE",
      "dropout": None,
      "unk_token": None,
      "continuing_subword_prefix": None,
      "end_of_word_suffix": None,
      "fuse_unk": False,
      "byte_fallback": False,
      "ignore_merges": False,
      "vocab": vocab,
      "merges": [],
    },
  }


def _is_byte_tokenizer_json(path: pathlib.Path) -> bool:
  if path.stat().st_size > 64 << 10:  # the byte form is ~4 KB; real vocabularies are larger
    return False
  try:
    return json.loads(path.read_text(encoding="utf-8")) == byte_tokenizer_json()
  except (UnicodeDecodeError, ValueError):
    return False


def load_tokenizer(source: str | os.PathLike) -> Tokenizer:
  """``"bytes"``, a ``tokenizers`` JSON file or a SentencePiece ``.model``, from disk only.

  A JSON file that is :func:`byte_tokenizer_json` (an exported checkpoint's byte
  tokenizer) loads as the byte tokenizer, so caches and runs agree that it is one.
  """
  if str(source) == BYTES:
    return ByteTokenizer()
  path = pathlib.Path(source)
  if not path.is_file():
    raise TokenizerError(
      f"tokenizer {source} is not a file; pass a tokenizer.json, a SentencePiece .model or 'bytes'."
    )
  with open(path, "rb") as stream:
    looks_like_json = stream.read(64).lstrip().startswith(b"{")
  if looks_like_json or path.suffix == ".json":
    if _is_byte_tokenizer_json(path):
      return ByteTokenizer()
    return HuggingFaceTokenizer(path)
  return SentencePieceTokenizer(path)


def padded_vocab_size(vocab_size: int, multiple: int = 128) -> int:
  """Rows of the model's embedding: the vocabulary padded so the vocab axis shards.

  Example:
    >>> padded_vocab_size(257), padded_vocab_size(4096)
    (384, 4096)
  """
  return -(-vocab_size // multiple) * multiple


def train_bpe(texts, vocab_size: int, out: pathlib.Path, show_progress: bool = True) -> Tokenizer:
  """Trains a byte-level BPE (GPT-2 style, ``<|endoftext|>`` as id 0) on ``texts``.

  Byte-level, without an added prefix space: every text round-trips exactly and the
  tokens' bytes add up to the text's UTF-8 bytes.
  """
  # optional: only BPE training needs tokenizers (kept out of the data workers' imports).
  from tokenizers import Tokenizer as HFTokenizer
  from tokenizers import decoders, models, pre_tokenizers, trainers

  if vocab_size < 257 + 1:
    raise TokenizerError(
      f"--vocab-size {vocab_size} is too small for a byte-level BPE; use at "
      "least 258 (256 bytes, the end-of-document token, one merge)."
    )
  tokenizer = HFTokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size,
    special_tokens=[END_OF_TEXT],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=show_progress,
  )
  tokenizer.train_from_iterator(texts, trainer=trainer)
  out = pathlib.Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  staging = out.with_name(f".{out.name}.{os.getpid()}.tmp")
  tokenizer.save(str(staging))
  staging.replace(out)
  return HuggingFaceTokenizer(out)


def training_texts(spec):
  """The documents a spec trains on, in order: each domain's training files, less the
  documents held out for validation (``train.data.spec.is_validation``). The globs are
  checked now; the files are read as the iterator is consumed."""
  sources = [
    (domain, spec_lib.expand(domain.train, spec.root, f"domain {domain.name!r}: train"))
    for domain in spec.domains
  ]

  def documents():
    for domain, paths in sources:
      for path in paths:
        for document in files.read_documents(path, domain.train.text_key):
          if document and not (
            domain.validation is None
            and spec_lib.is_validation(document, spec.seed, domain.validation_fraction)
          ):
            yield document

  return documents()


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m train.data.tokenizer",
    description="Train a byte-level BPE on a data spec's training "
    "text (validation documents left out), offline.",
  )
  parser.add_argument("--spec", type=pathlib.Path, required=True, help="YAML data spec")
  parser.add_argument("--vocab-size", type=int, required=True, help="tokens, specials included")
  parser.add_argument("--out", type=pathlib.Path, required=True, help="tokenizer.json to write")
  parser.add_argument("--no-progress", action="store_true")
  args = parser.parse_args(argv)
  start = time.perf_counter()
  try:
    spec = spec_lib.load_spec(args.spec)
    tokenizer = train_bpe(
      training_texts(spec), args.vocab_size, args.out, show_progress=not args.no_progress
    )
  except (spec_lib.DataError, TokenizerError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  print(
    f"wrote {args.out}: byte-level BPE, {tokenizer.vocab_size} tokens, "
    f"{time.perf_counter() - start:.1f} s"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
