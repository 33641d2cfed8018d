#!/usr/bin/env bash
# The kill -9 loop behind README's crash-safety figure: KILLS (default 200) kills of `effseq train` at random
# moments of a run that writes a checkpoint at every step; after each kill the checkpoint must load completely
# (model, optimizer, state) and not go back, and the next round resumes it. Writes docs/results/kill-loop.txt.
#
#   scripts/kill_loop.sh [KILLS]
#
# It is the ignored test `kill_loop_long` of crates/effseq-cli/tests/cli.rs (the CI runs a 10-kill version of the
# same loop in `kill_9_never_leaves_an_unloadable_checkpoint`).
set -euo pipefail
cd "$(dirname "$0")/.."
kills="${1:-200}"
out="$(pwd)/docs/results/kill-loop.txt"
EFFSEQ_KILLS="$kills" EFFSEQ_KILL_REPORT="$out" \
  cargo test --release -p effseq-cli --test cli kill_loop_long -- --ignored --nocapture
echo "wrote $out"
