#!/usr/bin/env bash
# The NEON kernels' correctness on this x86 machine: cross-compile the kernel and fixture tests for
# AArch64 (tests/arm64/CMakeLists.txt) and run them under qemu-aarch64 user-mode emulation, with
# the dotprod and BF16 extensions (qemu's default CPU has both: the SDOT and BFDOT kernels) and
# without (M2_CPU_NO_DOTPROD=1 M2_CPU_NO_BF16=1). Speed under
# emulation means nothing; only correctness is checked here.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in aarch64-linux-gnu-g++ qemu-aarch64; do
  command -v "$tool" >/dev/null || { echo "test_arm64: $tool not found (scripts/setup.sh installs it)" >&2; exit 1; }
done
cmake -S tests/arm64 -B build/arm64 -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ -DCMAKE_SYSTEM_NAME=Linux \
  -DCMAKE_SYSTEM_PROCESSOR=aarch64 -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build/arm64 -j"$(nproc)"
run() { qemu-aarch64 -L /usr/aarch64-linux-gnu build/arm64/arm64_tests --gtest_brief=1 "$@"; }
# Every kernel against the scalar reference; the fixtures' logits against HF float64.
filter='Linear.*:AllFormats/Fixture.LogitsMatchReference/*'
run --gtest_filter="$filter"
# Without dotprod and BF16 (and on the generic path) there is no Q8 or bf16 product: their tests ran above.
M2_CPU_NO_DOTPROD=1 M2_CPU_NO_BF16=1 run --gtest_filter='Linear.*:-Linear.Q8*:Linear.Bf16*'
M2_CPU_GENERIC=1 run --gtest_filter='Linear.*:-Linear.Q8*:Linear.Bf16*'
