#!/usr/bin/env bash
# GPU checkpoint of the merge helper (issue #6, merge into base weights). Called from the repository root:
#   bash scripts/gpu/check_merge.sh BUILD_DIR OUT_DIR
# BUILD_DIR is configured (Release, CUDA, arch 90) with lori_test_gpu_ops and lori_bench_cuda built.
# Runs the merge GPU test cases, compute-sanitizer memcheck + racecheck on the sparse route's odd shapes,
# the merge benchmarks (sparse route at the target and its parts, the density crossover against the
# streaming tensor-core route) next to a copy of exactly W (cudaMemcpy and an SM copy kernel), and Nsight
# Compute on the sparse kernel; writes OUT_DIR/merge.txt (< 200 lines).
# Time limits (timeout): tests 16 s, memcheck 6 s, racecheck 6 s, benchmarks 34 s, ncu 11 s, SASS 5 s: <= 78 s.
set -uo pipefail
B="${1:?BUILD_DIR}"
O="${2:?OUT_DIR}"
mkdir -p "$O"
out="$O/merge.txt"
t="$B/tests/gpu/lori_test_gpu_ops"
b="$B/bench/cuda/lori_bench_cuda"
{
  echo "== check_merge.sh $(git rev-parse --short HEAD 2>/dev/null) $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader 2>/dev/null | head -1
  echo "== merge GPU tests (lori_test_gpu_ops -tc='*merge*')"
  s0=$(date +%s)
  timeout 16 "$t" -tc='*merge*' 2>&1 | grep -vE "^\[doctest\] (doctest version|run with)" | tail -40 | cut -c1-300
  echo "rc=${PIPESTATUS[0]} ($(( $(date +%s) - s0 )) s)"
  echo "== compute-sanitizer memcheck (sparse route, small shapes; with the streaming / cuBLAS cross-checks)"
  timeout 6 compute-sanitizer --tool memcheck --report-api-errors no --error-exitcode 9 "$t" -tc='*sparse route?*small*' 2>&1 |
    grep -iE "summary|invalid|error|test cases|assertions" | cut -c1-240 | head -16
  echo "rc=${PIPESTATUS[0]}"
  echo "== compute-sanitizer racecheck (sparse route, small shapes)"
  rc_log="$O/racecheck.log"
  timeout 6 compute-sanitizer --tool racecheck --report-api-errors no --error-exitcode 9 "$t" \
    -tc='*sparse route?*small*' > "$rc_log" 2>&1
  echo "rc=$?"
  grep -iE "summary|race reported|hazard|error|test cases|assertions" "$rc_log" | grep -v nvjet | cut -c1-240 | head -12
  echo "hazard lines naming lori's merge kernels: $(grep -cE "merge_sparse_kernel|entries_kernel|merge_stream_kernel|pack_kernel|pack_tiled_kernel" "$rc_log")"
  rm -f "$rc_log"
  echo "== benchmarks (median of 5; floor = BM_gpu_baseline_copy_w/14336, one copy of W)"
  echo "   merge/T/d/sparse/equal (merge_into); merge_sparse/T/d/kept%/mode: 0 sparse route (entry lists + merge"
  echo "   kernel), 1 its merge kernel's W stream alone, 2 its entry lists + math alone (no W), 3 streaming route,"
  echo "   5 / 6 / 7 = 0 / 1 / 2 with the wide kernel shape (16 columns per lane, 1 block of 16 warps per SM)"
  timeout 34 stdbuf -oL "$b" --benchmark_filter='BM_gpu_(baseline_copy_w/14336|baseline_copy_w_kernel/14336/1|merge/4/14336/(0/0|1/0)/|merge/8/14336/1/0/|merge_sparse/4/14336/(10/(1|2|5|6|7)|(15|20|30)/(0|3))/)' \
    --benchmark_repetitions=5 --benchmark_report_aggregates_only=true 2>&1 | grep -E "_median|^BM|Run on|error|Error" |
    grep -v "_mean\|_stddev\|_cv" | sed -E 's/floor = one copy of W \(BM_gpu_baseline_copy_w\)//; s/min_time:0\.[0-9]+\///' | cut -c1-230 | head -40
  echo "rc=${PIPESTATUS[0]}"
  echo "== ncu: merge_into, 4 sparse adapters (rank 32, 10 % kept), unequal scales, 14336 x 4096 bf16: sparse kernel"
  m="smsp__issue_active.avg.pct_of_peak_sustained_active,smsp__inst_executed.sum,smsp__inst_executed_pipe_alu.sum,smsp__inst_executed_pipe_fma.sum,smsp__inst_executed_pipe_lsu.sum,smsp__inst_executed_pipe_adu.sum,smsp__inst_executed_pipe_cbu.sum,smsp__inst_executed_pipe_uniform.sum,smsp__sass_inst_executed_op_shared_ld.sum,smsp__sass_inst_executed_op_global_ld.sum,sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_active,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared.avg.pct_of_peak_sustained_elapsed,smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio,smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_short_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_wait_per_issue_active.ratio,smsp__average_warps_issue_stalled_lg_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_not_selected_per_issue_active.ratio,smsp__average_warps_issue_stalled_no_instruction_per_issue_active.ratio,smsp__average_warps_issue_stalled_drain_per_issue_active.ratio,smsp__average_warps_issue_stalled_dispatch_stall_per_issue_active.ratio,dram__bytes_read.sum,dram__bytes_write.sum"
  timeout 11 ncu --section SpeedOfLight --section Occupancy --section LaunchStats --metrics "$m" \
    -k regex:'merge_sparse_kernel|entries_kernel' -c 2 \
    "$b" --benchmark_filter='BM_gpu_merge/4/14336/1/0/' --benchmark_repetitions=1 2>&1 |
    grep -E "merge_sparse_kernel|entries_kernel|Duration|DRAM Throughput|Memory Throughput|Compute \(SM\)|Registers Per|Shared Memory Config|Dynamic Shared|Block Limit|Achieved Occupancy|Theoretical Occupancy|Grid Size|Block Size|stalled|issue_active|inst_executed|pipe_|wavefronts|dram__bytes|SM Frequency" |
    sed -E 's/smsp__average_warps_issue_stalled_//; s/_per_issue_active.ratio//' | cut -c1-200 | head -75
  echo "rc=${PIPESTATUS[0]}"
  echo "== SASS of merge_sparse_kernel<bfloat16> (static): instructions, opcode histogram, the entry loop"
  if command -v cuobjdump > /dev/null; then
    sass="$O/merge_sparse.sass"
    timeout 5 cuobjdump -sass -fun '_ZN4lori6detail12merge_sparse19merge_sparse_kernelINS_8bfloat16ENS1_5shapeILi8ELi256ELi3EEEEEvNS1_6paramsE' "$t" > "$sass" 2>&1
    awk '/^ *\/\*[0-9a-f]+\*\//{ sub(/^ *\/\*[0-9a-f]+\*\/ */, ""); if ($1 ~ /^@/) $1 = ""; split($0, f, " "); op = f[1]; n++; c[op]++ }
         END { printf "instructions %d\n", n; for (o in c) printf "%s %d\n", o, c[o] }' "$sass" | sort -k2 -nr | head -28 | paste -sd' ' | fold -w 200
    # from the first LDS.128 (the entry loop's stage read), 70 instructions
    grep -E "^ *\/\*[0-9a-f]+\*\/" "$sass" | awk 'BEGIN{p=0} /LDS.128/ && p==0 {p=1} p>0 && p<=70 {print; p++}' | cut -c1-110 | sed -E 's/ +/ /g'
    rm -f "$sass"
  else
    echo "cuobjdump not found"
  fi
} > "$out" 2>&1
echo "wrote $out"
