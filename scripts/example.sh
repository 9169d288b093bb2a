#!/usr/bin/env bash
# README command 1: install what is missing, build the `lori` tool and run the main example, the LoRI
# workflow on the real PEFT adapters bundled in tests/data/peft_adapters (examples/lori_workflow.sh):
# inspect, calibrate LoRI-S masks, sparsify, measure interference, merge, pack/unpack.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DLORI_BUILD_TESTS=OFF -DLORI_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build build -j"$(nproc)" --target lori_tool lori_example
./build/examples/lori_example
exec bash examples/lori_workflow.sh "$PWD/build/bin/lori" "$@"
