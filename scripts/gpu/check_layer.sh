#!/usr/bin/env bash
# Checkpoint script of the integrator (issue #6, whole-layer forward): the widened layer and its GEMM by
# row stride / K (BM_gpu_widened_layout) next to the base GEMM, twice in alternating order (the GEMMs
# are power-limited, so a figure depends on what ran before it). Also the adapter-forward test cases. Under 80 s.
#   bash scripts/gpu/check_layer.sh BUILD_DIR OUT_DIR
set -uo pipefail
B=${1:?build dir}
O=${2:?out dir}
mkdir -p "$O"
b="$B/bench/cuda/lori_bench_cuda"
{
  nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader 2>/dev/null | head -1
  echo "== tests: adapter forward incl. layer_forward_widened with a padded row stride"
  timeout 25 "$B/tests/gpu/lori_test_gpu_ops" -tc='adapter forward*' 2>&1 | grep -E "test cases|assertions|ERROR|FAIL" | head -20
  for pass in 1 2; do
    echo "== pass $pass"
    timeout 35 "$b" --benchmark_filter='BM_gpu_(baseline_base_gemm/4096/4096|widened_layout|layer_forward_widened/4096/4096/1)' \
      --benchmark_repetitions=5 --benchmark_report_aggregates_only=true 2>&1 | grep -E "_median|rror" | cut -c1-200
  done
} > "$O/layer.txt" 2>&1
