"""Data for pretraining: data specs, tokenizers, the token cache and the grain mixture.

User data: a YAML spec (:mod:`train.data.spec`) is read from ``.txt``/``.jsonl``/``.parquet``
files (:mod:`train.data.files`), tokenized once (:mod:`train.data.tokenizer`) into a token
cache (:mod:`train.data.prepare`, read by :mod:`train.data.cache`), and mixed into outer
steps (:mod:`train.data.mixture`). The built-in corpus (:mod:`train.data.corpus`) is
prepared into a cache the same way.
"""

from train.data.cache import PackedWindows, TokenCache
from train.data.corpus import Corpus, CorpusSpec, build_corpus, ensure_corpus, ensure_default_cache
from train.data.mixture import (DEFAULT_MIXTURE, LoaderConfig, MixtureError, epochs_per_source,
                                outer_step_dataset, parse_mixture, source_sequences,
                                training_dataset)
from train.data.spec import DataError, DataSpec, load_spec, parse_spec
from train.data.tokenizer import Tokenizer, TokenizerError, load_tokenizer

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
