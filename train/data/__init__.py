"""Data for pretraining: data specs, tokenizers, the token cache and the grain mixture.

User data: a YAML spec (:mod:`train.data.spec`) is read from ``.txt``/``.jsonl``/``.parquet``
files (:mod:`train.data.files`), tokenized once (:mod:`train.data.tokenizer`) into a token
cache (:mod:`train.data.prepare`, read by :mod:`train.data.cache`, checked against its
checksums by :mod:`train.data.verify`), and mixed into outer steps
(:mod:`train.data.mixture`). The built-in corpus (:mod:`train.data.corpus`) is prepared
into a cache the same way.
"""

import importlib

# Names resolve on first use, so that ``train.data.prepare``'s worker processes import the
# readers and tokenizers only, not grain and JAX (about 140 MB per process).
_EXPORTS = {
  "PackedWindows": "cache",
  "TokenCache": "cache",
  "Corpus": "corpus",
  "CorpusSpec": "corpus",
  "build_corpus": "corpus",
  "ensure_corpus": "corpus",
  "ensure_default_cache": "corpus",
  "DEFAULT_MIXTURE": "mixture",
  "LoaderConfig": "mixture",
  "MixtureError": "mixture",
  "epochs_per_source": "mixture",
  "outer_step_dataset": "mixture",
  "parse_mixture": "mixture",
  "source_sequences": "mixture",
  "training_dataset": "mixture",
  "DataError": "spec",
  "DataSpec": "spec",
  "load_spec": "spec",
  "parse_spec": "spec",
  "Tokenizer": "tokenizer",
  "TokenizerError": "tokenizer",
  "load_tokenizer": "tokenizer",
}


def __getattr__(name):
  if name not in _EXPORTS:
    raise AttributeError(f"module 'train.data' has no attribute {name!r}")
  return getattr(importlib.import_module(f"train.data.{_EXPORTS[name]}"), name)


__all__ = [
  "Corpus",
  "CorpusSpec",
  "DEFAULT_MIXTURE",
  "DataError",
  "DataSpec",
  "LoaderConfig",
  "MixtureError",
  "PackedWindows",
  "TokenCache",
  "Tokenizer",
  "TokenizerError",
  "build_corpus",
  "ensure_corpus",
  "ensure_default_cache",
  "epochs_per_source",
  "load_spec",
  "load_tokenizer",
  "outer_step_dataset",
  "parse_mixture",
  "parse_spec",
  "source_sequences",
  "training_dataset",
]
