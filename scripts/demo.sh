#!/usr/bin/env bash
# The main job: set up, build, start `m2 serve` on the bundled demo model (models/tiny-m2-demo), send
# it a streaming chat request with curl, print the answer as it streams, then stop the server.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh >/dev/null
model=models/tiny-m2-demo
question="${1:-What did the President say to the Congress?}"
log=$(mktemp)
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -f "$log"' EXIT
build/release/m2 serve "$model" --port 0 --served-model-name tiny-m2-demo >"$log" 2>&1 &
pid=$!
for _ in $(seq 1 600); do
  url=$(grep -o 'http://127.0.0.1:[0-9]*' "$log" || true)
  [ -n "$url" ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.1
done
echo "== m2 serve $model: $url"
echo "== POST $url/v1/chat/completions (streaming): $question"
body=$(printf '{"model": "tiny-m2-demo", "stream": true, "max_tokens": 60, "temperature": 0,
  "messages": [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "%s"}]}' "$question")
# Print each delta as it arrives: the reasoning, then the answer.
curl -sN "$url/v1/chat/completions" -H 'Content-Type: application/json' -d "$body" | python3 -u -c '
import json, sys
part = None
for line in sys.stdin:
    line = line.strip()
    if line == "data: [DONE]":
        break
    if not line.startswith("data: "):
        continue
    for ch in json.loads(line[6:])["choices"]:
        d = ch["delta"]
        for key, label in (("reasoning_content", "reasoning"), ("content", "answer")):
            if d.get(key):
                if part != label:
                    sys.stdout.write(("\n" if part else "") + "[" + label + "] ")
                    part = label
                sys.stdout.write(d[key])
        if ch.get("finish_reason"):
            sys.stdout.write("\n(finish_reason: " + ch["finish_reason"] + ")\n")
        sys.stdout.flush()
'
echo "== server log"
kill -TERM "$pid"
wait "$pid" || true
cat "$log"
