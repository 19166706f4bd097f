#!/usr/bin/env bash
# Installs the Debian 12 packages m2 builds with. Idempotent: does nothing when all are present.
set -euo pipefail
packages=(
  g++ make cmake            # C++20 compiler and build
  nlohmann-json3-dev        # JSON: config.json, safetensors headers, index files
  libcli11-dev              # command line of the m2 binary
  libfmt-dev                # formatting of messages and tables
  libgtest-dev              # unit and reference tests
  libbenchmark-dev          # Google Benchmark: bench/
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
