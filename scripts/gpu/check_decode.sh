#!/usr/bin/env bash
# Checkpoint script of the `decode` helper (issue #6: the decode kernel, adapter_forward's routes,
# adapter_expand). Run on the GPU machine from the repository root after BUILD_DIR was configured
# (Release, CUDA arch 90) and lori_test_gpu_ops + lori_bench_cuda were built:
#   bash scripts/gpu/check_decode.sh BUILD_DIR OUT_DIR
# Writes OUT_DIR/decode.txt: the decode/forward/expand tests (each test case in its own process, so a
# sticky CUDA error of one kernel cannot mask the others; the cases through adapter_project last), the
# decode benchmarks (single call, loop, loop with programmatic dependent launch, launch probes,
# two-GEMM baselines, launch configurations), adapter_expand and adapter_forward at 64, 4096, 16384
# with baselines (the runs through adapter_project last), and compute-sanitizer memcheck/racecheck
# on the small sanitizer case. Stays under ~80 s.
. "$(dirname "${BASH_SOURCE[0]}")/check_common.sh"  # check_begin, left CAP [BUDGET], elapsed
check_begin decode "$@"
{
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>&1 | head -2
  exe="$B/tests/gpu/lori_test_gpu_ops"
  echo "== tests (one process per test case)"
  n=0
  for tc in '*decode and expand kernels: small*' '*adapter_forward_decode: n = 1..64*' '*back-to-back*' \
            '*adapter_expand: odd shapes*' '*adapter_forward routes*' '*adapter forward (decode*'; do
    n=$((n + 1))
    l=$(left 8 24)
    [ $l -lt 2 ] && { echo "test $tc: skipped (time)"; continue; }
    timeout $l "$exe" --test-case="$tc" > "$OUT/decode_test_$n.log" 2>&1
    echo "test $tc: rc=$? $(grep -E 'test cases' "$OUT/decode_test_$n.log" | tr -s ' ')"
    grep -E "ERROR|bad elements|exception|  [a-z_]+ := |LORI_TEST_SEED" "$OUT/decode_test_$n.log" | head -12
  done
  echo "== lori_bench_cuda (medians of 5; *_decode_loop*: time per call); most important first"
  bench() {  # label time-limit filter [budget: total seconds it may end by, default 66]
    local l; l=$(left "$2" "${4:-66}")
    [ $l -lt 4 ] && { echo "-- $1: skipped (time)"; return; }
    timeout $l $sb "$B/bench/cuda/lori_bench_cuda" --benchmark_filter="$3" --benchmark_repetitions=5 \
      --benchmark_report_aggregates_only=true > "$OUT/decode_bench_$1.log" 2>&1
    echo "-- $1: rc=$? (limit $l s)"
    grep -E "_median|ERROR|error|terminate" "$OUT/decode_bench_$1.log" | awk '{$1=$1; print}' | cut -c1-200 | head -40
  }
  bench single 13 'BM_gpu_(probe_launch/(0|2)/|adapter_forward/1/|baseline_lora_two_gemm/1/)'
  bench loop1 9 'BM_gpu_(adapter_forward_decode_loop(_overlap)?/1/|baseline_lora_two_gemm_decode_loop/1/)'
  bench config 10 'BM_gpu_(decode_config|adapter_forward/(16|32)/|baseline_lora_two_gemm/(16|32)/)'
  bench expand 6 'BM_gpu_(baseline_d2d_copy/64|adapter_expand/4096/)'
  bench routes 12 'BM_gpu_(adapter_forward/(64|4096|16384)/|baseline_lora_two_gemm/(64|4096|16384)/|adapter_forward_two_launch/64/|candidate_dense_route)' 70
  bench loop64 8 'BM_gpu_(adapter_forward_decode_loop(_overlap)?/64/|baseline_lora_two_gemm_decode_loop/64/)' 74
  echo "elapsed: $(elapsed) s"
  sanitize() {  # tool limit filter
    local l; l=$(left "$2" 79)
    [ $l -lt 3 ] && { echo "compute-sanitizer $1: skipped (time)"; return; }
    timeout $l "$cs" --tool $1 --report-api-errors no --error-exitcode 9 "$exe" --test-case="$3" > "$OUT/decode_sanitize_$1.log" 2>&1
    echo "compute-sanitizer $1 ($3, limit $l s): rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|test cases' "$OUT/decode_sanitize_$1.log" | tr '\n' ' ')"
    grep -E "ERROR|Invalid|Race|Error|Hazard|bad elements|exception" "$OUT/decode_sanitize_$1.log" | head -8
  }
  sanitize memcheck 6 '*decode and expand kernels: small*'
  sanitize racecheck 8 '*decode and expand kernels: small*'
  echo "total: $(elapsed) s"
} >> "$log" 2>&1
cat "$log"
