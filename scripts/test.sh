#!/usr/bin/env bash
# Install (if needed) and run the test suite, as CI does: every test except those marked slow (the real default
# model, multi-process torchrun and DeepSpeed runs, Ray), which `--all` adds. The run of the README's commands (about
# 4 minutes) is in: it goes first on one of two worker processes while the other takes the rest (NOTELLM_TEST_WORKERS
# changes the count; 1 runs in this process). Each worker uses one torch thread, so two share 2 cores without
# oversubscribing them.
# Other arguments go to pytest (`-k`, `-x`, a file). The 15 slowest tests are listed at the end, so a test that
# grows past the suite's ~10-minute budget on 2 cores shows up in the run that made it slow.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The browser test drives a real headless Chromium and checks Chinese is drawn with a CJK font; install them
# where we may (root with apt), else it skips (no Chromium) or says which package is missing (no font).
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
   && { ! command -v chromedriver >/dev/null 2>&1 || ! fc-list 2>/dev/null | grep -q "Noto Sans CJK"; }; then
  packages="chromium chromium-driver fonts-noto-cjk"
  (apt-get install -y -qq $packages >/dev/null 2>&1 \
    || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq $packages >/dev/null 2>&1)) \
    || echo "note: could not install $packages; the browser test will skip or fail on fonts"
fi
export OMP_WAIT_POLICY=PASSIVE TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
workers=${NOTELLM_TEST_WORKERS:-2}
parallel=()
[ "$workers" -gt 1 ] && parallel=(-n "$workers")
select=(-m "not slow")
args=()
for a in "$@"; do
  case "$a" in
    --all) select=() ;;
    --fast) ;;  # the default; kept for the command earlier READMEs gave
    *) args+=("$a") ;;
  esac
done
exec .venv/bin/python -m pytest -q --durations=15 "${parallel[@]}" "${select[@]}" "${args[@]}"
