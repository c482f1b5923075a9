#!/usr/bin/env bash
# The main job: a real multi-source Nexus + AdamW run (examples/quickstart.py).
set -euo pipefail
source "$(dirname "$0")/env.sh" test
python -m examples.quickstart "$@"
