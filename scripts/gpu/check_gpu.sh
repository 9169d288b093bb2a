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
  timeout 120 ctest --test-dir "$B" -R lori_test_gpu_ops --output-on-failure > "$OUT/gpu_ctest.log" 2>&1
  echo "ctest rc=$?"
  grep -E "tests passed|Failed|ERROR|bad elements|CHECK|test cases|assertions|Passed|\*\*\*" "$OUT/gpu_ctest.log" | head -60
  echo "== lori_bench_cuda (medians of 5; time per call for *_decode_loop)"
  filter='BM_gpu_(baseline_d2d_copy/234|adapter_forward/(1|64|4096)/|baseline_lora_two_gemm/(1|64|4096)/|adapter_forward_decode_loop|baseline_lora_two_gemm_decode_loop|(adapter_project|baseline_project_cublas|adapter_expand|adapter_expand_scalar)/4096/|layer_forward(_widened)?/4096/4096/(1|4)/|baseline_base_gemm/4096/4096|grad_b_sddmm/(64|4096)/|baseline_gemm_mask/4096|baseline_cusparse_sddmm)'
  timeout 90 "$B/bench/cuda/lori_bench_cuda" --benchmark_filter="$filter" --benchmark_repetitions=5 \
    --benchmark_report_aggregates_only=true > "$OUT/gpu_bench.log" 2>&1
  echo "bench rc=$?"
  grep -E "_median|ERROR|error" "$OUT/gpu_bench.log" | awk '{$1=$1; print}' | cut -c1-220 | head -60
  echo "elapsed before sanitizers: $(( $(date +%s) - t0 )) s"
  exe="$B/tests/gpu/lori_test_gpu_ops"
  cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  for tool in memcheck racecheck; do
    timeout 80 "$cs" --tool $tool --report-api-errors no --error-exitcode 9 "$exe" \
      --test-case='*adapter forward*,*grad_b_sddmm*' > "$OUT/gpu_sanitize_$tool.log" 2>&1
    echo "compute-sanitizer $tool (forward + sddmm tests): rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|test cases' "$OUT/gpu_sanitize_$tool.log" | tr '\n' ' ')"
    grep -E "Invalid|Race|Error" "$OUT/gpu_sanitize_$tool.log" | head -8
  done
  echo "total: $(( $(date +%s) - t0 )) s"
} >> "$log" 2>&1
cat "$log"
