#!/bin/bash
# Cross-validation of the MXFP4 GPTQ rows of docs/QUALITY.md: the demo model quantized with the max
# rule and with GPTQ + 20 refinement sweeps (damping 0.01 and 0.1, route-weighted, and calibrated on
# prose and code in equal shares: two --calib files of equal weight), scored on the 8192-token window of
# each held-out file that starts at token START, and calibrated on every 512-token sequence of the
# same files outside that window (the tokens before it, then the tokens after it: 161 sequences for
# START = 0, 8192 and 16384, as in scripts/quality.sh, whose split is START = 0).
# Usage: scripts/quality_splits.sh START [OUT_DIR] (default /tmp/m2-quality-START). Prints the mean
# KLD of each checkpoint on prose and code and the cut of each GPTQ row against the max rule.
set -euo pipefail
cd "$(dirname "$0")/.."
M2=${M2:-build/release/m2}
DEMO=models/tiny-m2-demo
START=${1:?START: first scored token, e.g. 0, 8192 or 16384}
OUT=${2:-/tmp/m2-quality-$START}
rm -rf "$OUT" && mkdir -p "$OUT"

for f in prose code; do $M2 tokenize $DEMO < $DEMO/eval-text/test-$f.txt > "$OUT/$f.ids.json"; done
python3 - "$OUT" "$START" <<'PY'
import json, sys
out, start = sys.argv[1], int(sys.argv[2])
seqs = []
for f in ("prose", "code"):
    ids = json.load(open(f"{out}/{f}.ids.json"))
    if len(ids) < start + 8192:
        sys.exit(f"{f}: {len(ids)} tokens, the window [{start}, {start + 8192}) does not fit")
    json.dump(ids[start:start + 8192], open(f"{out}/score-{f}.json", "w"))
    mine = []
    for part in (ids[:start], ids[start + 8192:]):
        mine += [part[i * 512:(i + 1) * 512] for i in range(len(part) // 512)]
    json.dump(mine, open(f"{out}/calib-{f}.json", "w"))
    seqs += mine
json.dump(seqs, open(f"{out}/calib.json", "w"))
print(f"scored [{start}, {start + 8192}) of each file; {len(seqs)} calibration sequences")
PY
CAL="--calib $OUT/calib.json --calib-samples 1000 --calib-seq-len 512"

q() { local name=$1; shift; $M2 quantize $DEMO "$OUT/$name" -q "$@" 2>&1 | { grep -v "^m2 quantize" || true; }; }
q mxfp4-ct --recipe mxfp4-experts
q mxfp4-gptq-r20 --recipe mxfp4-experts $CAL --gptq --gptq-refine 20
q mxfp4-gptq-r20-d01 --recipe mxfp4-experts $CAL --gptq --gptq-refine 20 --gptq-damp 0.1
q mxfp4-gptq-r20-rw --recipe mxfp4-experts $CAL --gptq --gptq-refine 20 --gptq-route-weighted
q mxfp4-gptq-r20-eq --recipe mxfp4-experts --calib "$OUT/calib-prose.json" --calib "$OUT/calib-code.json" \
    --calib-samples 1000 --calib-seq-len 512 --gptq --gptq-refine 20

MODELS="mxfp4-ct mxfp4-gptq-r20 mxfp4-gptq-r20-d01 mxfp4-gptq-r20-rw mxfp4-gptq-r20-eq"
for f in prose code; do
  for m in $MODELS; do
    $M2 eval --model "$OUT/$m" --ref $DEMO --ids "$OUT/score-$f.json" --ctx 1024 -q --json "$OUT/eval-$m-$f.json" > /dev/null
  done
done
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
print("| checkpoint | KLD prose | KLD code | cut prose / code |")
print("|---|---:|---:|---:|")
base = {f: json.load(open(f"{out}/eval-mxfp4-ct-{f}.json"))["kld_mean"] for f in ("prose", "code")}
for m, label in (("mxfp4-ct", "MXFP4, max (compressed-tensors rule)"), ("mxfp4-gptq-r20", "MXFP4, GPTQ + refine 20"),
                 ("mxfp4-gptq-r20-d01", "MXFP4, GPTQ + refine 20, damping 0.1"),
                 ("mxfp4-gptq-r20-rw", "MXFP4, GPTQ + refine 20, route-weighted"),
                 ("mxfp4-gptq-r20-eq", "MXFP4, GPTQ + refine 20, prose and code in equal shares")):
    k = {f: json.load(open(f"{out}/eval-{m}-{f}.json"))["kld_mean"] for f in ("prose", "code")}
    cut = " / ".join(f"{100 * (1 - k[f] / base[f]):.1f}%" for f in ("prose", "code"))
    print(f"| {label} | {k['prose']:.5f} | {k['code']:.5f} | {cut} |")
PY
