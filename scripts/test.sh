#!/usr/bin/env bash
# The test suite (fast by default; add -m slow for the opt-in slow tests). tests/test_docs.py
# builds the documentation site as scripts/docs.sh does, doctests included.
set -euo pipefail
source "$(dirname "$0")/env.sh" test
# Lint and format first ([tool.ruff] in pyproject.toml); `ruff format .` fixes the format.
ruff check .
ruff format --check .
# Types: nexus_optax/ under mypy --strict ([tool.mypy] in pyproject.toml).
mypy
# Two passes (tests/conftest.py): the bulk on one pytest-xdist worker per core, each worker
# pinned to its core; then the tests marked serial (several processes, or subprocesses that
# want every core) on their own. A pass with nothing to run (pytest's status 5) is no failure.
cores="$(python -c 'import os; print(len(os.sched_getaffinity(0)))')"
run_pass() { python -m pytest -q "$@" || { status=$?; [ "$status" -eq 5 ] || return "$status"; }; }
failed=0
run_pass -n "$cores" --dist loadgroup --pass parallel "$@" || failed=$?
run_pass --pass serial "$@" || failed=$?
exit "$failed"
