#!/usr/bin/env bash
# Checkpoint script of the `gpu` helper (issue #6: the streaming tensor-core SDDMM kernel behind
# grad_b_sddmm, against the previous warp-specialised cluster kernel). Run on the GPU machine from the
# repository root after BUILD_DIR was configured (Release, CUDA arch 90) and lori_test_gpu_ops +
# lori_bench_cuda were built:
#   bash scripts/gpu/check_gpu.sh BUILD_DIR OUT_DIR
# Writes OUT_DIR/gpu.txt: the streaming-SDDMM and grad_b_sddmm tests, the SDDMM benchmarks with their
# baselines (d2d copy, copy of a 14336 x 4096 W, one streaming read of 32 MiB, cuBLAS gemm_mask, the
# warp-specialised kernel) as medians of 5, in the default (memset) and the clean-L2
# (LORI_BENCH_FLUSH=read) flush modes, Nsight Compute (duration, DRAM throughput and bytes, occupancy,
# stalls) on the streaming kernel and its memory pipeline alone, compute-sanitizer memcheck +
# racecheck on its small-shape tests. Under 80 s.
set -uo pipefail
B=${1:?build dir}
OUT=${2:?out dir}
mkdir -p "$OUT"
log="$OUT/gpu.txt"
: > "$log"
t0=$(date +%s)
left() {  # seconds left of a 78 s budget, capped at $1
  local l=$(( 78 - ($(date +%s) - t0) ))
  [ "$l" -gt "$1" ] && l=$1
  echo "$l"
}
exe="$B/tests/gpu/lori_test_gpu_ops"
bexe="$B/bench/cuda/lori_bench_cuda"
tests() {  # label time-limit doctest-args...
  local label=$1 lim=$2; shift 2
  local t1=$(date +%s)
  timeout "$(left "$lim")" "$exe" "$@" > "$OUT/gpu_tests_$label.log" 2>&1
  echo "-- tests $label: rc=$? in $(( $(date +%s) - t1 )) s"
  grep -E "ERROR|bad elements|FAILED|failed|CHECK|REQUIRE|test cases:|assertions:|Timeout|timeout|with expansion|values:|LORI_TEST_SEED" \
    "$OUT/gpu_tests_$label.log" | cut -c1-200 | head -24
}
{
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>&1 | head -2
  echo "== tests"
  # (doctest splits filters at commas: the patterns below avoid the commas of the test names)
  tests stream 16 --test-case='*streaming: shapes*'
  tests public 10 --test-case='grad_b_sddmm*'
  tests stream16384 8 --test-case='*streaming: n = 16384*'
  echo "== lori_bench_cuda (medians of 5, µs)"
  sb=$(command -v stdbuf >/dev/null && echo "stdbuf -oL" || true)
  bench() {  # label time-limit filter [env]
    timeout "$(left "$2")" env ${4:-LORI_BENCH_FLUSH=memset} $sb "$bexe" --benchmark_filter="$3" --benchmark_repetitions=5 \
      --benchmark_report_aggregates_only=true > "$OUT/gpu_bench_$1.log" 2>&1
    echo "-- $1: rc=$?"
    grep -E "_median|ERROR|error" "$OUT/gpu_bench_$1.log" | awk '{$1=$1; print}' | sed -E 's/^([^ ]+ [0-9.]+ us) [0-9.]+ us [0-9]+ /\1 /' | cut -c1-260 | head -24
  }
  bench sddmm 16 'BM_gpu_(baseline_d2d_copy/234|baseline_copy_w/14336|baseline_read/32|skinny_sddmm_ws/4096/8/1|skinny_sddmm_stream/4096/|grad_b_sddmm/4096|baseline_gemm_mask/4096|probe_stream_pattern/4096)'
  bench sddmm_clean 14 'BM_gpu_(baseline_read/32|skinny_sddmm_ws/4096/8/1|skinny_sddmm_stream/4096/64/[0-3]|grad_b_sddmm/4096|baseline_gemm_mask/4096|probe_smem_launch|probe_stream_pattern/4096)' LORI_BENCH_FLUSH=read
  echo "elapsed before ncu: $(( $(date +%s) - t0 )) s"
  stalls=$(for r in long_scoreboard barrier short_scoreboard mio_throttle lg_throttle wait math_pipe_throttle not_selected no_instruction branch_resolving; do
    printf 'smsp__average_warps_issue_stalled_%s_per_issue_active.ratio,' $r; done | sed 's/,$//')
  ncu_one() {  # variant of BM_gpu_skinny_sddmm_stream/4096/64/v (0: the kernel, 2: its memory pipeline alone)
    local k=sddmm_stream_kernel filt="BM_gpu_skinny_sddmm_stream/4096/64/$1" l
    command -v ncu >/dev/null || { echo "ncu: not found"; return; }
    l=$(left 8)
    [ "$l" -lt 4 ] && { echo "ncu $k: skipped (time)"; return; }
    timeout "$l" ncu --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
      --section WarpStateStats --metrics dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sectors_srcunit_tex_op_read.sum \
      -k regex:$k -c 1 "$bexe" --benchmark_filter="$filt" --benchmark_repetitions=1 \
      --benchmark_min_time=0.01 > "$OUT/gpu_ncu_$1.log" 2>&1
    echo "ncu $k ($filt, limit $l s): rc=$?"
    grep -E "Duration|DRAM Throughput|Memory Throughput|L2 Hit|Mem Busy|Max Bandwidth|Achieved Occupancy|Registers Per|Block Limit|Grid Size|Waves Per SM|Warp Cycles Per Issued|No Eligible|Active Warps Per|Stall|dram__bytes|lts__t_sectors|inst_executed|issue_stalled|==ERROR" \
      "$OUT/gpu_ncu_$1.log" | awk '{$1=$1; print}' | sed 's/smsp__average_warps_issue_stalled_//' | cut -c1-160 | head -34
  }
  sanitize() {  # tool
    local l cs
    cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
    l=$(left 10)
    [ "$l" -lt 4 ] && { echo "compute-sanitizer $1: skipped (time)"; return; }
    timeout "$l" "$cs" --tool $1 --report-api-errors no --error-exitcode 9 "$exe" \
      --test-case='skinny kernels: streaming*' > "$OUT/gpu_sanitize_$1.log" 2>&1
    echo "compute-sanitizer $1 (streaming small-shape tests, limit $l s): rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|test cases:' "$OUT/gpu_sanitize_$1.log" | tr '\n' ' ')"
    grep -E "Invalid|Race|Hazard|hazard|ERROR:|CHECK|REQUIRE|bad elements|with expansion|values:" "$OUT/gpu_sanitize_$1.log" | cut -c1-200 | head -12
  }
  ncu_one 0
  # The warp stall reasons of the kernel (metrics only; a separate run so that a metric this ncu lacks
  # cannot cost the sections above).
  l=$(left 8)
  if command -v ncu >/dev/null && [ "$l" -ge 4 ]; then
    timeout "$l" ncu --metrics "smsp__inst_executed.sum,$stalls" -k regex:sddmm_stream_kernel -c 1 "$bexe" \
      --benchmark_filter="BM_gpu_skinny_sddmm_stream/4096/64/0" --benchmark_repetitions=1 --benchmark_min_time=0.01 \
      > "$OUT/gpu_ncu_stalls.log" 2>&1
    echo "ncu stall reasons (limit $l s): rc=$?"
    grep -E "inst_executed|issue_stalled|==ERROR" "$OUT/gpu_ncu_stalls.log" | awk '{$1=$1; print}' | sed 's/smsp__average_warps_issue_stalled_//' | cut -c1-120 | head -14
  fi
  sanitize memcheck
  sanitize racecheck
  ncu_one 2
  # The larger shapes, if time is left.
  [ "$(left 20)" -ge 6 ] && bench large 12 'BM_gpu_(skinny_sddmm_ws/16384/8/1|skinny_sddmm_stream/16384/|grad_b_sddmm/16384|baseline_gemm_mask/16384)'
  echo "total: $(( $(date +%s) - t0 )) s"
} >> "$log" 2>&1
cat "$log"
