#!/usr/bin/env bash
# The test command: set up, build, run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/fetch_tokenizers.sh
scripts/build.sh
ctest --test-dir build/release -j"$(nproc)" --output-on-failure
