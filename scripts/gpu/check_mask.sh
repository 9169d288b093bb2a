#!/usr/bin/env bash
# GPU checks of the mask area (issue #4): tests, GPU benchmarks, a per-kernel Nsight Compute
# breakdown, compute-sanitizer (quick subset). Most important first; every step appends to mask.txt
# and runs under a timeout cut to what is left of a 78 s budget.
# Usage (repository root, GPU machine, BUILD configured and lori_test_mask_gpu / lori_bench_mask built):
#   bash scripts/gpu/check_mask.sh BUILD OUT_DIR      -> OUT_DIR/mask.txt
. "$(dirname "${BASH_SOURCE[0]}")/check_common.sh"  # check_begin, left CAP (of a 78 s budget), elapsed
check_begin mask "$@"
F=$log
log() { echo "$@" | tee -a "$F"; }
log "== mask check $(git rev-parse --short HEAD 2>/dev/null) $(date -u +%H:%M:%S)"
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader 2>&1 | head -1 | tee -a "$F"
timeout "$(left 30)" cmake --build "$B" -j14 --target lori_test_mask_gpu lori_bench_mask > "$OUT/mask_build.log" 2>&1 \
  || { log "build FAILED"; grep -E "error" "$OUT/mask_build.log" | head -20 | tee -a "$F"; }
log "== ctest lori_test_mask_gpu"
timeout "$(left 25)" ctest --test-dir "$B" -R lori_test_mask_gpu --output-on-failure > "$OUT/mask_ctest.log" 2>&1
log "ctest rc=$?"; grep -E "tests passed|Passed|Failed|ERROR|CHECK|differs|test cases|assertions" "$OUT/mask_ctest.log" | head -40 | tee -a "$F"
bench=$(find "$B" -type f -name lori_bench_mask -perm -u+x | head -1)
log "== lori_bench_mask BM_gpu (5 repetitions: mean and median; real_time = CUDA-event time)"
timeout "$(left 25)" "$bench" --benchmark_filter='BM_gpu' --benchmark_repetitions=5 --benchmark_report_aggregates_only=true \
  --benchmark_min_time=0.05 > "$OUT/mask_bench.log" 2>&1
log "bench rc=$?"
grep -E "^BM_|^Run|^-|Benchmark" "$OUT/mask_bench.log" | grep -v -E "_stddev|_cv|_mean" | head -60 | tee -a "$F"
# ncu_run FILTER COUNT TIMEOUT LINES: per-kernel figures of the first COUNT calib_ kernels of one run of
# BM_gpu_calibrate_FILTER (serialised by the profiler, caches flushed between kernels):
# the raw page, filtered to duration, DRAM / SM throughput, occupancy, registers and the main
# warp stall reasons (cycles per issued instruction).
ncu_run() {
  local f=$1 c=$2 lg="$OUT/mask_ncu_${1//\//_}.log"
  log "== ncu BM_gpu_calibrate_$f (first $c calib_ kernels; raw metrics)"
  timeout "$(left "$3")" ncu --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --metrics smsp__inst_executed.sum,dram__bytes_read.sum,dram__bytes_write.sum,lts__t_bytes.sum,lts__t_sector_hit_rate.pct \
    --page raw -k regex:calib_ -c "$c" "$bench" --benchmark_filter="BM_gpu_calibrate_$f/" \
    --benchmark_min_time=0.01 > "$lg" 2>&1
  log "ncu rc=$?"
  # One line per kernel: name, time, DRAM % of peak, SM %, warps active %, warp-instructions,
  # DRAM read/write MB, registers, long/short-scoreboard and barrier stalls per issued instruction.
  awk '
    function flush() { if (k != "") printf "%-22s t=%7s us dram=%5s%% sm=%5s%% act=%5s%% inst=%s rd=%sMB wr=%sMB regs=%s lsb=%s ssb=%s bar=%s\n", k, t, d, sm, a, ins, rd, wr, rg, ls, ss, br; k = t = d = sm = a = ins = rd = wr = rg = ls = ss = br = "" }
    function mb(u, v) { gsub(",", "", v); if (u == "Gbyte") return v * 1000; if (u == "Kbyte") return v / 1000; if (u == "byte") return v / 1e6; return v }
    /calib_[a-z0-9_]+</ { flush(); match($0, /calib_[a-z0-9_]+<[a-z, 0-9]*>/); k = substr($0, RSTART, RLENGTH); gsub(" ", "", k) }
    /gpu__time_duration.sum/ { t = $NF } /gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed/ { d = $NF }
    /sm__throughput.avg.pct_of_peak_sustained_elapsed/ { sm = $NF } /sm__warps_active.avg.pct_of_peak_sustained_active/ { a = $NF }
    /smsp__inst_executed.sum / { ins = $NF } /dram__bytes_read.sum / { rd = mb($(NF-1), $NF) } /dram__bytes_write.sum / { wr = mb($(NF-1), $NF) }
    /launch__registers_per_thread / { rg = $NF } /issue_stalled_long_scoreboard_per_issue_active/ { ls = $NF }
    /issue_stalled_short_scoreboard_per_issue_active/ { ss = $NF } /issue_stalled_barrier_per_issue_active/ { br = $NF }
    END { flush() }' "$lg" | head -"$4" | tee -a "$F"
  # Per kernel: L2 hit rate and the other stall reasons over 0.3 cycles per issued instruction.
  awk '/calib_[a-z0-9_]+</ { if (l != "") print l; match($0, /calib_[a-z0-9_]+<[a-z, 0-9]*>/); k = substr($0, RSTART, RLENGTH); gsub(" ", "", k); l = sprintf("%-22s", k) }
    /lts__t_sector_hit_rate.pct/ { l = l " L2hit=" $NF "%" }
    /smsp__average_warps_issue_stalled_[a-z_]+_per_issue_active.ratio/ && !/long_scoreboard|short_scoreboard|barrier/ {
      v = $NF; gsub(",", "", v); if (v + 0 > 0.3) { n = $1; sub(/.*issue_stalled_/, "", n); sub(/_per_issue_active.*/, "", n); l = l " " n "=" v } }
    END { if (l != "") print l }' "$lg" | head -"$4" | tee -a "$F"
  grep -q -E "gpu__time_duration" "$lg" || tail -12 "$lg" | tee -a "$F"
}
exe=$(find "$B" -type f -name lori_test_mask_gpu -perm -u+x | head -1)
sanitize() {
  local tool=$1 s; s=$(date +%s)
  LORI_MASK_GPU_QUICK=1 timeout "$(left "$2")" "$cs" --tool "$tool" --report-api-errors no \
    --error-exitcode 9 "$exe" > "$OUT/mask_sanitize_$tool.log" 2>&1
  local rc=$?
  log "compute-sanitizer $tool (LORI_MASK_GPU_QUICK=1): rc=$rc $(( $(date +%s) - s )) s; $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|test cases' "$OUT/mask_sanitize_$tool.log" | tr '\n' ' ')"
  [ $rc -eq 0 ] || grep -E "Error|Race|Invalid|at 0x|by thread|TEST CASE|ERROR" "$OUT/mask_sanitize_$tool.log" | head -15 | tee -a "$F"
}
sanitize memcheck 15
# Per-kernel times with the caches left as the previous kernel left them (one pass per kernel, no
# flush): closer to a real run than the sectioned profile below (which flushes before each kernel).
# ncu_warm BENCH COUNT: the first COUNT calib_ kernels of one run of BENCH.
ncu_warm() {
  command -v ncu > /dev/null || return 0
  log "== ncu --cache-control none: $1, first $2 calib_ kernels (us)"
  timeout "$(left 10)" ncu --cache-control none --metrics gpu__time_duration.sum -k regex:calib_ -c "$2" "$bench" \
    --benchmark_filter="$1/" --benchmark_min_time=0.01 > "$OUT/mask_ncu_warm.log" 2>&1
  awk '/calib_[a-z0-9_]+</ { match($0, /calib_[a-z0-9_]+<[a-z, 0-9]*>/); k = substr($0, RSTART, RLENGTH); gsub(" ", "", k) }
    /gpu__time_duration.sum/ { printf "%s=%s ", k, $NF; tot += $NF } END { printf "sum=%.1f\n", tot }' "$OUT/mask_ncu_warm.log" | tee -a "$F"
}
# Reference / model granularity: 6 launches (init, pass0_bulk (+ digit 0's select in its last
# block), split_ballot, select, hist (+ digit 2's select in its last block), finish); the same with
# separate selects: 8.
ncu_warm BM_gpu_calibrate_llama3_8b/0/0 6
sanitize racecheck 34
ncu_warm BM_gpu_calibrate_llama3_8b_unfused/0/0 8
ncu_warm BM_gpu_calibrate_llama3_8b_no_segments/0/0 6
# The real (dependent-launch) timeline of one run, when Nsight Systems is there: per kernel, start
# and end relative to the run's first kernel (us); the last run of the benchmark's loop.
if command -v nsys > /dev/null; then
  log "== nsys BM_gpu_calibrate_llama3_8b/0/0 timeline of the last run (start end, us from its first kernel)"
  timeout "$(left 15)" nsys profile -t cuda --sample=none --cpuctxsw=none -o "$OUT/mask_nsys" --force-overwrite true "$bench" \
    --benchmark_filter="BM_gpu_calibrate_llama3_8b/0/0/" --benchmark_min_time=0.01 > "$OUT/mask_nsys.log" 2>&1
  timeout "$(left 10)" nsys stats -q -r cuda_gpu_trace -f csv "$OUT/mask_nsys.nsys-rep" > "$OUT/mask_nsys.csv" 2>> "$OUT/mask_nsys.log"
  # cuda_gpu_trace csv: Start (ns), Duration (ns), ..., Name. A run starts at calib_init.
  python3 - "$OUT/mask_nsys.csv" 2>&1 <<'PY' | tail -4 | tee -a "$F"
import csv, re, sys
rows = [r for r in csv.DictReader(l for l in open(sys.argv[1]) if l.strip() and not l.startswith('NOTICE')) if 'calib_' in r.get('Name', '')]
runs, cur = [], None
for r in rows:
    k = re.search(r'calib_[a-z0-9_]+', r['Name']).group(0)
    if k == 'calib_init':
        cur = []; runs.append(cur)
    if cur is not None:
        cur.append((k, float(r['Start (ns)']), float(r['Duration (ns)'])))
for run in runs[-2:]:
    t0 = run[0][1]
    print('  '.join('%s %.1f-%.1f' % (k, (s - t0) / 1e3, (s + d - t0) / 1e3) for k, s, d in run))
PY
  grep -q calib_ "$OUT/mask_nsys.csv" || tail -5 "$OUT/mask_nsys.log" | tee -a "$F"
fi
command -v ncu > /dev/null && ncu_run llama3_8b/0/0 6 16 12
log "== done in $(elapsed) s"
