#!/usr/bin/env bash
# The test suite (fast by default; add -m slow for the opt-in slow tests).
set -euo pipefail
source "$(dirname "$0")/env.sh" test
python -m pytest -q "$@"
