"""Byte-level tokenization and sequence packing.

Tokens are the UTF-8 bytes of the text (0..255) plus one end-of-document token (256),
so a model's loss in nats per token converts to bits per byte exactly, and no
vocabulary has to be trained, versioned or shipped. Documents are packed: concatenated,
each followed by the end-of-document token, and cut into windows of ``seq_len + 1``
tokens that overlap by one, so every token is a target exactly once.
"""

import numpy as np

END_OF_DOCUMENT = 256
VOCAB_SIZE = 257


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
      "utf-8", errors="replace")


def pack(documents: list[str], seq_len: int) -> np.ndarray:
  """Packed training windows [N, seq_len + 1] (int32) of the documents, in order.

  The stream is ``doc_0 EOD doc_1 EOD ...``; window i covers tokens
  ``[i * seq_len, (i + 1) * seq_len]`` inclusive, and a tail shorter than one window
  is dropped.

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
    stream[position:position + len(tokens)] = tokens
    stream[position + len(tokens)] = END_OF_DOCUMENT
    position += len(tokens) + 1
  windows = (len(stream) - 1) // seq_len
  if windows < 1:
    return np.zeros((0, seq_len + 1), np.int32)
  starts = np.arange(windows) * seq_len
  return stream[starts[:, None] + np.arange(seq_len + 1)]
