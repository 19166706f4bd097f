#!/usr/bin/env bash
# The test command: set up, build, run every test, and the AArch64 kernel and fixture tests under
# qemu (scripts/test_arm64.sh); then build with AddressSanitizer + UBSan and run
# every test again (bad input must never corrupt memory). `scripts/test.sh --quick` skips the second pass.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/fetch_tokenizers.sh
scripts/fetch_node_deps.sh
scripts/build.sh
ctest --test-dir build/release -j"$(nproc)" --output-on-failure
scripts/test_arm64.sh
if [ "${1:-}" != "--quick" ]; then
  cmake --preset asan >/dev/null
  cmake --build build/asan -j"$(nproc)"
  # The sanitizer pass hunts memory errors; the long numeric checks below only slow it down (they run
  # in the release pass; Eval.DemoPerplexityAndSelfComparison alone took 284 s of it, its code paths
  # run under the sanitizers in the other Eval tests).
  # The soak is the release pass's: under ASan its RSS bound means nothing (the allocator's
  # quarantine grows by design) and the request path is fuzzed there already (Fuzz.fuzz_http).
  # The distributed code runs under the sanitizers in Distributed.Ranks2 (every layout of 2 ranks,
  # model and engine) and Server.OpenAiApiTp2 (the server at TP 2); the 4-rank job, m2 run's
  # command line and the multi-server Server.Distributed add minutes, no code paths.
  ctest --test-dir build/asan -j"$(nproc)" --output-on-failure \
    -E "DemoModel.PerplexityWithinHalfAPercentOfReference|Quantize.GptqBringsTheDemoCloserToBf16|Server.Soak|Eval.DemoPerplexityAndSelfComparison|Distributed.Ranks4|Distributed.CommandLine|Server.Distributed"
fi
