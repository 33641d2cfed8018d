#!/usr/bin/env bash
# Regenerates the result files under docs/results/ that README's "Results" section quotes. One function per section
# runs every command of that section in one sitting and records it; then scripts/collect_results.py bundles the raw
# outputs with the conditions (command, date, git commit, CPU, threads, versions, load) into docs/results/SECTION.json
# and scripts/render_results.py writes the table, docs/results/SECTION.md, which the README quotes unchanged.
#
# Usage: scripts/results.sh [--quick] [--budget SECS] SECTION [SECTION...]
#   SECTION   side by side with PyTorch: rnn-torch, tcn-torch, attention-torch, mamba-torch, lsh-torch, python;
#             effseq alone (scripts/results_effseq.py): main, custom, bench, stream, reversible, selective-copy,
#             duplicate, charlm, smnist, compare; gemm; kill-loop; or all
#   --quick   every section at tiny sizes, written to target/results-quick/ instead: checks the pipeline in seconds,
#             measures nothing (never commit its output)
#   --budget  seconds one PyTorch configuration may take, warm-up included (default 15): a longer one is kept as a
#             single cold run and longer lengths estimated over it are skipped, with the reason in the table
#             (scripts/bench_timing.py); this keeps each section within about 6 minutes on 2 quiet cores
# Environment: PYTHON, a Python with torch, numpy, performer-pytorch, reformer-pytorch and pytorch-tcn (default
# ~/torchenv/bin/python; see scripts/README.md). Run on an otherwise idle machine: the figures are only as quiet as it.
#
# Both sides run with the same thread count (THREADS below): effseq's rayon and matrixmultiply pools, and torch's
# intra-op pool (torch.set_num_threads, OpenMP, MKL). Where a section has two rounds, effseq and torch alternate, so
# that drift of the machine hits both; the others alternate per model or per configuration group.
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS=2
export RAYON_NUM_THREADS=$THREADS MATMUL_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
PYTHON=${PYTHON:-$HOME/torchenv/bin/python}
EFFSEQ=target/release/effseq
EXAMPLES=target/release/examples
SECTIONS=(rnn-torch tcn-torch attention-torch mamba-torch lsh-torch gemm)
# Sections measured by scripts/results_effseq.py (no PyTorch side; it writes docs/results/SECTION.{txt,json,md}).
EFFSEQ_SECTIONS=(main custom bench stream reversible selective-copy duplicate charlm smnist compare)
# Sections with their own script: the Python package's kernels against PyTorch, and the kill -9 loop.
OTHER_SECTIONS=(python kill-loop)
DEFAULT_BUDGET=15
BUDGET=$DEFAULT_BUDGET
QUICK=0
INVOCATION="scripts/results.sh $*"

# --- recording ----------------------------------------------------------------------------------------------------

# part NAME SIDE ROUND COMMAND...: runs COMMAND (which may write $RAW/NAME.json), showing its output, and adds it to
# the section's manifest with its wall time. SIDE is effseq or torch; ROUND 0 for a command outside the rounds.
part() {
  local name=$1 side=$2 round=$3
  shift 3
  local start=$EPOCHREALTIME
  echo "== $name: $*"
  "$@"
  local seconds
  seconds=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$side" "$round" "$seconds" "$(printf '%q ' "$@")" >>"$RAW/manifest.tsv"
}

# part_rss NAME SIDE ROUND COMMAND...: part under /usr/bin/time -v, whose maximum resident set size is kept.
part_rss() {
  local name=$1 side=$2 round=$3
  shift 3
  part "$name" "$side" "$round" /usr/bin/time -v -o "$RAW/$name.time" "$@"
}

# --- sections: each sets PACKAGES (Python packages whose versions matter) and SETTINGS (KEY=VALUE) ------------------

# LSTM and GRU against torch.nn.LSTM / torch.nn.GRU: one layer, D = H = 256, B = 8, T = 1024, forward, forward+backward
# and one streaming step at B = 1, two alternating rounds; then the peak RSS of a training run of each.
section_rnn_torch() {
  local dim=256 batch=8 len=1024 repeats=10 step_repeats=2000
  if ((QUICK)); then dim=32 batch=2 len=64 repeats=3 step_repeats=50; fi
  PACKAGES=torch
  SETTINGS=(dim=$dim batch=$batch seq_len=$len repeats=$repeats step_repeats=$step_repeats rounds=2 training_steps_for_rss=4)
  local shape=(--dim "$dim" --seq-lens "$len")
  local torch_shape=(--threads "$THREADS" --input "$dim" --hidden "$dim" --time "$len")
  for round in 1 2; do
    part effseq-r$round effseq $round $EFFSEQ bench --models lstm,gru "${shape[@]}" --batch "$batch" --mode forward,train \
      --repeats "$repeats" --json-file "$RAW/effseq-r$round.json"
    part effseq-step-r$round effseq $round $EFFSEQ bench --models lstm,gru "${shape[@]}" --batch 1 --mode step \
      --repeats "$repeats" --json-file "$RAW/effseq-step-r$round.json"
    part torch-r$round torch $round "$PYTHON" scripts/torch_rnn_bench.py "${torch_shape[@]}" --batch "$batch" \
      --repeats "$repeats" --step --step-repeats "$step_repeats" --budget "$BUDGET" --json "$RAW/torch-r$round.json"
  done
  # Peak RSS of four training steps (forward+backward) of each, and of `import torch` alone.
  for model in lstm gru; do
    part_rss rss-effseq-$model effseq 0 $EFFSEQ bench --models $model "${shape[@]}" --batch "$batch" --mode train --repeats 3
    part_rss rss-torch-$model torch 0 "$PYTHON" scripts/torch_rnn_bench.py --models $model "${torch_shape[@]}" \
      --batch "$batch" --train-steps 4
  done
  part_rss rss-torch-import torch 0 "$PYTHON" -c "import torch"
}

# TCN against locuslab's TemporalConvNet and pytorch-tcn: 4 levels of 256 channels, kernel 3, B = 8, T = 1024 and
# 4096, forward and forward+backward, and one next-step output at B = 1; two alternating rounds.
section_tcn_torch() {
  local dim=256 batch=8 lens=(1024 4096) repeats=5 step_repeats=500
  if ((QUICK)); then dim=16 batch=2 lens=(64 128) repeats=2 step_repeats=20; fi
  PACKAGES=torch,pytorch-tcn
  SETTINGS=(dim=$dim channels=$dim levels=4 kernel=3 batch=$batch "seq_lens=[${lens[0]},${lens[1]}]" repeats=$repeats rounds=2)
  for round in 1 2; do
    part effseq-r$round effseq $round $EFFSEQ bench --models tcn --dim "$dim" --seq-lens "${lens[0]},${lens[1]}" \
      --batch "$batch" --mode forward,train --repeats "$repeats" --json-file "$RAW/effseq-r$round.json"
    part effseq-step-r$round effseq $round $EFFSEQ bench --models tcn --dim "$dim" --seq-lens "${lens[0]}" --batch 1 \
      --mode step --repeats "$repeats" --json-file "$RAW/effseq-step-r$round.json"
    for len in "${lens[@]}"; do
      local step=()
      [ "$len" = "${lens[0]}" ] && step=(--step --step-repeats "$step_repeats")
      part torch-t$len-r$round torch $round "$PYTHON" scripts/torch_tcn_bench.py --threads "$THREADS" --input "$dim" \
        --channels "$dim" --levels 4 --kernel 3 --batch "$batch" --time "$len" --repeats "$repeats" --pytorch-tcn \
        "${step[@]}" --budget "$BUDGET" --json "$RAW/torch-t$len-r$round.json"
    done
  done
}

# One causal attention layer (projections included), D = 256, 4 heads, B = 1 and 8, T = 1024 and 4096: softmax
# against SDPA, linear against performer-pytorch's cumulative sums, Performer against performer-pytorch. One round,
# alternating model by model (the PyTorch side alone takes minutes).
section_attention_torch() {
  local dim=256 heads=4 batches=1,8 lens=1024,4096 repeats=3
  if ((QUICK)); then dim=32 heads=2 batches=1 lens=64,128 repeats=2; fi
  PACKAGES=torch,performer-pytorch
  SETTINGS=(dim=$dim heads=$heads "batches=[$batches]" "seq_lens=[$lens]" repeats=$repeats rounds=1 budget_s=$BUDGET)
  for model in softmax linear performer; do
    part effseq-$model effseq 1 $EXAMPLES/attention_layer --models $model --dim "$dim" --heads "$heads" --batch "$batches" \
      --seq-lens "$lens" --modes forward,train --repeats "$repeats" --json "$RAW/effseq-$model.json"
    part torch-$model torch 1 "$PYTHON" scripts/torch_attention_bench.py --models $model --dim "$dim" --heads "$heads" \
      --batch "$batches" --seq-lens "$lens" --modes forward,train --repeats "$repeats" --threads "$THREADS" \
      --budget "$BUDGET" --json "$RAW/torch-$model.json"
  done
}

# One Mamba layer (RMSNorm + mixer, d_model 256, N = 16), B = 8, T = 256 to 65,536, forward and forward+backward,
# against the same layer in PyTorch on mamba_ssm's selective_scan_ref; two alternating rounds. selective_scan_ref's
# forward is not run above T = 4096 (its (B, E, T, N) tensors) and its backward, quadratic in T, not above T = 256.
section_mamba_torch() {
  local dim=256 batch=8 lens=256,1024,4096,16384,65536 repeats=3 max_forward=4096 max_backward=256
  if ((QUICK)); then dim=32 batch=2 lens=32,64,128 repeats=2 max_forward=64 max_backward=32; fi
  PACKAGES=torch
  SETTINGS=(dim=$dim batch=$batch "seq_lens=[$lens]" repeats=$repeats rounds=2 budget_s=$BUDGET
    torch_max_forward_t=$max_forward torch_max_backward_t=$max_backward)
  for round in 1 2; do
    part effseq-r$round effseq $round $EFFSEQ bench --models mamba --dim "$dim" --batch "$batch" --seq-lens "$lens" \
      --mode forward,train --repeats "$repeats" --json-file "$RAW/effseq-r$round.json"
    part torch-r$round torch $round "$PYTHON" scripts/torch_mamba_bench.py --d-model "$dim" --batch "$batch" \
      --times "$lens" --max-time "$max_forward" --max-time-backward "$max_backward" --repeats "$repeats" \
      --threads "$THREADS" --budget "$BUDGET" --json "$RAW/torch-r$round.json"
  done
}

# One Reformer LSH attention layer (D = 256, 4 heads, bucket 64, 4 rounds, causal) against reformer-pytorch's
# LSHSelfAttention: B = 1 up to T = 65,536 and B = 8 up to 16,384. One round, alternating per mode and batch size;
# effseq runs one configuration per process, so that its peak RSS is that configuration's (as torch's is).
section_lsh_torch() {
  local dim=256 heads=4 bucket=64 hashes=4 repeats=3 long=1024,4096,16384,65536 short=1024,4096,16384
  if ((QUICK)); then dim=32 heads=2 bucket=16 hashes=2 repeats=2 long=64,128,256 short=64,128; fi
  PACKAGES=torch,reformer-pytorch
  SETTINGS=(dim=$dim heads=$heads bucket_size=$bucket n_hashes=$hashes repeats=$repeats rounds=1 budget_s=$BUDGET)
  local layer=(--dim "$dim" --heads "$heads" --bucket-size "$bucket" --n-hashes "$hashes" --repeats "$repeats")
  local mode batch lens len
  for group in "forward 1 $long" "train 1 $long" "forward 8 $short" "train 8 $short"; do
    read -r mode batch lens <<<"$group"
    for len in ${lens//,/ }; do
      part effseq-$mode-b$batch-t$len effseq 1 $EXAMPLES/lsh_layer "${layer[@]}" --modes "$mode" --batch "$batch" \
        --seq-lens "$len" --json "$RAW/effseq-$mode-b$batch-t$len.json"
    done
    part torch-$mode-b$batch torch 1 "$PYTHON" scripts/torch_lsh_bench.py "${layer[@]}" --modes "$mode" --batch "$batch" \
      --seq-lens "$lens" --threads "$THREADS" --budget "$BUDGET" --json "$RAW/torch-$mode-b$batch.json"
  done
}

# GEMM throughput (criterion, crates/effseq/benches/matmul.rs) at the shapes the README quotes: the LSTM's hoisted
# input projection 8192x1024x256 (both backends) and one step's recurrent product 8x1024x256, on 1 and 2 threads.
section_gemm() {
  local filter='^(gemm/[a-z]+/lstm_input_proj_8192x1024x256|recurrent_step/[a-z_0-9]+/8x1024x256)$' timing=()
  if ((QUICK)); then timing=(--warm-up-time 0.2 --measurement-time 0.5); fi
  PACKAGES=
  SETTINGS=("filter=$filter" "thread_counts=[1,2]" "brief_peak_gflops_per_core=78")
  cargo bench -q -p effseq --bench matmul --no-run
  for threads in 1 2; do
    part criterion-t$threads effseq $threads env RAYON_NUM_THREADS=$threads MATMUL_NUM_THREADS=$threads \
      CRITERION_HOME="$PWD/$RAW/criterion-t$threads.criterion" cargo bench -q -p effseq --bench matmul -- "$filter" "${timing[@]}"
  done
}

# effseq.torch against the PyTorch code each kernel replaces (scripts/python_kernels_bench.py): the wheel is built
# and installed into $PYTHON first, so that the figures are of this commit.
section_python() {
  "$PYTHON" -m pip install -q maturin
  "$PYTHON" -m maturin build --release -m crates/effseq-py/Cargo.toml -o target/wheels-results
  "$PYTHON" -m pip install -q --force-reinstall --no-deps target/wheels-results/effseq-*.whl
  if ((QUICK)); then
    "$PYTHON" scripts/python_kernels_bench.py --quick
  else
    "$PYTHON" scripts/python_kernels_bench.py --threads "$THREADS" --json docs/results/python-kernels.json --markdown docs/results/python-kernels.md
  fi
}

# Crash safety: kill -9 at random moments of a run that checkpoints every step (scripts/kill_loop.sh).
section_kill_loop() {
  if ((QUICK)); then
    mkdir -p target/results-quick
    EFFSEQ_KILLS=5 EFFSEQ_KILL_REPORT="$PWD/target/results-quick/kill-loop.txt" \
      cargo test --release -p effseq-cli --test cli kill_loop_long -- --ignored --nocapture
  else
    scripts/kill_loop.sh 200
  fi
}

# --- driver -------------------------------------------------------------------------------------------------------

run_section() {
  local name=$1
  RAW=target/results-raw/$name
  rm -rf "$RAW"
  mkdir -p "$RAW"
  : >"$RAW/manifest.tsv"
  echo "$EPOCHREALTIME" >"$RAW/started"
  cat /proc/loadavg >"$RAW/load-before"
  PACKAGES= SETTINGS=()
  echo "=== $name ($(date -u '+%Y-%m-%d %H:%M:%S UTC'), load $(cut -d' ' -f1-3 /proc/loadavg))"
  "section_${name//-/_}"
  local command=scripts/results.sh flags=()
  ((QUICK)) && command+=" --quick" && flags+=(--quick)
  [ "$BUDGET" != "$DEFAULT_BUDGET" ] && command+=" --budget $BUDGET"
  SETTINGS+=(budget_s="$BUDGET")
  "$PYTHON" scripts/collect_results.py "$name" "$RAW" "$OUT/$name.json" --command "$command $name" \
    --invocation "$INVOCATION" --threads "$THREADS" --packages "$PACKAGES" "${flags[@]}" "${SETTINGS[@]/#/--setting=}"
  "$PYTHON" scripts/render_results.py "$name" --dir "$OUT"
}

usage() {
  sed -n '7,15p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

main() {
  local chosen=()
  while (($#)); do
    case $1 in
      --quick) QUICK=1 ;;
      --budget)
        [ $# -ge 2 ] || usage
        BUDGET=$2
        shift
        ;;
      all) chosen+=("${SECTIONS[@]}" "${EFFSEQ_SECTIONS[@]}" "${OTHER_SECTIONS[@]}") ;;
      -h | --help) usage ;;
      *)
        if [[ " ${SECTIONS[*]} ${EFFSEQ_SECTIONS[*]} ${OTHER_SECTIONS[*]} " != *" $1 "* ]]; then
          echo "unknown section '$1' (expected one of: ${SECTIONS[*]} ${EFFSEQ_SECTIONS[*]} ${OTHER_SECTIONS[*]}, all)" >&2
          exit 2
        fi
        chosen+=("$1")
        ;;
    esac
    shift
  done
  ((${#chosen[@]})) || usage
  OUT=docs/results
  ((QUICK)) && OUT=target/results-quick
  [ -x "$PYTHON" ] || command -v "$PYTHON" >/dev/null || {
    echo "PYTHON=$PYTHON not found: set PYTHON to a Python with torch (see scripts/README.md)" >&2
    exit 2
  }
  cargo build --release -q -p effseq-cli
  cargo build --release -q -p effseq --example attention_layer --example lsh_layer --example reversible_memory
  local quick=()
  ((QUICK)) && quick=(--quick)
  for name in "${chosen[@]}"; do
    if [[ " ${EFFSEQ_SECTIONS[*]} " == *" $name "* ]]; then
      echo "=== $name ($(date -u '+%Y-%m-%d %H:%M:%S UTC'), load $(cut -d' ' -f1-3 /proc/loadavg))"
      python3 scripts/results_effseq.py "$name" "${quick[@]}"
    elif [[ " ${OTHER_SECTIONS[*]} " == *" $name "* ]]; then
      echo "=== $name ($(date -u '+%Y-%m-%d %H:%M:%S UTC'), load $(cut -d' ' -f1-3 /proc/loadavg))"
      "section_${name//-/_}"
    else
      run_section "$name"
    fi
  done
}

main "$@"
