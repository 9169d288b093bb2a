#!/usr/bin/env bash
# GPU checkpoint of the merge helper (issue #6, merge into base weights). Called from the repository root:
#   bash scripts/gpu/check_merge.sh BUILD_DIR OUT_DIR
# BUILD_DIR is configured (Release, CUDA, arch 90) with lori_test_gpu_ops and lori_bench_cuda built.
# Runs the merge GPU test cases, compute-sanitizer memcheck + racecheck on the small-shape merge cases,
# the merge benchmarks next to a copy of exactly W and a d2d copy, and Nsight Compute on the streaming
# merge kernel (+ its pack kernel); writes OUT_DIR/merge.txt (< 200 lines).
# Time limits (timeout): tests 17 s, memcheck 10 s, racecheck 12 s, benchmarks 24 s, ncu 16 s: <= 79 s.
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
  timeout 17 "$t" -tc='*merge*' 2>&1 | tail -40 | cut -c1-300
  echo "rc=${PIPESTATUS[0]}"
  echo "== compute-sanitizer memcheck (merge, odd shapes: both routes)"
  timeout 10 compute-sanitizer --tool memcheck --report-api-errors no --error-exitcode 9 "$t" -tc='*merge*odd*' 2>&1 |
    grep -iE "summary|invalid|error|test cases|assertions" | cut -c1-240 | head -16
  echo "rc=${PIPESTATUS[0]}"
  echo "== compute-sanitizer racecheck (streaming kernel, odd shapes)"
  rc_log="$O/racecheck.log"
  timeout 12 compute-sanitizer --tool racecheck --report-api-errors no --error-exitcode 9 "$t" -tc='*streaming*fallbacks*' > "$rc_log" 2>&1
  echo "rc=$?"
  grep -iE "summary|race reported|hazard|error|test cases|assertions" "$rc_log" | cut -c1-240 | head -12
  echo "hazard lines naming lori's merge kernels (merge_stream_kernel / pack_kernel): $(grep -cE "merge_stream_kernel|pack_kernel" "$rc_log")"
  rm -f "$rc_log"
  echo "== benchmarks (median of 5; floor = BM_gpu_baseline_copy_w/14336, one copy of W)"
  timeout 24 stdbuf -oL "$b" --benchmark_filter='BM_gpu_(baseline_d2d_copy/234|baseline_copy_w/14336|merge/1/14336/0|merge/4/14336|merge/8/14336|merge_probe/)' \
    --benchmark_repetitions=5 --benchmark_report_aggregates_only=true 2>&1 | grep -E "_median|^BM|Run on|error|Error" |
    grep -v "_mean\|_stddev\|_cv" | cut -c1-250 | head -40
  echo "rc=${PIPESTATUS[0]}"
  echo "== ncu: pack + streaming merge kernel, 4 dense adapters, unequal scales, 14336 x 4096 bf16"
  timeout 16 ncu --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section WarpStateStats \
    --section LaunchStats -k regex:'merge_stream_kernel|pack_kernel' -c 2 \
    "$b" --benchmark_filter='BM_gpu_merge/4/14336/0/0' --benchmark_repetitions=1 2>&1 |
    grep -A2 -E "merge_stream_kernel|pack_kernel|Duration|DRAM Throughput|Memory Throughput|L2 Hit|L1/TEX Hit|Compute \(SM\)|Registers Per|Achieved Occupancy|Warp Cycles Per Issued|Grid Size|stalled" |
    grep -E "merge_stream_kernel|pack_kernel|Duration|DRAM Throughput|Memory Throughput|L2 Hit|L1/TEX Hit|Compute \(SM\)|Registers Per|Achieved Occupancy|Warp Cycles Per Issued|Grid Size|stall|cycles|instruction" |
    cut -c1-230 | head -60
  echo "rc=${PIPESTATUS[0]}"
} > "$out" 2>&1
echo "wrote $out"
