#!/usr/bin/env bash
# Install (if needed) and run the quick start on the offline default model. Extra arguments go to
# `notellm quickstart` (see `--help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_WAIT_POLICY=PASSIVE TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
exec .venv/bin/notellm quickstart "$@"
