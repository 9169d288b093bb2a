#!/usr/bin/env bash
# PEFT 0.21 round trip of the folders the `lori` tool writes (see scripts/gpu/peft_roundtrip.py).
# Needs a python3 with torch, transformers and peft 0.21 (the GPU machine has them) and lori's build
# dependencies (cmake, a C++17 compiler, Eigen, doctest, nlohmann-json).
# Environment: LORI_BUILD_DIR (default build-peft), PYTHON (default python3), DEVICE (default cpu).
set -euo pipefail
cd "$(dirname "$0")/../.."
build="${LORI_BUILD_DIR:-build-peft}"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DLORI_BUILD_TESTS=OFF -DLORI_BUILD_BENCHMARKS=OFF \
  -DLORI_ENABLE_CUDA=OFF -DLORI_INSTALL=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target lori_tool >/dev/null
"${PYTHON:-python3}" scripts/gpu/peft_roundtrip.py --lori "$build/bin/lori" --fixtures tests/data/peft_adapters \
  --work "$build/peft_roundtrip" --device "${DEVICE:-cpu}"
