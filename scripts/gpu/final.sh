#!/usr/bin/env bash
# One bounded call on the GPU machine: build the GPU targets, run the GPU tests, the PEFT round trip,
# the GPU benchmarks (filtered to the issue targets), the torch baselines, and compute-sanitizer last.
# Every step has its own time limit so the whole call ends inside the device tool's limit.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/lori-out}"; mkdir -p "$OUT"
export CMAKE_PREFIX_PATH="$PWD/.deps/usr"
B=build-gpu
gpu_targets="lori_test_cuda_core lori_test_mask_gpu lori_test_gpu_ops lori_test_random_gpu lori_bench_random lori_bench_mask lori_bench_cuda"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
t0=$(date +%s)
cmake -S . -B $B -G Ninja -DCMAKE_BUILD_TYPE=Release -DLORI_ENABLE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 > "$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
(LORI_BUILD_DIR=build-peft timeout 400 bash scripts/gpu/peft_roundtrip.sh > "$OUT/peft.log" 2>&1; echo "peft rc=$?" >> "$OUT/peft.log") &
peft_pid=$!
cmake --build $B -j12 --target $gpu_targets > "$OUT/build.log" 2>&1 || { grep -E "error" "$OUT/build.log" | head -40; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
ctest --test-dir $B -L gpu --output-on-failure -j2 > "$OUT/ctest_gpu.log" 2>&1
grep -E "Test +#|tests passed|ERROR|values:|logged|bad elements" "$OUT/ctest_gpu.log" | head -30
wait $peft_pid; echo "== peft round trip"; tail -25 "$OUT/peft.log"
bench() {  # exe filter label
  timeout "$4" "$1" --benchmark_filter="$2" --benchmark_repetitions=3 --benchmark_report_aggregates_only=true \
    --benchmark_out="$OUT/$3.json" --benchmark_out_format=json > "$OUT/$3.txt" 2>&1
  echo "== $3 (rc=$?)"; grep -E "_median" "$OUT/$3.txt" | awk '{$1=$1; print}' | cut -c1-150
}
bench $B/bench/random/lori_bench_random BM_gpu random 90
bench $B/bench/mask/lori_bench_mask 'BM_gpu_(calibrate_llama3_8b/.*(model|matrix)|calibrate_baseline|baseline)' mask 120
bench $B/bench/cuda/lori_bench_cuda 'BM_gpu_(baseline_d2d_copy/234|adapter_forward/(1|64|4096)/|baseline_lora_two_gemm/(1|64|4096)/|layer_forward(_widened)?/4096/4096/|baseline_base_gemm/4096/4096|baseline_lora_layer/4096/4096|grad_b_sddmm/4096|baseline_gemm_mask/4096|baseline_cusparse_sddmm|adamw_fused|baseline_adamw|merge/4/14336|baseline_addmm_per_adapter/4/14336)' cuda 200
for py in $(find bench -name '*.py' | sort); do echo "== $py"; PYTHONUNBUFFERED=1 timeout 60 python3 "$py" 2>&1 | tail -8; done
echo "elapsed before sanitizers: $(( $(date +%s) - t0 )) s"
for t in lori_test_cuda_core lori_test_mask_gpu lori_test_random_gpu lori_test_gpu_ops; do
  exe=$(find $B/tests -type f -name "$t" | head -1)
  timeout 70 compute-sanitizer --tool memcheck --report-api-errors no --error-exitcode 9 "$exe" > "$OUT/memcheck_$t.log" 2>&1
  echo "memcheck $t rc=$? $(grep -E 'ERROR SUMMARY' "$OUT/memcheck_$t.log" | tail -1)"
done
for t in lori_test_mask_gpu lori_test_gpu_ops; do
  exe=$(find $B/tests -type f -name "$t" | head -1)
  timeout 70 compute-sanitizer --tool racecheck --error-exitcode 9 "$exe" > "$OUT/racecheck_$t.log" 2>&1
  echo "racecheck $t rc=$? $(grep -E 'RACECHECK SUMMARY' "$OUT/racecheck_$t.log" | tail -1)"
done
echo "total: $(( $(date +%s) - t0 )) s"
