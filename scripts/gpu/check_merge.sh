#!/usr/bin/env bash
# GPU checkpoint of the merge helper (issue #6, merge into base weights). Called from the repository root:
#   bash scripts/gpu/check_merge.sh BUILD_DIR OUT_DIR
# BUILD_DIR is configured (Release, CUDA, arch 90) with lori_test_gpu_ops and lori_bench_cuda built.
# Runs the merge GPU test cases, compute-sanitizer memcheck + racecheck on the small-shape merge cases,
# and the merge benchmarks next to a copy of exactly W; writes OUT_DIR/merge.txt (~100 lines).
# Time limits (timeout): tests 20 s, each sanitizer 10 s, benchmarks 32 s: at most 72 s.
set -uo pipefail
B="${1:?BUILD_DIR}"
O="${2:?OUT_DIR}"
mkdir -p "$O"
out="$O/merge.txt"
t="$B/tests/gpu/lori_test_gpu_ops"
b="$B/bench/cuda/lori_bench_cuda"
{
  echo "== check_merge.sh $(git rev-parse --short HEAD 2>/dev/null) $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader 2>/dev/null | head -1
  echo "== merge GPU tests (lori_test_gpu_ops -tc='*merge*')"
  timeout 20 "$t" -tc='*merge*' 2>&1 | tail -25
  echo "rc=${PIPESTATUS[0]}"
  for tool in memcheck racecheck; do
    lim=10
    echo "== compute-sanitizer $tool (merge, odd shapes)"
    timeout "$lim" compute-sanitizer --tool "$tool" --report-api-errors no --error-exitcode 9 "$t" -tc='*merge*odd*' 2>&1 |
      grep -iE "summary|race reported|hazard|invalid|error|test cases|assertions" | cut -c1-240 | head -16
    echo "rc=${PIPESTATUS[0]}"
  done
  echo "== benchmarks (median of 5; floor = BM_gpu_baseline_copy_w/14336, one copy of W)"
  timeout 32 stdbuf -oL "$b" --benchmark_filter='BM_gpu_(baseline_d2d_copy/234|baseline_copy_w/14336|merge/1/|merge/4/14336|baseline_addmm_per_adapter/4/14336)' \
    --benchmark_repetitions=5 --benchmark_report_aggregates_only=true 2>&1 | grep -E "_median|_min|^BM|Run on|error|Error" | grep -v "_mean\|_stddev\|_cv" | head -60
  echo "rc=${PIPESTATUS[0]}"
} > "$out" 2>&1
echo "wrote $out"
