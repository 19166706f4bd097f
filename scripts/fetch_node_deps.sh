#!/usr/bin/env bash
# Installs the npm packages the server tests drive m2 serve with (the official `openai` and
# `@anthropic-ai/sdk` clients, pinned by tests/server/package-lock.json) from the npm registry.
# Idempotent: does nothing when node_modules matches the lock file.
set -euo pipefail
cd "$(dirname "$0")/../tests/server"
stamp=node_modules/.m2-lock-sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
npm ci --silent --no-audit --no-fund
echo "$want" > "$stamp"
