#!/usr/bin/env bash
# Checkpoint script of the `gpu` helper (issue #6: the skinny tensor-core SDDMM kernels behind
# grad_b_sddmm; the whole-layer forward against the base GEMM). Run on the GPU machine from the
# repository root after BUILD_DIR was configured (Release, CUDA arch 90) and lori_test_gpu_ops +
# lori_bench_cuda were built:
#   bash scripts/gpu/check_gpu.sh BUILD_DIR OUT_DIR
# Writes OUT_DIR/gpu.txt: the forward / SDDMM / skinny-kernel tests, the benchmarks with their
# baselines (d2d copy, base GEMM, cuBLAS routes, gemm_mask, cuSPARSE SDDMM) as medians of 5, Nsight
# Compute on both kernels, compute-sanitizer memcheck + racecheck on the skinny tests. Under 80 s.
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
{
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>&1 | head -2
  echo "== tests (skinny SDDMM kernels, grad_b_sddmm, adapter forward incl. layer_forward(_widened))"
  timeout "$(left 18)" "$exe" --test-case='*skinny*,*grad_b_sddmm*,adapter forward (decode*' --test-case-exclude='*TMA*' \
    > "$OUT/gpu_tests.log" 2>&1
  echo "tests rc=$?"
  grep -E "ERROR|bad elements|FAILED|failed|CHECK|REQUIRE|test cases:|assertions:|Timeout|timeout|LORI_TEST_SEED|with expansion" \
    "$OUT/gpu_tests.log" | head -40
  echo "== SDDMM TMA tests (own process)"
  timeout "$(left 10)" "$exe" --test-case='*TMA*' > "$OUT/gpu_tests_tma.log" 2>&1
  echo "TMA tests rc=$?"
  grep -E "ERROR|bad elements|FAILED|failed|CHECK|REQUIRE|test cases:|assertions:|with expansion|values:" \
    "$OUT/gpu_tests_tma.log" | cut -c1-200 | head -16
  echo "== lori_bench_cuda (medians of 5, µs)"
  sb=$(command -v stdbuf >/dev/null && echo "stdbuf -oL" || true)
  bench() {  # label time-limit filter
    timeout "$(left "$2")" $sb "$bexe" --benchmark_filter="$3" --benchmark_repetitions=5 \
      --benchmark_report_aggregates_only=true > "$OUT/gpu_bench_$1.log" 2>&1
    echo "-- $1: rc=$?"
    grep -E "_median|ERROR|error" "$OUT/gpu_bench_$1.log" | awk '{$1=$1; print}' | cut -c1-230 | head -40
  }
  bench forward 14 'BM_gpu_(baseline_d2d_copy/234|baseline_read/|adapter_project/4096/|layer_forward_widened/4096/4096/1/|baseline_base_gemm/4096/4096/)'
  bench sddmm 14 'BM_gpu_(baseline_d2d_copy/234|baseline_read/|skinny_sddmm(_tma)?/4096/|baseline_sddmm_cublas_route/4096/|grad_b_sddmm/4096/|baseline_gemm_mask/4096/)'
  echo "elapsed before ncu: $(( $(date +%s) - t0 )) s"
  if command -v ncu >/dev/null; then
    for k in sddmm_tma_kernel sddmm_kernel; do
      filt='BM_gpu_skinny_sddmm_tma/4096/8/'
      [ $k = sddmm_kernel ] && filt='BM_gpu_skinny_sddmm/4096/8/'
      l=$(left 7)
      [ "$l" -lt 4 ] && { echo "ncu $k: skipped (time)"; continue; }
      timeout "$l" ncu --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
        --section WarpStateStats -k regex:$k -c 1 "$bexe" --benchmark_filter="$filt" --benchmark_repetitions=1 \
        --benchmark_min_time=0.01 > "$OUT/gpu_ncu_$k.log" 2>&1
      echo "ncu $k (limit $l s): rc=$?"
      grep -E "Duration|DRAM Throughput|Memory Throughput|L2 Hit|Mem Busy|Max Bandwidth|Achieved Occupancy|Registers Per|Block Limit Shared|Cluster Size|Max Active Clusters|Warp Cycles Per Issued|No Eligible|Active Warps Per|==ERROR|==PROF" \
        "$OUT/gpu_ncu_$k.log" | awk '{$1=$1; print}' | cut -c1-160 | head -16
    done
  else
    echo "ncu: not found"
  fi
  cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  for tool in memcheck racecheck; do
    l=$(left 14)
    [ "$l" -lt 4 ] && { echo "compute-sanitizer $tool: skipped (time)"; continue; }
    timeout "$l" "$cs" --tool $tool --report-api-errors no --error-exitcode 9 "$exe" \
      --test-case='skinny kernels: small shapes*' > "$OUT/gpu_sanitize_$tool.log" 2>&1
    echo "compute-sanitizer $tool (skinny small-shape test, limit $l s): rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|test cases:' "$OUT/gpu_sanitize_$tool.log" | tr '\n' ' ')"
    grep -E "Invalid|Race|Hazard|hazard|ERROR:|CHECK|REQUIRE|bad elements|with expansion|values:" "$OUT/gpu_sanitize_$tool.log" | cut -c1-200 | head -12
  done
  # The larger shapes, if time is left.
  [ "$(left 20)" -ge 10 ] && bench large 12 'BM_gpu_(skinny_sddmm/16384/|skinny_sddmm_tma/16384/|baseline_sddmm_cublas_route/16384/|grad_b_sddmm/16384/|baseline_gemm_mask/16384/)'
  echo "total: $(( $(date +%s) - t0 )) s"
} >> "$log" 2>&1
cat "$log"
