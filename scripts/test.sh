#!/usr/bin/env bash
# The test suite (fast by default; add -m slow for the opt-in slow tests).
set -euo pipefail
source "$(dirname "$0")/env.sh" test
# Lint and format first ([tool.ruff] in pyproject.toml); `ruff format .` fixes the format.
ruff check .
ruff format --check .
python -m pytest -q "$@"
