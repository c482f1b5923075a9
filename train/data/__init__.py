"""Data for pretraining: the default corpus, byte tokenization and the grain mixture."""

from train.data.corpus import Corpus, CorpusSpec, build_corpus, ensure_corpus
from train.data.mixture import (DEFAULT_MIXTURE, LoaderConfig, MixtureError, epochs_per_source,
                                outer_step_dataset, parse_mixture, source_sequences,
                                training_dataset)

__all__ = [
    "Corpus",
    "CorpusSpec",
    "DEFAULT_MIXTURE",
    "LoaderConfig",
    "MixtureError",
    "build_corpus",
    "ensure_corpus",
    "epochs_per_source",
    "outer_step_dataset",
    "parse_mixture",
    "source_sequences",
    "training_dataset",
]
