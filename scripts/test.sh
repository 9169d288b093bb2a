#!/usr/bin/env bash
# README command 2 (and what CI runs first): install what is missing, configure, build everything
# (tests, examples, benchmarks; CUDA code too when nvcc is installed) and run the whole test suite.
# GPU tests report themselves as skipped on machines without a CUDA device.
# Environment: LORI_BUILD_DIR (default build-test), LORI_JOBS (default: all cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
build="${LORI_BUILD_DIR:-build-test}"
jobs="${LORI_JOBS:-$(nproc)}"
# Real peers for the interop tests (numpy, the safetensors package) go into a private venv.
py_args=()
if bash scripts/pyenv.sh "$build/pyenv"; then py_args=("-DLORI_PYTHON=$PWD/$build/pyenv/bin/python"); fi
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release "${py_args[@]}" "$@"
cmake --build "$build" -j"$jobs"
ctest --test-dir "$build" --output-on-failure -j"$jobs"
