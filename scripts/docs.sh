#!/usr/bin/env bash
# The documentation site, offline: docs/_build/html, with every docstring Example run as a test.
set -euo pipefail
source "$(dirname "$0")/env.sh" docs
python -m scripts.build_docs "$@"
