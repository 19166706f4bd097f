#!/usr/bin/env bash
# libFuzzer runs of every harness (fuzz/*.cpp), built by the `fuzz` preset (Debian clang, ASan +
# UBSan). Each harness runs until 10^6 executions or SECONDS, whichever comes first, from its seed
# corpus (fuzz/corpus/NAME, read-only) plus what it found before (build/fuzz/corpus/NAME); crashing
# inputs land in build/fuzz/findings/NAME-*. Prints libFuzzer's final stats per harness.
#   scripts/fuzz.sh [SECONDS] [NAME...]      default: 600 s, every harness
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-600}
shift || true
NAMES=("$@")
[ ${#NAMES[@]} -eq 0 ] && NAMES=(fuzz_safetensors fuzz_config fuzz_tokenizer_json fuzz_tokenize fuzz_detokenizer fuzz_jinja fuzz_parsers fuzz_http)
if [ -z "${M2_FUZZ_NO_BUILD:-}" ]; then  # M2_FUZZ_NO_BUILD=1: the harnesses are built already
  cmake --preset fuzz >/dev/null
  cmake --build build/fuzz -j"$(nproc)" --target "${NAMES[@]}"
fi
mkdir -p build/fuzz/findings
for n in "${NAMES[@]}"; do
  mkdir -p "build/fuzz/corpus/$n"
  max_len=4096
  case $n in fuzz_jinja|fuzz_config|fuzz_tokenizer_json) max_len=16384 ;; esac
  echo "== $n (${SECONDS_EACH} s or 10^6 runs)"
  "build/fuzz/fuzz/$n" -runs=1000000 -max_total_time="$SECONDS_EACH" -max_len=$max_len \
    -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix="build/fuzz/findings/$n-" \
    "build/fuzz/corpus/$n" "fuzz/corpus/$n" 2>&1 | grep -E "^(stat::|==|SUMMARY|fuzz finding|Done)|ERROR" || true
done
