"""Sphinx configuration of the nexus-optax documentation (built by ``bash scripts/docs.sh``)."""

import pathlib
import sys

import nexus_optax

DOCS = pathlib.Path(__file__).resolve().parent
# The site's own extensions (the API coverage check) live beside this file, as in optax.
sys.path.insert(0, str(DOCS / "ext"))

project = "nexus-optax"
author = "The nexus-optax authors"
copyright = "2026, the nexus-optax authors"  # noqa: A001 (Sphinx's name)
release = nexus_optax.__version__
version = release

extensions = [
  "sphinx.ext.autodoc",
  "sphinx.ext.autosummary",
  "sphinx.ext.napoleon",
  "sphinx.ext.doctest",
  "sphinx.ext.mathjax",
  "myst_parser",
  # MathJax from the package instead of a CDN, so that the math renders offline.
  "sphinx-mathjax-offline",
  "coverage_check",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "main_run/summary.md", "main_run/time.md", "ext"]

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3

autosummary_generate = False  # the API page lists every public name by hand
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# The docstrings' Examples run as the test suite runs them.
doctest_global_setup = "import jax, jax.numpy as jnp, optax, nexus_optax as nx"
doctest_default_flags = __import__("doctest").ELLIPSIS | __import__("doctest").NORMALIZE_WHITESPACE

html_theme = "furo"
html_title = f"nexus-optax {release}"
html_static_path: list[str] = []
