#!/usr/bin/env bash
# GPU checkpoint of the `random` helper (issue #3): tests, GPU benchmarks (with the d2d copy baseline)
# and the torch.randn baseline, in one call. Usage: bash scripts/gpu/check_random.sh BUILD_DIR OUT_DIR
# BUILD_DIR is configured with CUDA and has lori_test_random_gpu and lori_bench_random built.
set -uo pipefail
B="${1:?build dir}"; OUT="${2:?out dir}"
mkdir -p "$OUT"
F="$OUT/random.txt"
{
  echo "== check_random.sh $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null)"
  nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv,noheader 2>&1 | head -2
  # lori_test_random (CPU) is not among the integrator's targets: build it (small).
  timeout 120 cmake --build "$B" -j14 --target lori_test_random lori_test_random_fma > "$OUT/random_build.log" 2>&1 \
    || { echo "build of lori_test_random failed:"; grep -E "error" "$OUT/random_build.log" | head -20; }
  echo "== ctest -R lori_test_random ($(date -u +%T))"
  timeout 120 ctest --test-dir "$B" -R 'lori_test_random' --output-on-failure 2>&1 | grep -vE "^\s*$|Test project|Start " | tail -40
  exe=$(find "$B" -type f -name lori_bench_random -perm -u+x | head -1)
  echo "== lori_bench_random BM_gpu_* (5 repetitions, aggregates) ($(date -u +%T))"
  timeout 120 "$exe" --benchmark_filter='BM_gpu_' --benchmark_repetitions=5 --benchmark_report_aggregates_only=true 2>&1 \
    | grep -E "^BM_|^-|Benchmark|Run on|CPU Caches" | grep -vE "_cv |_stddev " | head -60
  echo "== torch.randn baseline ($(date -u +%T))"
  timeout 120 python3 bench/random/torch_randn.py 2>&1 | tail -3
  if command -v compute-sanitizer > /dev/null; then
    gexe=$(find "$B" -type f -name lori_test_random_gpu -perm -u+x | head -1)
    echo "== compute-sanitizer racecheck (shared-memory queue of the gaussian kernel; single-matrix float cases)"
    timeout 30 compute-sanitizer --tool racecheck --error-exitcode 9 "$gexe" -tc='single matrix: GPU == CPU bit for bit, float' 2>&1 | tail -3
  fi
  echo "== done $(date -u +%FT%TZ)"
} > "$F" 2>&1
tail -5 "$F"
