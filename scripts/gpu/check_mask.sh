#!/usr/bin/env bash
# GPU checks of the mask area (issue #4): tests, GPU benchmarks, compute-sanitizer (quick subset),
# then (if nsys is there) a kernel-time breakdown. Most important first: each step appends to mask.txt.
# Usage (repository root, GPU machine, BUILD configured and lori_test_mask_gpu / lori_bench_mask built):
#   bash scripts/gpu/check_mask.sh BUILD OUT_DIR      -> OUT_DIR/mask.txt
set -uo pipefail
B="${1:?build dir}"; OUT="${2:?out dir}"; mkdir -p "$OUT"; F="$OUT/mask.txt"; : > "$F"
log() { echo "$@" | tee -a "$F"; }
t0=$(date +%s)
log "== mask check $(git rev-parse --short HEAD 2>/dev/null) $(date -u +%H:%M:%S)"
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader 2>&1 | head -1 | tee -a "$F"
cmake --build "$B" -j14 --target lori_test_mask_gpu lori_bench_mask > "$OUT/mask_build.log" 2>&1 \
  || { log "build FAILED"; grep -E "error" "$OUT/mask_build.log" | head -20 | tee -a "$F"; }
log "== ctest lori_test_mask_gpu"
timeout 60 ctest --test-dir "$B" -R lori_test_mask_gpu --output-on-failure > "$OUT/mask_ctest.log" 2>&1
log "ctest rc=$?"; grep -E "tests passed|Passed|Failed|ERROR|CHECK|differs|test cases|assertions" "$OUT/mask_ctest.log" | head -40 | tee -a "$F"
bench=$(find "$B" -type f -name lori_bench_mask -perm -u+x | head -1)
log "== lori_bench_mask BM_gpu (5 repetitions: mean and median; real_time = CUDA-event time)"
timeout 45 "$bench" --benchmark_filter='BM_gpu' --benchmark_repetitions=5 --benchmark_report_aggregates_only=true \
  --benchmark_min_time=0.1 > "$OUT/mask_bench.log" 2>&1
log "bench rc=$?"
grep -E "^BM_|^Run|^-|Benchmark" "$OUT/mask_bench.log" | grep -v -E "_stddev|_cv" | head -60 | tee -a "$F"
if command -v ncu > /dev/null; then
  log "== ncu: the 8 kernels of one BM_gpu_calibrate_llama3_8b/0/0 run (serialised, caches flushed)"
  timeout 40 ncu --section SpeedOfLight --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis \
    -k regex:calib_ -c 8 "$bench" --benchmark_filter='BM_gpu_calibrate_llama3_8b/0/0/' --benchmark_min_time=0.01 \
    > "$OUT/mask_ncu.log" 2>&1
  log "ncu rc=$?"
  grep -E "calib_[a-z0-9]+<|^ +Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Registers Per Thread|Grid Size|Block Size" \
    "$OUT/mask_ncu.log" | sed -E 's/\(lori::cuda::detail::calib_params.*//; s/ +/ /g' | head -70 | tee -a "$F"
fi
exe=$(find "$B" -type f -name lori_test_mask_gpu -perm -u+x | head -1)
for tool in memcheck racecheck; do
  s=$(date +%s)
  LORI_MASK_GPU_QUICK=1 timeout $([ $tool = racecheck ] && echo 60 || echo 30) compute-sanitizer --tool $tool --report-api-errors no --error-exitcode 9 "$exe" > "$OUT/mask_sanitize_$tool.log" 2>&1
  rc=$?
  log "compute-sanitizer $tool (LORI_MASK_GPU_QUICK=1): rc=$rc $(( $(date +%s) - s )) s; $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|test cases' "$OUT/mask_sanitize_$tool.log" | tr '\n' ' ')"
  [ $rc -eq 0 ] || grep -E "Error|Race|Invalid|at 0x|by thread" "$OUT/mask_sanitize_$tool.log" | head -15 | tee -a "$F"
done
log "== done in $(( $(date +%s) - t0 )) s"
