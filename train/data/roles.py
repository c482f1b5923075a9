"""The three roles a document plays in a corpus and its token cache.

Below both ``corpus`` (which builds the default corpus) and ``prepare`` (which tokenizes any
corpus into a cache), so that neither imports the other for them.
"""

TRAIN, VALIDATION, HELDOUT = "train", "validation", "heldout"
ROLES = (TRAIN, VALIDATION, HELDOUT)
