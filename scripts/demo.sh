#!/usr/bin/env bash
# The main job: set up, build, and run the bundled demo model (models/tiny-m2-demo) on a text prompt
# and on a chat conversation (rendered with its MiniMax-M2 chat template, output split into
# reasoning, content and tool calls).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh >/dev/null
model=models/tiny-m2-demo
prompt="${1:-The President said that}"
echo "== m2 run $model --prompt \"$prompt\""
echo -n "$prompt"
build/release/m2 run "$model" --prompt "$prompt" --max-tokens "${2:-40}"
echo
echo "== m2 run $model --chat"
echo '{"messages": [{"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": "What did the President say to the Congress?"}]}' |
  build/release/m2 run "$model" --chat --max-tokens 48
