#!/usr/bin/env bash
# Checkpoint script of the `gpu` helper (issue #6: the skinny tensor-core SDDMM kernels behind
# grad_b_sddmm: the warp-specialised kernel it runs and the cp.async kernel; the decode kernel's cluster
# occupancy query; session 5's streaming kernel was measured and dropped, docs/cuda.md). Run on the GPU machine from the
# repository root after BUILD_DIR was configured (Release, CUDA arch 90) and lori_test_gpu_ops +
# lori_bench_cuda were built:
#   bash scripts/gpu/check_gpu.sh BUILD_DIR OUT_DIR
# Writes OUT_DIR/gpu.txt: the SDDMM / skinny-kernel / decode tests, the SDDMM benchmarks with their
# baselines (d2d copy, copy of a 14336 x 4096 W, one streaming read of 32 MiB, cuBLAS gemm_mask) as
# medians of 5, in the default (memset) and the clean-L2 (LORI_BENCH_FLUSH=read) flush modes,
# Nsight Compute (duration, DRAM throughput, occupancy, stalls) on the SDDMM kernels,
# compute-sanitizer memcheck + racecheck on the small-shape SDDMM tests. Under 80 s.
. "$(dirname "${BASH_SOURCE[0]}")/check_common.sh"  # check_begin, left CAP (of a 78 s budget), elapsed
check_begin gpu "$@"
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
  tests sddmm 12 --test-case='*skinny*,*grad_b_sddmm*' --test-case-exclude='*warp-specialised*'
  tests ws 12 --test-case='*warp-specialised: shapes*,skinny kernels: warp-specialised*'
  tests decode 8 --test-case='*decode*'
  tests ws16384 8 --test-case='*warp-specialised: n = 16384*'
  echo "== lori_bench_cuda (medians of 5, µs)"
  bench() {  # label time-limit filter [env]
    timeout "$(left "$2")" env ${4:-LORI_BENCH_FLUSH=memset} $sb "$bexe" --benchmark_filter="$3" --benchmark_repetitions=5 \
      --benchmark_report_aggregates_only=true > "$OUT/gpu_bench_$1.log" 2>&1
    echo "-- $1: rc=$?"
    grep -E "_median|ERROR|error" "$OUT/gpu_bench_$1.log" | awk '{$1=$1; print}' | sed -E 's/^([^ ]+ [0-9.]+ us) [0-9.]+ us [0-9]+ /\1 /' | cut -c1-330 | head -24
  }
  bench sddmm 14 'BM_gpu_(baseline_d2d_copy/234|baseline_copy_w/14336|baseline_read/32|skinny_sddmm_ws/4096/8/(0|1|3|11)|grad_b_sddmm/4096|baseline_gemm_mask/4096)'
  bench sddmm_clean 12 'BM_gpu_(baseline_read/32|skinny_sddmm_ws/4096/8/(0|1|3)|grad_b_sddmm/4096|baseline_gemm_mask/4096)' LORI_BENCH_FLUSH=read
  bench launch_probes 6 'BM_gpu_(probe_smem_launch|probe_launch/)' LORI_BENCH_FLUSH=read
  echo "elapsed before ncu: $(elapsed) s"
  if command -v ncu >/dev/null; then
    for k in sddmm_ws_kernel; do
      filt="BM_gpu_skinny_sddmm_ws/4096/8/1"
      l=$(left 8)
      [ "$l" -lt 4 ] && { echo "ncu $k: skipped (time)"; continue; }
      timeout "$l" ncu --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
        --section WarpStateStats -k regex:$k -c 1 "$bexe" --benchmark_filter="$filt" --benchmark_repetitions=1 \
        --benchmark_min_time=0.01 > "$OUT/gpu_ncu_$k.log" 2>&1
      echo "ncu $k ($filt, limit $l s): rc=$?"
      grep -E "Duration|DRAM Throughput|Memory Throughput|L2 Hit|Mem Busy|Max Bandwidth|Achieved Occupancy|Registers Per|Block Limit Shared|Cluster Size|Max Active Clusters|Grid Size|Warp Cycles Per Issued|No Eligible|Active Warps Per|==ERROR|==PROF" \
        "$OUT/gpu_ncu_$k.log" | awk '{$1=$1; print}' | cut -c1-160 | head -18
    done
  else
    echo "ncu: not found"
  fi
  for tool in memcheck racecheck; do
    l=$(left 10)
    [ "$l" -lt 4 ] && { echo "compute-sanitizer $tool: skipped (time)"; continue; }
    timeout "$l" "$cs" --tool $tool --report-api-errors no --error-exitcode 9 "$exe" \
      --test-case='skinny kernels: *small shapes*' > "$OUT/gpu_sanitize_$tool.log" 2>&1
    echo "compute-sanitizer $tool (skinny small-shape tests, limit $l s): rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|test cases:' "$OUT/gpu_sanitize_$tool.log" | tr '\n' ' ')"
    grep -E "Invalid|Race|Hazard|hazard|ERROR:|CHECK|REQUIRE|bad elements|with expansion|values:" "$OUT/gpu_sanitize_$tool.log" | cut -c1-200 | head -12
  done
  # The larger shapes, if time is left.
  [ "$(left 20)" -ge 6 ] && bench large 12 'BM_gpu_(skinny_sddmm_ws/16384/8/[013]|grad_b_sddmm/16384|baseline_gemm_mask/16384)'
  echo "total: $(elapsed) s"
} >> "$log" 2>&1
cat "$log"
