#!/usr/bin/env bash
# GPU checkpoint of the merge helper (issue #6, merge into base weights). Called from the repository root:
#   bash scripts/gpu/check_merge.sh BUILD_DIR OUT_DIR
# BUILD_DIR is configured (Release, CUDA, arch 90) with lori_test_gpu_ops and lori_bench_cuda built.
# Runs the merge GPU test cases, compute-sanitizer memcheck + racecheck on the sparse route's odd shapes,
# the merge benchmarks (sparse route at the target and its parts, the density crossover against the
# streaming tensor-core route) next to a copy of exactly W (cudaMemcpy and an SM copy kernel), and Nsight
# Compute on the sparse kernel; writes OUT_DIR/merge.txt (< 200 lines).
# Time limits (timeout): tests 18 s, memcheck 6 s, racecheck 6 s, benchmarks 37 s, ncu 11 s: <= 78 s.
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
  timeout 18 "$t" -tc='*merge*' 2>&1 | grep -vE "^\[doctest\] (doctest version|run with)" | tail -40 | cut -c1-300
  echo "rc=${PIPESTATUS[0]} ($(( $(date +%s) - s0 )) s)"
  echo "== compute-sanitizer memcheck (sparse route, odd shapes, bf16: every variant, the streaming / cuBLAS cross-checks)"
  timeout 6 compute-sanitizer --tool memcheck --report-api-errors no --error-exitcode 9 "$t" -tc='*sparse route?*odd*bfloat16*' 2>&1 |
    grep -iE "summary|invalid|error|test cases|assertions" | cut -c1-240 | head -16
  echo "rc=${PIPESTATUS[0]}"
  echo "== compute-sanitizer racecheck (sparse route, odd shapes, bf16)"
  rc_log="$O/racecheck.log"
  timeout 6 compute-sanitizer --tool racecheck --report-api-errors no --error-exitcode 9 "$t" \
    -tc='*sparse route?*odd*bfloat16*' > "$rc_log" 2>&1
  echo "rc=$?"
  grep -iE "summary|race reported|hazard|error|test cases|assertions" "$rc_log" | grep -v nvjet | cut -c1-240 | head -12
  echo "hazard lines naming lori's merge kernels: $(grep -cE "merge_sparse_kernel|merge_stream_kernel|pack_kernel|pack_tiled_kernel" "$rc_log")"
  rm -f "$rc_log"
  echo "== benchmarks (median of 5; floor = BM_gpu_baseline_copy_w/14336, one copy of W)"
  echo "   merge/T/d/sparse/equal (merge_into); merge_sparse/T/d/kept%/mode: 0 sparse route, 1 its W stream alone,"
  echo "   2 its entries + math alone (no W), 3 streaming tensor-core route on the same inputs, 5 / 6 = 0 / 1 with"
  echo "   the kernel variant of 8 W rows in flight per warp, 2 blocks per SM, 8 = 0 with W prefetched into L2"
  echo "   8 rows beyond the register ring, 10 / 11 = 0 / 2 with entry lists built by a first kernel, 12 = 5 + 8"
  timeout 37 stdbuf -oL "$b" --benchmark_filter='BM_gpu_(baseline_copy_w/14336|merge/4/14336/(0/0|1/0)/|merge/8/14336/1/0/|merge_sparse/4/14336/(10/(1|2|5|8|10|11|12)|20/(0|3))/|merge_sparse/8/14336/10/12/)' \
    --benchmark_repetitions=5 --benchmark_report_aggregates_only=true 2>&1 | grep -E "_median|^BM|Run on|error|Error" |
    grep -v "_mean\|_stddev\|_cv" | sed -E 's/floor = one copy of W \(BM_gpu_baseline_copy_w\)//; s/min_time:0\.[0-9]+\///' | cut -c1-230 | head -40
  echo "rc=${PIPESTATUS[0]}"
  echo "== ncu: merge_into, 4 sparse adapters (rank 32, 10 % kept), unequal scales, 14336 x 4096 bf16: sparse kernel"
  m="smsp__issue_active.avg.pct_of_peak_sustained_active,smsp__inst_executed.sum,sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_active,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared.avg.pct_of_peak_sustained_elapsed,smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio,smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_short_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_wait_per_issue_active.ratio,smsp__average_warps_issue_stalled_lg_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_not_selected_per_issue_active.ratio,smsp__average_warps_issue_stalled_no_instruction_per_issue_active.ratio,smsp__average_warps_issue_stalled_drain_per_issue_active.ratio,smsp__average_warps_issue_stalled_dispatch_stall_per_issue_active.ratio,dram__bytes_read.sum,dram__bytes_write.sum"
  timeout 11 ncu --section SpeedOfLight --section Occupancy --section LaunchStats --metrics "$m" \
    -k regex:'merge_sparse_kernel' -c 1 \
    "$b" --benchmark_filter='BM_gpu_merge/4/14336/1/0/' --benchmark_repetitions=1 2>&1 |
    grep -E "merge_sparse_kernel|Duration|DRAM Throughput|Memory Throughput|Compute \(SM\)|Registers Per|Shared Memory Config|Dynamic Shared|Block Limit|Achieved Occupancy|Theoretical Occupancy|Grid Size|Block Size|stalled|issue_active|inst_executed|pipe_|wavefronts|dram__bytes|SM Frequency" |
    sed -E 's/smsp__average_warps_issue_stalled_//; s/_per_issue_active.ratio//' | cut -c1-200 | head -60
  echo "rc=${PIPESTATUS[0]}"
} > "$out" 2>&1
echo "wrote $out"
