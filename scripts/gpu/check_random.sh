#!/usr/bin/env bash
# GPU checkpoint of the `random` helper (issue #3): GPU benchmarks (with the d2d copy baseline), the
# torch.randn baseline, the random tests (CPU + GPU), a racecheck; one text file OUT_DIR/random.txt.
# Usage: bash scripts/gpu/check_random.sh BUILD_DIR OUT_DIR
# BUILD_DIR is configured with CUDA and has lori_test_random_gpu and lori_bench_random built; the CPU
# tests lori_test_random(_fma) are built here, in the background while the benchmarks run.
. "$(dirname "${BASH_SOURCE[0]}")/check_common.sh"  # check_begin, left CAP BUDGET, elapsed
check_begin random "$@"
# Every step's timeout is capped by what is left of a 76 s budget (the checkpoint's hard limit is 80 s).
budget=76
{
  echo "== check_random.sh $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv,noheader 2>&1 | head -2
  (timeout "$(left 70 "$budget")" cmake --build "$B" -j8 --target lori_test_random lori_test_random_fma > "$OUT/random_build.log" 2>&1; echo "rc=$?" >> "$OUT/random_build.log") &
  build_pid=$!
  exe=$(find "$B" -type f -name lori_bench_random -perm -u+x | head -1)
  echo "== lori_bench_random BM_gpu_* without _x10, _tiny (5 repetitions, aggregates) ($(date -u +%T))"
  nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv,noheader,nounits -lms 100 > "$OUT/smi.log" 2>&1 &
  smi_pid=$!
  timeout "$(left 34 "$budget")" "$exe" --benchmark_filter='BM_gpu_(baseline|generate_llama3_8b_r32(/|_bf16|_general|_cfg)|generate_single)' --benchmark_repetitions=5 --benchmark_report_aggregates_only=true --benchmark_min_time=0.1 2>&1 \
    | grep -E "^BM_|^-|Benchmark|Run on" | grep -vE "_cv |_stddev |_mean " | head -60
  kill "$smi_pid" 2> /dev/null
  echo "  nvidia-smi during the benchmarks (sm MHz, W, C): $(awk -F', *' 'NF>=3 {n++; c+=$1; p+=$2; if (n==1||$1<cmin) cmin=$1; if ($1>cmax) cmax=$1; if ($2>pmax) pmax=$2; if ($3>tmax) tmax=$3} END {if (n) printf "%d samples, clock min %d avg %.0f max %d, power avg %.0f max %.0f, temp max %d", n, cmin, c/n, cmax, p/n, pmax, tmax}' "$OUT/smi.log")"
  echo "== ctest -R lori_test_random_gpu ($(date -u +%T))"
  timeout "$(left 20 "$budget")" ctest --test-dir "$B" -R 'lori_test_random_gpu' --output-on-failure 2>&1 | grep -vE "^\s*$|Test project|Start " | tail -30
  wait "$build_pid"
  echo "== CPU test build: $(tail -1 "$OUT/random_build.log"); grep error:"; grep -E "error" "$OUT/random_build.log" | head -10
  echo "== ctest -R lori_test_random ($(date -u +%T))"
  timeout "$(left 8 "$budget")" ctest --test-dir "$B" -R 'lori_test_random' -E 'lori_test_random_gpu' --output-on-failure 2>&1 | grep -vE "^\s*$|Test project|Start " | tail -30
  if command -v compute-sanitizer > /dev/null; then
    gexe=$(find "$B" -type f -name lori_test_random_gpu -perm -u+x | head -1)
    echo "== compute-sanitizer racecheck + memcheck: slow-path-list subset on 1-2 blocks ($(date -u +%T))"
    timeout "$(left 15 "$budget")" compute-sanitizer --tool racecheck --error-exitcode 9 "$gexe" -tc='gaussian slow-path lists*: small*,gaussian row path: small*' > "$OUT/racecheck.log" 2>&1
    rc=$?
    tail -3 "$OUT/racecheck.log"
    echo "racecheck rc=$rc (124 = timed out); first hazards:"
    grep -E "Error: Race|Warning: Race|Write Thread|Read Thread|Current Value|at .*projection" "$OUT/racecheck.log" | head -16 | cut -c1-200
    timeout "$(left 8 "$budget")" compute-sanitizer --tool memcheck --error-exitcode 9 "$gexe" -tc='gaussian slow-path lists*: small*,gaussian row path: small*' > "$OUT/memcheck.log" 2>&1
    rc=$?
    tail -3 "$OUT/memcheck.log"
    echo "memcheck rc=$rc (124 = timed out)"
  fi
  if command -v ncu > /dev/null; then
    # Clocks as in the benchmarks (no clock control, no cache flush): the duration to compare.
    echo "== ncu --clock-control none --cache-control none: gaussian (float) ($(date -u +%T))"
    for f in "BM_gpu_generate_llama3_8b_r32/1/" "BM_gpu_generate_llama3_8b_r32_bf16/1/"; do
      timeout "$(left 6 "$budget")" ncu --clock-control none --cache-control none --section SpeedOfLight -k "regex:projection_kernel" -c 2 "$exe" \
        --benchmark_filter="$f" --benchmark_min_time=0.01 2>&1 | grep -E "Duration|SM Frequency|DRAM Throughput" | tail -3 | sed "s|^|  $f |"
    done
    for spec in "projection_kernel BM_gpu_generate_llama3_8b_r32/1/ gauss"; do
      [ $((budget - $(elapsed))) -lt 12 ] && break
      set -- $spec
      echo "== ncu -k $1 ($2) ($(date -u +%T))"
      timeout "$(left 9 "$budget")" ncu --section SpeedOfLight --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis \
        --section SchedulerStats --section WarpStateStats --section ComputeWorkloadAnalysis \
        --metrics smsp__inst_executed.sum,dram__bytes_read.sum,dram__bytes_write.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum \
        -k "regex:$1" -c 1 "$exe" --benchmark_filter="$2" --benchmark_min_time=0.01 > "$OUT/ncu_$3.log" 2>&1
      # Stall reasons in a separate run (a metric-name problem there cannot cost the lines above).
      timeout "$(left 7 "$budget")" ncu --metrics "regex:^smsp__average_warps_issue_stalled_.*_per_issue_active[.]ratio$,regex:^sm__pipe_.*_cycles_active[.]avg[.]pct_of_peak_sustained_active$" \
        -k "regex:$1" -c 1 "$exe" --benchmark_filter="$2" --benchmark_min_time=0.01 >> "$OUT/ncu_$3.log" 2>&1
      grep -E "smsp__inst|dram__bytes|bank_conflicts|Issue Slots Busy|Executed Ipc A|SM Frequency|Duration|Compute \(SM\) Throughput|DRAM Throughput|Issued Warp|No Eligible|Active Warps Per|Eligible Warps|Warp Cycles Per Issued|Registers Per|Dynamic Shared|Grid Size|Theoretical Occ|Achieved Occ" "$OUT/ncu_$3.log" | head -25
      echo "  top stall reasons (warps per issue):"
      grep -E "issue_stalled_.*_per_issue_active" "$OUT/ncu_$3.log" | awk '{print $NF, $1}' | sort -gr | head -7 | sed 's/smsp__average_warps_issue_stalled_/    /; s/_per_issue_active.ratio//'
      echo "  busiest pipes (% of peak, active cycles):"
      grep -E "sm__pipe_.*_cycles_active" "$OUT/ncu_$3.log" | awk '{print $NF, $1}' | sort -gr | head -5 | sed 's/sm__pipe_/    /; s/_cycles_active.avg.pct_of_peak_sustained_active//'
    done
  fi
  if command -v ncu > /dev/null && [ $((budget - $(elapsed))) -gt 14 ]; then
    # Per-instruction hot spots of the float gaussian kernel (SASS address, instruction, executed warp
    # instructions, stall samples): where the instructions and the stalls are.
    echo "== ncu SourceCounters hot spots: projection_kernel (BM_gpu_generate_llama3_8b_r32/1/) ($(date -u +%T))"
    timeout "$(left 14 "$budget")" ncu --section SourceCounters --page source --print-source sass --csv -k "regex:projection_kernel" -c 1 "$exe" \
      --benchmark_filter="BM_gpu_generate_llama3_8b_r32/1/" --benchmark_min_time=0.01 > "$OUT/ncu_src.csv" 2> "$OUT/ncu_src.err"
    echo "  rc=$? lines=$(wc -l < "$OUT/ncu_src.csv")"
    python3 - "$OUT/ncu_src.csv" << 'PYEOF' 2>&1 | head -60
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1], errors="replace")) if r]
hdr = None
for i, r in enumerate(rows):
    if any("Address" in c for c in r) and any("Source" in c for c in r):
        hdr = i
        break
if hdr is None:
    print("  no header; first lines:", rows[:3])
    sys.exit(0)
h = rows[hdr]
def col(name, excl=None):
    for j, c in enumerate(h):
        if name in c and (excl is None or excl not in c):
            return j
    return None
ia, isrc = col("Address"), col("Source")
iex = col("Instructions Executed", "Thread")
ist = col("Warp Stall Sampling (All")
print("  columns:", [h[j] for j in (ia, isrc, iex, ist) if j is not None])
def num(x):
    try:
        return float(x.replace(",", ""))
    except Exception:
        return 0.0
body = [r for r in rows[hdr + 1:] if len(r) == len(h)]
tot = sum(num(r[iex]) for r in body) if iex is not None else 0
print("  instructions executed (sum): %.0f over %d SASS lines" % (tot, len(body)))
if iex is not None:
    print("  top 30 by instructions executed:")
    for r in sorted(body, key=lambda r: -num(r[iex]))[:30]:
        print("   %8s %10.0f  %s" % (r[ia], num(r[iex]), r[isrc][:70]))
if iex is not None:
    # Sums over runs of 48 consecutive SASS lines (loops and inlined helpers show as hot regions).
    regs = []
    for k in range(0, len(body), 48):
        part = body[k:k + 48]
        regs.append((sum(num(r[iex]) for r in part), part[0][ia], part[-1][ia],
                     " | ".join(r[isrc].split()[0] + (" " + r[isrc].split()[1] if len(r[isrc].split()) > 1 and r[isrc].split()[0].startswith("@") else "") for r in part if any(x in r[isrc] for x in ("ATOMS", "BAR", "LDS", "STS", "SHFL", "VOTE", "ST.E", "MEMBAR", "YIELD")))[:110]))
    print("  top 12 regions of 48 SASS lines (sum, first..last address, memory/sync ops in it):")
    for v, a0, a1, ops in sorted(regs, key=lambda x: -x[0])[:12]:
        print("   %10.0f %s..%s %s" % (v, a0, a1, ops))
if ist is not None:
    print("  top 20 by stall samples:")
    for r in sorted(body, key=lambda r: -num(r[ist]))[:20]:
        print("   %8s %8.0f  %s" % (r[ia], num(r[ist]), r[isrc][:70]))
PYEOF
  fi
  if command -v cuobjdump > /dev/null; then
    # SASS instruction counts of the gaussian kernel variants (to compare clean-ups against main's).
    echo "== cuobjdump -sass: instructions per gaussian projection_kernel ($(date -u +%T))"
    timeout "$(left 10 "$budget")" cuobjdump -sass "$exe" 2> /dev/null | awk '/Function :/ {name = $3} /^ +\/\*[0-9a-f]+\*\/ / {n[name]++} END {for (k in n) if (k ~ /projection_kernel.*Lb1/) print "  " n[k], k}' | sort -k2 | cut -c1-160
  fi
  echo "== torch.randn baseline ($(date -u +%T))"
  timeout "$(left 12 "$budget")" python3 bench/random/torch_randn.py 2>&1 | tail -3
  echo "== done $(date -u +%FT%TZ)"
} > "$log" 2>&1
tail -5 "$log"
