#!/usr/bin/env bash
# GPU checkpoint of the merge helper (issue #6, merge into base weights). Called from the repository root:
#   bash scripts/gpu/check_merge.sh BUILD_DIR OUT_DIR
# BUILD_DIR is configured (Release, CUDA, arch 90) with lori_test_gpu_ops and lori_bench_cuda built.
# Runs the merge GPU test cases, compute-sanitizer memcheck + racecheck on the small-shape merge cases,
# the merge benchmarks (probe parts of the streaming route) next to a copy of exactly W (cudaMemcpy and an
# SM copy kernel, in-place tile copies) and a d2d copy, and Nsight Compute on the pack and streaming kernels;
# writes OUT_DIR/merge.txt (< 200 lines).
# Time limits (timeout): tests 12 s, memcheck 11 s, racecheck 11 s, benchmarks 34 s, ncu 10 s: <= 78 s.
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
  s0=$(date +%s)
  timeout 12 "$t" -tc='*merge*' 2>&1 | grep -vE "^\[doctest\] (doctest version|run with)" | tail -40 | cut -c1-300
  echo "rc=${PIPESTATUS[0]} ($(( $(date +%s) - s0 )) s)"
  echo "== compute-sanitizer memcheck (merge, odd shapes: both routes)"
  timeout 11 compute-sanitizer --tool memcheck --report-api-errors no --error-exitcode 9 "$t" -tc='*merge*odd*' 2>&1 |
    grep -iE "summary|invalid|error|test cases|assertions" | cut -c1-240 | head -16
  echo "rc=${PIPESTATUS[0]}"
  echo "== compute-sanitizer racecheck (streaming kernel and tiled pack: pack launches meeting in a chunk, no PDL; no cuBLAS)"
  rc_log="$O/racecheck.log"
  timeout 11 compute-sanitizer --tool racecheck --report-api-errors no --error-exitcode 9 "$t" \
    -tc='*tiled pack across*' > "$rc_log" 2>&1
  echo "rc=$?"
  grep -iE "summary|race reported|hazard|error|test cases|assertions" "$rc_log" | grep -v nvjet | cut -c1-240 | head -12
  echo "hazard lines naming lori's merge kernels: $(grep -cE "merge_stream_kernel|pack_kernel|pack_tiled_kernel" "$rc_log")"
  rm -f "$rc_log"
  echo "== benchmarks (median of 5; floor = BM_gpu_baseline_copy_w/14336, one copy of W)"
  echo "   probe bits: 1 no math, 2 no PDL, 4 no pack (kernel alone), 8 pack alone, 16 no W traffic"
  timeout 34 stdbuf -oL "$b" --benchmark_filter='BM_gpu_(baseline_d2d_copy/234|baseline_copy_w/14336|baseline_copy_w_kernel/14336/1|merge/1/14336/0/0/|merge/4/14336/(0/0|1/0|0/1)/|merge_probe/4/14336/0/0/(6|7|8|22)/|merge_probe/4/14336/1/0/8/)' \
    --benchmark_repetitions=5 --benchmark_report_aggregates_only=true 2>&1 | grep -E "_median|^BM|Run on|error|Error" |
    grep -v "_mean\|_stddev\|_cv" | sed -E 's/floor = one copy of W \(BM_gpu_baseline_copy_w\)//; s/min_time:0.100\///' | cut -c1-230 | head -40
  echo "rc=${PIPESTATUS[0]}"
  echo "== ncu: merge_into (tiled pack + streaming kernel), 4 dense adapters, unequal scales, 14336 x 4096 bf16"
  m="smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio,smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_short_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_wait_per_issue_active.ratio,smsp__average_warps_issue_stalled_lg_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_sleeping_per_issue_active.ratio,smsp__average_warps_issue_stalled_membar_per_issue_active.ratio,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,dram__bytes_read.sum,dram__bytes_write.sum"
  timeout 10 ncu --section SpeedOfLight --section Occupancy --section LaunchStats --metrics "$m" \
    -k regex:'merge_stream_kernel|pack_tiled_kernel' -c 2 \
    "$b" --benchmark_filter='BM_gpu_merge/4/14336/0/0/' --benchmark_repetitions=1 2>&1 |
    grep -E "merge_stream_kernel|merge_ws_kernel|pack_kernel|pack_tiled_kernel|Duration|DRAM Throughput|Memory Throughput|Compute \(SM\)|Registers Per|Achieved Occupancy|Grid Size|Block Size|stalled|hmma|dram__bytes" |
    sed -E 's/smsp__average_warps_issue_stalled_//; s/_per_issue_active.ratio//' | cut -c1-200 | head -70
  echo "rc=${PIPESTATUS[0]}"
} > "$out" 2>&1
echo "wrote $out"
