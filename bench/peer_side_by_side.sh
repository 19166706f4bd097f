#!/usr/bin/env bash
# Batch-1 decode side by side with llama.cpp, engines alternated round by round on the same machine
# (docs/BENCHMARKS.md, "CPU decode kernels"; the peer's build and GGUF conversion are in
# ../shared/peers/llama.cpp/README.md).
#   bench/peer_side_by_side.sh M2_MODEL_DIR GGUF [ROUNDS=5] [DEPTH=0] [THREADS=2] [ACTIVATIONS=q8] [TOKENS=32]
# Prints each round's tok/s of both engines and their ratio, then the medians, the ratio of the
# medians and the median of the rounds' ratios (each round's two runs are seconds apart, so that one
# sees the least of this VM's changes of speed).
# Environment: M2_BENCH (default build/release/bench/bench_model), LLAMA_BENCH (default
# /tmp/peer/llama.cpp/build/bin/llama-bench).
set -euo pipefail
model=${1:?m2 model directory}
gguf=${2:?GGUF file}
rounds=${3:-5}
depth=${4:-0}
threads=${5:-2}
act=${6:-q8}
tokens=${7:-32}  # decoded per run by both engines
m2_bench=${M2_BENCH:-build/release/bench/bench_model}
llama_bench=${LLAMA_BENCH:-/tmp/peer/llama.cpp/build/bin/llama-bench}
m2_runs=() llama_runs=() ratios=()
for ((i = 1; i <= rounds; i++)); do
  # m2: prefill DEPTH tokens (at least 1), then TOKENS decode steps; the decode line's tok/s.
  m2=$("$m2_bench" "$model" --prompt $((depth > 0 ? depth : 1)) --decode "$tokens" --batches '' --threads "$threads" \
       --activations "$act" | awk '/^decode /{print $2}')
  # llama.cpp: TOKENS generated tokens after DEPTH tokens of context, one repetition per round.
  llama=$("$llama_bench" -m "$gguf" -t "$threads" -p 0 -n "$tokens" -d "$depth" -r 1 -o csv 2>/dev/null |
          awk -F, 'NR > 1 {gsub(/"/, "", $0); print $(NF-1)}' | tail -1)
  ratio=$(awk -v a="$m2" -v b="$llama" 'BEGIN {printf "%.3f", a / b}')
  echo "round $i: m2 $m2 tok/s, llama.cpp $llama tok/s, m2 / llama.cpp = $ratio"
  m2_runs+=("$m2") llama_runs+=("$llama") ratios+=("$ratio")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2)}'; }
spread() { printf '%s\n' "$@" | sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {print lo "-" hi}'; }
m=$(median "${m2_runs[@]}") l=$(median "${llama_runs[@]}")
echo "median: m2 $m tok/s ($(spread "${m2_runs[@]}")), llama.cpp $l tok/s ($(spread "${llama_runs[@]}")), m2 / llama.cpp = $(awk -v a="$m" -v b="$l" 'BEGIN {printf "%.2f", a / b}'); median of the rounds' ratios $(median "${ratios[@]}") ($(spread "${ratios[@]}"))"
