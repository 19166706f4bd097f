#!/bin/bash
# Reproduces the quantization table of docs/QUALITY.md: the demo model quantized by every recipe and
# scale rule, evaluated against its BF16 original on the held-out prose and code (the first 8192
# tokens of each, windows of 1024 + 1, as models/tiny-m2-demo/reference-nll.safetensors).
# Calibration: every 512-token sequence of the same held-out files *after* those 8192 tokens (95,
# disjoint from what is scored). Usage: scripts/quality.sh [OUT_DIR] (default /tmp/m2-quality).
set -euo pipefail
cd "$(dirname "$0")/.."
M2=${M2:-build/release/m2}
DEMO=models/tiny-m2-demo
OUT=${1:-/tmp/m2-quality}
rm -rf "$OUT" && mkdir -p "$OUT"

# Calibration ids: the 512-token sequences of each file from token 8192 on.
for f in prose code; do $M2 tokenize $DEMO < $DEMO/eval-text/test-$f.txt > "$OUT/$f.ids.json"; done
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
seqs = []
for f in ("prose", "code"):
    ids = json.load(open(f"{out}/{f}.ids.json"))[8192:]
    seqs += [ids[i * 512:(i + 1) * 512] for i in range(len(ids) // 512)]
json.dump(seqs, open(f"{out}/calib.json", "w"))
PY
CAL="--calib $OUT/calib.json --calib-samples 1000 --calib-seq-len 512"

q() { local name=$1; shift; $M2 quantize $DEMO "$OUT/$name" -q "$@" 2>&1 | { grep -v "^m2 quantize" || true; }; }
q nvfp4-max      --recipe nvfp4-experts-only $CAL
q nvfp4-mse      --recipe nvfp4-experts-only $CAL --scale-search mse
q nvfp4-mse-w    --recipe nvfp4-experts-only $CAL --scale-search mse-weighted
q nvfp4-mse-w-ae --recipe nvfp4-experts-only $CAL --scale-search mse-weighted --calib-all-experts
q nvfp4-gptq     --recipe nvfp4-experts-only $CAL --gptq
q nvfp4-gptq-mse --recipe nvfp4-experts-only $CAL --gptq --scale-search mse
q nvfp4-ct-max   --recipe nvfp4-ct $CAL
q nvfp4-ct-mse-w --recipe nvfp4-ct $CAL --scale-search mse-weighted
q nvfp4-ct-gptq  --recipe nvfp4-ct $CAL --gptq --scale-search mse
q mxfp4-ct       --recipe mxfp4-experts
q mxfp4-ocp      --recipe mxfp4-experts --mx-rule ocp
q mxfp4-mse      --recipe mxfp4-experts --scale-search mse
q mxfp4-mse-w    --recipe mxfp4-experts $CAL --scale-search mse-weighted
q mxfp4-gptq     --recipe mxfp4-experts $CAL --gptq
q mxfp4-gptq-mse --recipe mxfp4-experts $CAL --gptq --scale-search mse

MODELS="nvfp4-max nvfp4-mse nvfp4-mse-w nvfp4-mse-w-ae nvfp4-gptq nvfp4-gptq-mse nvfp4-ct-max nvfp4-ct-mse-w nvfp4-ct-gptq
        mxfp4-ct mxfp4-ocp mxfp4-mse mxfp4-mse-w mxfp4-gptq mxfp4-gptq-mse"
for f in prose code; do
  for m in $MODELS; do
    $M2 eval --model "$OUT/$m" --ref $DEMO --text $DEMO/eval-text/test-$f.txt --ctx 1024 --max-tokens 8192 -q \
        --json "$OUT/eval-$m-$f.json" > /dev/null
  done
done
for m in nvfp4-max nvfp4-gptq-mse nvfp4-ct-gptq mxfp4-ct mxfp4-gptq-mse; do
  $M2 eval --experts "$OUT/$m" --ref $DEMO --json "$OUT/experts-$m.json" --plots "$OUT/plots-$m" > "$OUT/experts-$m.md"
done

python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
rows = [("nvfp4-max", "NVFP4 ModelOpt, max (published rule)"), ("nvfp4-mse", "NVFP4 ModelOpt, MSE"),
        ("nvfp4-mse-w", "NVFP4 ModelOpt, MSE activation-weighted"), ("nvfp4-mse-w-ae", "NVFP4 ModelOpt, MSE weighted, all-expert calibration"),
        ("nvfp4-gptq", "NVFP4 ModelOpt, GPTQ"), ("nvfp4-gptq-mse", "NVFP4 ModelOpt, GPTQ + MSE"),
        ("nvfp4-ct-max", "NVFP4 compressed-tensors (attention too), max"), ("nvfp4-ct-mse-w", "NVFP4 compressed-tensors (attention too), MSE weighted"),
        ("nvfp4-ct-gptq", "NVFP4 compressed-tensors (attention too), GPTQ + MSE"),
        ("mxfp4-ct", "MXFP4, compressed-tensors exponent rule"), ("mxfp4-ocp", "MXFP4, OCP exponent rule"),
        ("mxfp4-mse", "MXFP4, MSE"), ("mxfp4-mse-w", "MXFP4, MSE activation-weighted"),
        ("mxfp4-gptq", "MXFP4, GPTQ"), ("mxfp4-gptq-mse", "MXFP4, GPTQ + MSE")]
for f in ("prose", "code"):
    ref = json.load(open(f"{out}/eval-nvfp4-max-{f}.json"))["ref_ppl"]
    print(f"\n{f}: BF16 PPL {ref:.4f}\n")
    print("| checkpoint | PPL | ΔPPL | KLD mean | KLD median | KLD p99 | top-1 | KLD > 1 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for m, label in rows:
        j = json.load(open(f"{out}/eval-{m}-{f}.json"))
        print(f"| {label} | {j['ppl']:.4f} | {j['ppl_delta_pct']:+.3f}% | {j['kld_mean']:.5f} | {j['kld_median']:.5f} | "
              f"{j['kld_p99']:.5f} | {100*j['top1']:.2f}% | {100*j['kld_gt1']:.3f}% |")
print("\nper-expert relative weight error (whole expert):\n")
print("| checkpoint | mean | std | min | max |")
print("|---|---:|---:|---:|---:|")
for m in ("nvfp4-max", "nvfp4-gptq-mse", "nvfp4-ct-gptq", "mxfp4-ct", "mxfp4-gptq-mse"):
    s = json.load(open(f"{out}/experts-{m}.json"))["summary"]["whole"]
    print(f"| {m} | {s['mean']:.5f} | {s['std']:.5f} | {s['min']:.5f} | {s['max']:.5f} |")
PY
