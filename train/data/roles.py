"""The three roles a document plays in a corpus and its token cache, and the ways a batch
draws on the sources.

Below both ``corpus`` (which builds the default corpus) and ``prepare`` (which tokenizes any
corpus into a cache), so that neither imports the other for them.
"""

from typing import Literal, get_args

TRAIN, VALIDATION, HELDOUT = "train", "validation", "heldout"
ROLES = (TRAIN, VALIDATION, HELDOUT)

# How a batch draws on the sources: every micro-batch from the weighted mixture, or each
# micro-batch from one source. Here rather than in ``mixture``, so that a config is read
# without grain (the accelerator benchmark runs where grain is not installed).
BatchMode = Literal["mixed", "source"]
MODES = get_args(BatchMode)
