#!/usr/bin/env bash
# README command 1: install what is missing, configure, build and run lori's main example.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DLORI_BUILD_TESTS=OFF -DLORI_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build build -j"$(nproc)" --target lori_example
exec ./build/examples/lori_example "$@"
