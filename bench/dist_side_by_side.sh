#!/usr/bin/env bash
# One process × T threads against the same model as an MPI job of R ranks × T/R threads, layouts
# alternated round by round on the same machine (docs/BENCHMARKS.md, "Parallelism"). Each run:
# `m2 run --stats` with a PROMPT-token prompt and DECODE greedy tokens; reports the steady decode tok/s
# (the second half of the decode steps, once each expert's pages are mapped) and, for
# the MPI layouts, rank 0's collective volume and time per decode step.
#   bench/dist_side_by_side.sh MODEL_DIR [ROUNDS=3] [THREADS=2] [PROMPT=32] [DECODE=64] [LAYOUTS...]
# LAYOUTS default: "tp2" "ep2" (and "pp2" when the model has 2+ layers); each is a name mapped below.
# Environment: M2 (default build/release/m2), MPIRUN (default mpirun).
set -euo pipefail
model=${1:?model directory}
rounds=${2:-3}
threads=${3:-2}
prompt=${4:-32}
decode=${5:-64}
shift $(($# < 5 ? $# : 5))
m2=${M2:-build/release/m2}
mpirun=${MPIRUN:-mpirun}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
layers=$(grep -o '"num_hidden_layers": *[0-9]*' "$model/config.json" | grep -o '[0-9]*$')
layouts=("$@")
if ((${#layouts[@]} == 0)); then
  layouts=(tp2 ep2)
  ((layers >= 2)) && layouts+=(pp2)
fi
flags() {
  case $1 in
    tp2) echo "--tensor-parallel-size 2" ;;
    ep2) echo "--tensor-parallel-size 2 --enable-expert-parallel" ;;
    pp2) echo "--pipeline-parallel-size 2" ;;
    *) echo "unknown layout $1" >&2; exit 2 ;;
  esac
}
ids=$(seq -s, 11 $((10 + prompt)))
declare -A results
for ((i = 1; i <= rounds; i++)); do
  out=$("$m2" run "$model" --ids "$ids" -n "$decode" --no-stop --threads "$threads" --stats 2>&1 >/dev/null)
  tok=$(awk '/^timing:/{print $(NF-1)}' <<<"$out")
  echo "round $i: one process x $threads threads: $tok tok/s"
  results[one]+="$tok "
  for l in "${layouts[@]}"; do
    out=$("$mpirun" --oversubscribe --bind-to none -np 2 "$m2" run "$model" --ids "$ids" -n "$decode" --no-stop \
          --threads $((threads / 2 > 0 ? threads / 2 : 1)) --stats $(flags "$l") 2>&1 >/dev/null)
    tok=$(awk '/^timing:/{print $(NF-1)}' <<<"$out")
    coll=$(grep '^collectives per decode step' <<<"$out" | sed 's/^collectives per decode step (rank 0): //')
    echo "round $i: $l (2 ranks x $((threads / 2 > 0 ? threads / 2 : 1)) threads): $tok tok/s; $coll"
    results[$l]+="$tok "
  done
done
median() { printf '%s\n' $1 | sort -g | awk '{a[NR] = $1} END {print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2)}'; }
one=$(median "${results[one]}")
echo "median: one process $one tok/s"
for l in "${layouts[@]}"; do
  m=$(median "${results[$l]}")
  echo "median: $l $m tok/s ($(awk -v a="$m" -v b="$one" 'BEGIN {printf "%.2f", a / b}')x one process)"
done
