#!/usr/bin/env bash
# The main job: the demo Llama trained with AdamW and with AdamW + Nexus on the default
# corpus, then the comparison table and plots (train/compare.py). Writes results/<timestamp>/.
set -euo pipefail
source "$(dirname "$0")/env.sh" train
python -m train.compare "$@"
