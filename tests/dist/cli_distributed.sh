#!/usr/bin/env bash
# m2 run as a distributed job from the command line: rank 0 prints and writes --logits-out (equal
# to one process's), the hostfile form of multi-node launches works on loopback, and mis-sharded
# layouts are refused before weights are loaded, naming the value, ending every rank.
# Usage: cli_distributed.sh M2_BINARY DEMO_MODEL MPIEXEC
set -uo pipefail
m2=$1 demo=$2 mpiexec=$3
here=$(cd "$(dirname "$0")" && pwd)
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
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Same ids and logits as one process (fp32 activations: equal within 1e-5 relative).
gen=("$m2" run "$demo" --ids 5,17,3,99,42,7 -n 12 --threads 1 --activations f32)
want=$("${gen[@]}" --logits-out "$tmp/one.safetensors" 2>/dev/null)
printf 'localhost slots=2\n' >"$tmp/hostfile"
for layout in "--tensor-parallel-size 2" "--tensor-parallel-size 2 --enable-expert-parallel" \
              "--pipeline-parallel-size 2 --pipeline-layers 3,1"; do
  for launch in "-np 2" "-np 2 --hostfile $tmp/hostfile"; do
    got=$(timeout 120 "${mpi[@]}" $launch "${gen[@]}" $layout --logits-out "$tmp/dist.safetensors" 2>"$tmp/err")
    if [ "$got" != "$want" ]; then
      echo "FAIL $layout ($launch): ids '$got', one process '$want'"; cat "$tmp/err"; fail=1
    elif ! err=$(python3 "$here/compare_logits.py" "$tmp/dist.safetensors" "$tmp/one.safetensors" 1e-5); then
      echo "FAIL $layout ($launch): logits: $err"; fail=1
    else
      echo "ok   $layout ($launch): $got; logits $err"
    fi
  done
done
expect "no mpirun" "needs 2 processes: launch m2 with mpirun -np 2" "${run[@]}" --tensor-parallel-size 2
expect "world size" "the job has 2 processes but --tensor-parallel-size 4" "${mpi[@]}" -np 2 "${run[@]}" --tensor-parallel-size 4
expect "heads" "--tensor-parallel-size 3 does not divide the model's 8 attention heads" "${mpi[@]}" -np 3 "${run[@]}" --tensor-parallel-size 3
expect "layer sum" "--pipeline-layers 1,2 sum to 3 layers; the model has 4" "${mpi[@]}" -np 2 "${run[@]}" --pipeline-parallel-size 2 --pipeline-layers 1,2
expect "layer list" "'x' (entry 1) is not a positive layer count" "${mpi[@]}" -np 2 "${run[@]}" --pipeline-parallel-size 2 --pipeline-layers 1,x
expect "serve heads" "does not divide the model's 8 attention heads" "${mpi[@]}" -np 3 "$m2" serve "$demo" --port 0 --tensor-parallel-size 3
exit $fail
