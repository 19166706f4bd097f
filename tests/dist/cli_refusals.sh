#!/usr/bin/env bash
# m2 refuses mis-sharded layouts before loading weights, naming the value, and ends every rank.
# Usage: cli_refusals.sh M2_BINARY DEMO_MODEL MPIEXEC
set -uo pipefail
m2=$1 demo=$2 mpiexec=$3
fail=0
expect() {  # expect NAME PATTERN COMMAND...: the command fails within 120 s and its output has PATTERN
  local name=$1 pattern=$2
  shift 2
  local out rc
  out=$(timeout 120 "$@" 2>&1)
  rc=$?
  if [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ] || ! grep -qF -- "$pattern" <<<"$out"; then
    echo "FAIL $name (exit $rc): expected '$pattern' in:"
    echo "$out"
    fail=1
  else
    echo "ok   $name"
  fi
}
run=("$m2" run "$demo" --ids 1,2,3 -n 2 --threads 1)
mpi=("$mpiexec" --oversubscribe)
expect "no mpirun" "needs 2 processes: launch m2 with mpirun -np 2" "${run[@]}" --tensor-parallel-size 2
expect "world size" "the job has 2 processes but --tensor-parallel-size 4" "${mpi[@]}" -np 2 "${run[@]}" --tensor-parallel-size 4
expect "heads" "--tensor-parallel-size 3 does not divide the model's 8 attention heads" "${mpi[@]}" -np 3 "${run[@]}" --tensor-parallel-size 3
expect "layer sum" "--pipeline-layers 1,2 sum to 3 layers; the model has 4" "${mpi[@]}" -np 2 "${run[@]}" --pipeline-parallel-size 2 --pipeline-layers 1,2
expect "layer list" "'x' (entry 1) is not a positive layer count" "${mpi[@]}" -np 2 "${run[@]}" --pipeline-parallel-size 2 --pipeline-layers 1,x
expect "serve heads" "does not divide the model's 8 attention heads" "${mpi[@]}" -np 3 "$m2" serve "$demo" --port 0 --tensor-parallel-size 3
exit $fail
