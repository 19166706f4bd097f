#!/usr/bin/env bash
# The main job: set up, build, and run the bundled demo model (models/tiny-m2-demo).
# Until the tokenizer lands the prompt is token ids; "The President said that" in the demo vocabulary.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh >/dev/null
model=models/tiny-m2-demo
build/release/m2 inspect "$model"
echo
prompt="${1:-2693,1456,1847,338}"
echo "prompt ids: $prompt"
echo -n "greedy continuation ids: "
build/release/m2 run "$model" --ids "$prompt" --max-tokens "${2:-40}"
