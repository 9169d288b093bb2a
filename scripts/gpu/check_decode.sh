#!/usr/bin/env bash
# Checkpoint script of the `decode` helper (issue #6: the decode kernel, adapter_forward's routes,
# adapter_expand). Run on the GPU machine from the repository root after BUILD_DIR was configured
# (Release, CUDA arch 90) and lori_test_gpu_ops + lori_bench_cuda were built:
#   bash scripts/gpu/check_decode.sh BUILD_DIR OUT_DIR
# Writes OUT_DIR/decode.txt: the decode/forward/expand tests, the decode benchmarks (single call, loop,
# loop with programmatic dependent launch, launch probes, two-GEMM baselines), adapter_forward at 64 and
# 4096 with baselines, Nsight Compute on decode_kernel and expand_kernel, and compute-sanitizer
# memcheck/racecheck on the decode/expand tests. Stays under ~80 s.
set -uo pipefail
B=${1:?build dir}
OUT=${2:?out dir}
mkdir -p "$OUT"
log="$OUT/decode.txt"
: > "$log"
t0=$(date +%s)
left() { echo $(( $1 - ($(date +%s) - t0) )); }
{
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>&1 | head -2
  exe="$B/tests/gpu/lori_test_gpu_ops"
  tcs='*adapter_forward_decode*,*adapter_forward routes*,*adapter_expand*,*adapter forward*'
  echo "== tests: $tcs"
  timeout 20 "$exe" --test-case="$tcs" > "$OUT/decode_tests.log" 2>&1
  echo "tests rc=$? ($(( $(date +%s) - t0 )) s)"
  grep -E "test cases|assertions|ERROR|FAILED|bad elements|CHECK|LORI_TEST_SEED|TEST CASE|with expansion|exception|  [a-z_]+ := " "$OUT/decode_tests.log" | head -50
  echo "== lori_bench_cuda (medians of 5; *_decode_loop*: time per call); most important first"
  sb=$(command -v stdbuf >/dev/null && echo "stdbuf -oL" || true)
  bench() {  # label time-limit filter [budget: total seconds it may end by, default 62]
    local l; l=$(left "${4:-62}"); [ $l -gt $2 ] && l=$2
    [ $l -lt 4 ] && { echo "-- $1: skipped (time)"; return; }
    timeout $l $sb "$B/bench/cuda/lori_bench_cuda" --benchmark_filter="$3" --benchmark_repetitions=5 \
      --benchmark_report_aggregates_only=true > "$OUT/decode_bench_$1.log" 2>&1
    echo "-- $1: rc=$? (limit $l s)"
    grep -E "_median|ERROR|error" "$OUT/decode_bench_$1.log" | awk '{$1=$1; print}' | cut -c1-200 | head -40
  }
  bench single 14 'BM_gpu_(probe_launch/(0|2)/|adapter_forward/1/|baseline_lora_two_gemm/1/)'
  bench loop1 10 'BM_gpu_(adapter_forward_decode_loop(_overlap)?/1/|baseline_lora_two_gemm_decode_loop/1/)'
  bench forward 15 'BM_gpu_(baseline_d2d_copy/234|adapter_forward/(64|4096|16384)/|baseline_lora_two_gemm/(64|4096|16384)/|adapter_expand/4096/|expand_config)'
  bench config 11 'BM_gpu_(decode_config|adapter_forward_two_launch/64/|candidate_dense_route)' 68
  echo "elapsed: $(( $(date +%s) - t0 )) s"
  cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  sanitize() {  # tool limit filter
    local l; l=$(left 79); [ $l -gt $2 ] && l=$2
    [ $l -lt 6 ] && { echo "compute-sanitizer $1: skipped (time)"; return; }
    timeout $l "$cs" --tool $1 --report-api-errors no --error-exitcode 9 "$exe" --test-case="$3" > "$OUT/decode_sanitize_$1.log" 2>&1
    echo "compute-sanitizer $1 ($3, limit $l s): rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|test cases' "$OUT/decode_sanitize_$1.log" | tr '\n' ' ')"
    grep -E "ERROR|Invalid|Race|Error|Hazard|bad elements|exception" "$OUT/decode_sanitize_$1.log" | head -8
  }
  ncu_run() {  # label limit kernel-regex bench-filter grep
    local l; l=$(left 79); [ $l -gt $2 ] && l=$2
    if ! command -v ncu >/dev/null || [ $l -lt 6 ]; then echo "ncu $1: skipped"; return; fi
    timeout $l ncu --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
      --section MemoryWorkloadAnalysis -k regex:$3 -c 1 "$B/bench/cuda/lori_bench_cuda" --benchmark_filter="$4" \
      --benchmark_repetitions=1 > "$OUT/decode_ncu_$1.log" 2>&1
    echo "ncu $1 (limit $l s): rc=$?"
    grep -iE "$5" "$OUT/decode_ncu_$1.log" | awk '{$1=$1; print}' | cut -c1-240 | head -30
  }
  sanitize memcheck 10 '*adapter_forward_decode: n = 1..64*,*adapter_expand*'
  ncu_run decode 9 decode_kernel 'BM_gpu_adapter_forward/1/' \
    "Duration|DRAM Throughput|Memory Throughput|L2 Hit|Achieved Occupancy|Theoretical Occupancy|Registers Per|Block Limit Reg|Cluster Size|Grid Size|stall|spends|Warp Cycles Per Issued|One or More"
  bench loop64 8 'BM_gpu_(adapter_forward_decode_loop(_overlap)?/64/|baseline_lora_two_gemm_decode_loop/64/)' 79
  sanitize racecheck 12 '*back-to-back*float*,*adapter_expand*float*'
  ncu_run expand 8 expand_kernel 'BM_gpu_adapter_expand/4096' \
    "Duration|DRAM Throughput|Memory Throughput|L2 Hit|Achieved Occupancy|Registers Per|stall|spends|Warp Cycles Per Issued"
  echo "total: $(( $(date +%s) - t0 )) s"
} >> "$log" 2>&1
cat "$log"
