#!/usr/bin/env bash
# One bounded call on the GPU machine (device tool, carry .deps made by scripts/gpu/make_deps.sh):
# build the GPU targets, run every GPU test, each area's check script (benchmarks next to their
# baselines + sanitizer subsets), then compute-sanitizer memcheck over the whole GPU test executables.
# Writes to $OUT: summary.txt, random.txt, mask.txt, gpu.txt, merge.txt, decode.txt, layer.txt, cleanflush.txt,
# sanitize.txt (memcheck), racecheck.txt.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/lori-out}"; mkdir -p "$OUT"
export CMAKE_PREFIX_PATH="$PWD/.deps/usr"
B=build-gpu
S="$OUT/summary.txt"
{ date -u; git log --oneline -1 2>/dev/null; nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader; } > "$S"
t0=$(date +%s)
cmake -S . -B $B -G Ninja -DCMAKE_BUILD_TYPE=Release -DLORI_ENABLE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 > /tmp/configure.log 2>&1 || { tail -30 /tmp/configure.log >> "$S"; exit 1; }
targets="lori_test_cuda_core lori_test_random_gpu lori_bench_random lori_test_mask_gpu lori_bench_mask lori_test_gpu_ops lori_bench_cuda"
cmake --build $B -j16 --target $targets -- -k 0 > /tmp/build.log 2>&1
echo "build rc=$? in $(( $(date +%s) - t0 )) s" >> "$S"
grep -E "error|FAILED" /tmp/build.log | head -40 >> "$S"
# PART=1: build, GPU tests, check scripts; PART=2: build (cached), clean-L2 benchmarks, memcheck;
# PART=3: build (cached), racecheck; default all (over 10 minutes on one call since session 3: use
# three calls on the warm machine).
PART="${PART:-all}"
if [ "$PART" = all ] || [ "$PART" = 1 ]; then
echo "== ctest -L gpu" >> "$S"
timeout 120 ctest --test-dir $B -L gpu --output-on-failure > /tmp/ctest_gpu.log 2>&1
grep -E "Test +#|tests passed|tests failed|FAILED|ERROR" /tmp/ctest_gpu.log | head -30 >> "$S"
for name in random mask gpu merge decode layer; do
  mkdir -p /tmp/cp/$name; t1=$(date +%s)
  timeout 85 bash scripts/gpu/check_$name.sh $B /tmp/cp/$name > /tmp/cp/$name.log 2>&1
  rc=$?
  { echo "== check_$name rc=$rc in $(( $(date +%s) - t1 )) s"; cat /tmp/cp/$name/*.txt 2>/dev/null | head -300; echo "-- log tail"; tail -30 /tmp/cp/$name.log; } > "$OUT/$name.txt"
  echo "check_$name rc=$rc $(( $(date +%s) - t1 )) s" >> "$S"
done
fi
if [ "$PART" = all ] || [ "$PART" = 2 ]; then
{
  echo "== lori_bench_cuda with LORI_BENCH_FLUSH=read (L2 flushed by a read: no dirty lines left for the timed kernel)"
  LORI_BENCH_FLUSH=read timeout 60 "$B/bench/cuda/lori_bench_cuda" --benchmark_repetitions=5 --benchmark_report_aggregates_only=true \
    --benchmark_filter='BM_gpu_(baseline_d2d_copy/234|baseline_read/32|grad_b_sddmm/4096/|baseline_gemm_mask/4096|adapter_project/4096/|layer_forward_widened/4096/4096/1/|baseline_base_gemm/4096/4096|merge/4/14336/0/0|baseline_copy_w/14336|adapter_forward/1/)' 2>&1 \
    | grep -E "_median" | awk '{$1=$1; print}' | cut -c1-200
} > "$OUT/cleanflush.txt" 2>&1
{
  for spec in lori_test_cuda_core:40 lori_test_random_gpu:200 lori_test_mask_gpu:80 lori_test_gpu_ops:300; do
    t=${spec%%:*}; lim=${spec##*:}
    exe=$(find $B/tests -type f -name "$t" | head -1)
    timeout $lim compute-sanitizer --tool memcheck --report-api-errors no --error-exitcode 9 "$exe" > /tmp/memcheck_$t.log 2>&1
    echo "memcheck $t rc=$? $(grep -E 'test cases:' /tmp/memcheck_$t.log | tail -1) $(grep -E 'ERROR SUMMARY' /tmp/memcheck_$t.log | tail -1)"
  done
} > "$OUT/sanitize.txt" 2>&1
fi
if [ "$PART" = all ] || [ "$PART" = 3 ]; then
{
  for t in lori_test_gpu_ops; do
    exe=$(find $B/tests -type f -name "$t" | head -1)
    timeout 540 compute-sanitizer --tool racecheck --error-exitcode 9 "$exe" -tce="*n = 16384*" > /tmp/racecheck_$t.log 2>&1
    echo "racecheck $t rc=$? $(grep -E 'test cases:' /tmp/racecheck_$t.log | tail -1) $(grep -E 'RACECHECK SUMMARY' /tmp/racecheck_$t.log | tail -1)"
    grep -E "Race reported" /tmp/racecheck_$t.log | sed 's/^=* *//' | sort | uniq -c | head -20
  done
} > "$OUT/racecheck.txt" 2>&1
fi
echo "total $(( $(date +%s) - t0 )) s" >> "$S"
cat "$S" "$OUT"/sanitize.txt "$OUT"/racecheck.txt 2>/dev/null
