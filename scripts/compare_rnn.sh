#!/usr/bin/env bash
# Side-by-side: effseq's LSTM/GRU against torch.nn.LSTM/GRU in one sitting, on the issue's shape
# (one layer, D = H = 256, B = 8, T = 1024, 2 threads), forward, forward+backward and one streaming step at B = 1,
# plus peak memory of a training run of each (/usr/bin/time -v, maximum resident set size).
# The two are run alternately, twice, so that drift of a shared machine hits both.
# Usage: scripts/compare_rnn.sh [PYTHON]   (PYTHON: a venv with torch, default ~/torchenv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-$HOME/torchenv/bin/python}
cargo build --release -q
bin=target/release/effseq
for round in 1 2; do
  echo "== round $round: effseq"
  $bin bench --models lstm,gru --seq-lens 1024 --batch 8 --dim 256 --mode forward,train --repeats 10
  $bin bench --models lstm,gru --seq-lens 1024 --batch 1 --dim 256 --mode step --repeats 10
  echo "== round $round: torch"
  OMP_NUM_THREADS=2 "$py" scripts/torch_rnn_bench.py --threads 2 --step
done
echo "== peak memory of a training run (forward+backward, 3 repeats), maximum resident set size"
for m in lstm gru; do
  /usr/bin/time -v $bin bench --models $m --seq-lens 1024 --batch 8 --dim 256 --mode train --repeats 3 2>&1 \
    | grep -E "^$m|Maximum resident" | sed "s/^/effseq $m: /"
  /usr/bin/time -v "$py" -c "
import torch; torch.set_num_threads(2); torch.manual_seed(0)
m = torch.nn.${m^^}(256, 256, batch_first=True); x = torch.randn(8, 1024, 256, requires_grad=True)
for _ in range(4):
    m.zero_grad(); y, _ = m(x); y.sum().backward()
" 2>&1 | grep "Maximum resident" | sed "s/^/torch  $m: /"
  /usr/bin/time -v "$py" -c "import torch" 2>&1 | grep "Maximum resident" | sed "s/^/torch  (import only): /"
done
