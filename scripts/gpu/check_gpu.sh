#!/usr/bin/env bash
# Checkpoint script of the `gpu` helper (issue #6, forward/backward kernels). Run on the GPU machine
# from the repository root after BUILD_DIR was configured (Release, CUDA arch 90) and
# lori_test_gpu_ops + lori_bench_cuda were built:
#   bash scripts/gpu/check_gpu.sh BUILD_DIR OUT_DIR
# Writes OUT_DIR/gpu.txt: the GPU op tests, the forward/backward benchmarks with their baselines (and
# the d2d copy for bandwidth), then compute-sanitizer memcheck/racecheck on the forward/backward tests.
set -uo pipefail
B=${1:?build dir}
OUT=${2:?out dir}
mkdir -p "$OUT"
log="$OUT/gpu.txt"
: > "$log"
t0=$(date +%s)
{
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>&1 | head -2
  echo "== ctest lori_test_gpu_ops"
  timeout 60 ctest --test-dir "$B" -R lori_test_gpu_ops --output-on-failure > "$OUT/gpu_ctest.log" 2>&1
  echo "ctest rc=$?"
  grep -E "tests passed|Failed|ERROR|bad elements|CHECK|test cases|assertions|Passed|\*\*\*" "$OUT/gpu_ctest.log" | head -60
  echo "== lori_bench_cuda (medians of 5; *_decode_loop: time per call); three runs, most important first"
  sb=$(command -v stdbuf >/dev/null && echo "stdbuf -oL" || true)
  bench() {  # label time-limit filter
    timeout "$2" $sb "$B/bench/cuda/lori_bench_cuda" --benchmark_filter="$3" --benchmark_repetitions=5 \
      --benchmark_report_aggregates_only=true > "$OUT/gpu_bench_$1.log" 2>&1
    echo "-- $1: rc=$?"
    grep -E "_median|ERROR|error" "$OUT/gpu_bench_$1.log" | awk '{$1=$1; print}' | cut -c1-220 | head -40
  }
  bench sddmm 26 'BM_gpu_(baseline_d2d_copy/234|grad_b_sddmm/4096/|baseline_gemm_mask/4096|baseline_cusparse_sddmm)'
  bench decode 38 'BM_gpu_(probe_launch|adapter_forward(_two_launch)?/(1|64)/|baseline_lora_two_gemm/(1|64)/|adapter_forward_decode_loop|baseline_lora_two_gemm_decode_loop)'
  bench forward 30 'BM_gpu_(adapter_forward/4096/|baseline_lora_two_gemm/4096/|(adapter_project|adapter_expand)/4096/|layer_forward(_widened)?/4096/4096/(1|4)/|baseline_base_gemm/4096/4096)'
  echo "elapsed before sanitizers: $(( $(date +%s) - t0 )) s"
  exe="$B/tests/gpu/lori_test_gpu_ops"
  cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  # The checkpoint runner allows ~110 s per script: sanitize the SDDMM tests with what is left; the
  # integrator runs the sanitizers on the whole executable.
  for tool in memcheck racecheck; do
    left=$(( 105 - ($(date +%s) - t0) ))
    [ $left -gt 80 ] && left=80
    [ $left -lt 8 ] && { echo "compute-sanitizer $tool: skipped (time)"; continue; }
    timeout $left "$cs" --tool $tool --report-api-errors no --error-exitcode 9 "$exe" \
      --test-case='*grad_b_sddmm*' > "$OUT/gpu_sanitize_$tool.log" 2>&1
    echo "compute-sanitizer $tool (grad_b_sddmm tests, limit $left s): rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|test cases' "$OUT/gpu_sanitize_$tool.log" | tr '\n' ' ')"
    grep -E "Invalid|Race|Error" "$OUT/gpu_sanitize_$tool.log" | head -8
  done
  # Nsight Compute on the decode kernel (n = 1) with whatever time is left.
  left=$(( 106 - ($(date +%s) - t0) ))
  if command -v ncu >/dev/null && [ $left -gt 12 ]; then
    timeout $left ncu --section SpeedOfLight --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis \
      -k regex:decode_kernel -c 1 "$B/bench/cuda/lori_bench_cuda" --benchmark_filter='BM_gpu_adapter_forward/1/' \
      --benchmark_repetitions=1 > "$OUT/gpu_ncu.log" 2>&1
    echo "ncu decode_kernel (limit $left s): rc=$?"
    grep -E "Duration|DRAM Throughput|Memory Throughput|Mem Busy|Max Bandwidth|L2 Hit|Achieved Occupancy|Theoretical Occupancy|Registers Per|Block Limit|Shared Memory Configuration|Waves Per SM|Compute \(SM\)" "$OUT/gpu_ncu.log" | awk '{$1=$1; print}' | head -24
  else
    echo "ncu: skipped (not found or no time: $left s)"
  fi
  echo "total: $(( $(date +%s) - t0 )) s"
} >> "$log" 2>&1
cat "$log"
