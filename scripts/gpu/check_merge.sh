#!/usr/bin/env bash
# GPU checkpoint of the merge helper (issue #6, merge into base weights). Called from the repository root:
#   bash scripts/gpu/check_merge.sh BUILD_DIR OUT_DIR
# BUILD_DIR is configured (Release, CUDA, arch 90) with lori_test_gpu_ops and lori_bench_cuda built.
# Runs the merge GPU test cases, compute-sanitizer memcheck (odd shapes: cuBLAS and the tile kernel; the
# strip kernel's long runs, bf16) and racecheck (the strip kernel's long runs, fp16), the merge benchmarks
# (merge_into = the tile kernel; the strip kernel's variants as probes) next to a copy of exactly W
# (cudaMemcpy, an SM copy kernel, an in-place tile copy) and a d2d copy, and Nsight Compute on the strip
# kernel with W through shared memory; writes OUT_DIR/merge.txt (< 200 lines).
# Time limits (timeout): tests 16 s, memcheck 11 s, racecheck 10 s, benchmarks 31 s, ncu 10 s: <= 78 s.
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
  timeout 16 "$t" -tc='*merge*' 2>&1 | grep -vE "^\[doctest\] (doctest version|run with)" | tail -40 | cut -c1-300
  echo "rc=${PIPESTATUS[0]} ($(( $(date +%s) - s0 )) s)"
  echo "== compute-sanitizer memcheck (merge odd shapes: cuBLAS and tile kernel; strip kernel long runs, bf16)"
  timeout 11 compute-sanitizer --tool memcheck --report-api-errors no --error-exitcode 9 "$t" -tc='*merge*odd*,*strip kernel long runs*bfloat16*' 2>-tc='*merge*odd*' 2>&11 |
    grep -iE "summary|invalid|error|test cases|assertions" | cut -c1-240 | head -16
  echo "rc=${PIPESTATUS[0]}"
  echo "== compute-sanitizer racecheck (strip kernel long runs: 2 blocks, rings wrapping; fp16)"
  rc_log="$O/racecheck.log"
  timeout 10 compute-sanitizer --tool racecheck --report-api-errors no --error-exitcode 9 "$t" \
    -tc='*strip kernel long runs*half*' > "$rc_log" 2>&1
  echo "rc=$?"
  grep -iE "summary|race reported|hazard|error|test cases|assertions" "$rc_log" | grep -v nvjet | cut -c1-240 | head -12
  echo "hazard lines naming lori's merge kernels: $(grep -cE "merge_stream_kernel|merge_strip_kernel|pack_kernel|pack_tiled_kernel" "$rc_log")"
  rm -f "$rc_log"
  echo "== benchmarks (median of 5; floor = BM_gpu_baseline_copy_w/14336, one copy of W)"
  echo "   merge_into = the tile kernel; strip kernel = 131072 or any strip bit; probe bits: 1 no math, 2 no PDL, 4 no pack, 8 pack alone, 16 no W traffic,"
  echo "   128 Bcat packed, 256 PF1, 512 .cs hints on W, 2048 PF3, 4096 L2 prefetch, 8192 Bcat evict-last,"
  echo "   16384 no Bcat fills / per-step barriers (ΔW wrong), 32768 Bcat ring on mbarriers, 65536 64-row steps,"
  echo "   262144 W in whole 512-byte rows through shared memory (ldmatrix / stmatrix)"
  timeout 31 stdbuf -oL "$b" --benchmark_filter='BM_gpu_(baseline_d2d_copy/234|baseline_copy_w/14336|baseline_copy_w_kernel/14336/1|merge/1/14336/0/0/|merge/4/14336/(0/0|1/0)/|merge_probe/4/14336/0/0/(131072|262144|262145|262160|278529|327680|294912|360448|16400|81936)/|merge_probe/(4/14336/1|1/14336/0)/0/262144/|merge_probe/4/14336/0/1/16400/|baseline_copy_w_tiles/14336/0)' \
    --benchmark_repetitions=5 --benchmark_report_aggregates_only=true 2>&1 | grep -E "_median|^BM|Run on|error|Error" |
    grep -v "_mean\|_stddev\|_cv" | sed -E 's/floor = one copy of W \(BM_gpu_baseline_copy_w\)//; s/min_time:0.100\///;' | cut -c1-200 | head -40
  echo "rc=${PIPESTATUS[0]}"
  echo "== ncu: strip kernel with W through shared memory (probe 262144), 4 dense adapters, unequal scales, 14336 x 4096 bf16"
  m="smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio,smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_short_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_wait_per_issue_active.ratio,smsp__average_warps_issue_stalled_lg_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_sleeping_per_issue_active.ratio,smsp__average_warps_issue_stalled_membar_per_issue_active.ratio,smsp__average_warps_issue_stalled_no_instruction_per_issue_active.ratio,smsp__average_warps_issue_stalled_branch_resolving_per_issue_active.ratio,smsp__average_warps_issue_stalled_dispatch_stall_per_issue_active.ratio,smsp__average_warps_issue_stalled_imc_miss_per_issue_active.ratio,smsp__average_warps_issue_stalled_not_selected_per_issue_active.ratio,smsp__average_warps_issue_stalled_selected_per_issue_active.ratio,smsp__average_warps_issue_stalled_drain_per_issue_active.ratio,smsp__average_warps_issue_stalled_misc_per_issue_active.ratio,smsp__average_warps_issue_stalled_tex_throttle_per_issue_active.ratio,smsp__inst_executed.sum,smsp__cycles_active.avg,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sector_hit_rate.pct"
  timeout 10 ncu --section SpeedOfLight --section Occupancy --section LaunchStats --metrics "$m" \
    -k regex:'merge_strip_kernel' -c 1 \
    "$b" --benchmark_filter='BM_gpu_merge_probe/4/14336/0/0/262144/' --benchmark_repetitions=1 2>&1 |
    grep -E "merge_strip_kernel|pack_tiled_kernel|Duration|DRAM Throughput|Memory Throughput|Compute \(SM\)|Registers Per|Achieved Occupancy|Grid Size|Block Size|stalled|hmma|dram__bytes|lts__t_sector|inst_executed|cycles_active" |
    sed -E 's/smsp__average_warps_issue_stalled_//; s/_per_issue_active.ratio//' | cut -c1-200 | head -70
  echo "rc=${PIPESTATUS[0]}"
} > "$out" 2>&1
echo "wrote $out"
