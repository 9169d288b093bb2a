#!/usr/bin/env bash
# Runs lori_test_gpu_ops under compute-sanitizer: memcheck, racecheck, synccheck and initcheck.
# Usage: tests/gpu/run_sanitizer.sh [build-dir] [tool ...]   (default: build, all four tools)
# compute-sanitizer from $COMPUTE_SANITIZER, PATH, or /usr/local/cuda.
# Each tool must report 0 errors (--error-exitcode makes ctest-style failure explicit). Test sizes are
# modest so one tool finishes in about a minute on an H100. LORI_TEST_SEED replays a seed.
set -euo pipefail
build=${1:-build}
shift || true
tools=("$@")
[ ${#tools[@]} -eq 0 ] && tools=(memcheck racecheck synccheck initcheck)
exe="$build/tests/gpu/lori_test_gpu_ops"
[ -x "$exe" ] || { echo "no $exe: build target lori_test_gpu_ops first" >&2; exit 2; }
cs=${COMPUTE_SANITIZER:-$(command -v compute-sanitizer || true)}
for c in "$cs" /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
  if [ -n "$c" ] && [ -x "$c" ]; then cs=$c; break; fi
done
[ -n "$cs" ] && [ -x "$cs" ] || { echo "compute-sanitizer not found (set COMPUTE_SANITIZER)" >&2; exit 2; }
status=0
for tool in "${tools[@]}"; do
  echo "== compute-sanitizer --tool $tool"
  # (no --leak-check: library handles may keep process-lifetime allocations)
  if ! "$cs" --tool "$tool" --error-exitcode 99 "$exe"; then
    echo "== $tool: FAILED" >&2
    status=1
  fi
done
exit $status
