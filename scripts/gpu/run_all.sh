#!/usr/bin/env bash
# Builds lori with CUDA on the GPU machine and runs the GPU tests, the compute-sanitizer checks and the
# GPU benchmarks; logs go to $OUT (device tool). Usage: bash scripts/gpu/run_all.sh [steps...]
#   steps: env build test sanitize bench torch peft (default: all)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/lori-out}"; mkdir -p "$OUT"
steps="${*:-env build test sanitize bench torch peft}"
has() { [[ " $steps " == *" $1 "* ]]; }
B=build-gpu
if has env; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  nvcc --version | tail -1; cmake --version | head -1; g++ --version | head -1; which ninja
  python3 -c 'import torch, peft, transformers; print("torch", torch.__version__, "peft", peft.__version__, "transformers", transformers.__version__)'
fi
if has build; then
  gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
  cmake -S . -B $B "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PWD/.deps/usr" \
    -DLORI_ENABLE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DLORI_PYTHON="$(command -v python3)" > "$OUT/configure.log" 2>&1 \
    || { tail -40 "$OUT/configure.log"; exit 1; }
  t0=$(date +%s)
  cmake --build $B -j"$(nproc)" > "$OUT/build.log" 2>&1 || { grep -E "error|Error" "$OUT/build.log" | head -60; exit 1; }
  echo "build: $(( $(date +%s) - t0 )) s"
fi
if has test; then
  ctest --test-dir $B -L gpu --output-on-failure -j4 2>&1 | tee "$OUT/ctest_gpu.log" | tail -25
fi
if has sanitize; then
  for t in $(ctest --test-dir $B -L gpu -N 2>/dev/null | awk '/Test +#/ {print $3}'); do
    exe=$(find $B -type f -name "$t" -perm -u+x | head -1); [ -n "$exe" ] || continue
    for tool in memcheck racecheck; do
      timeout 300 compute-sanitizer --tool $tool --report-api-errors no --error-exitcode 9 "$exe" > "$OUT/sanitize_${t}_${tool}.log" 2>&1
      echo "compute-sanitizer $tool $t: rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitize_${t}_${tool}.log" | tail -1)"
    done
  done
fi
if has bench; then
  for exe in $(find $B/bench -type f -name 'lori_bench_*' -perm -u+x | sort); do
    name=$(basename "$exe")
    "$exe" --benchmark_filter='gpu' --benchmark_repetitions=5 --benchmark_report_aggregates_only=true \
      --benchmark_out="$OUT/$name.json" --benchmark_out_format=json > "$OUT/$name.txt" 2>&1
    echo "== $name (rc=$?)"; grep -E "_median|^BM_" "$OUT/$name.txt" | grep -v -E "_mean|_stddev|_cv" | head -60
  done
fi
if has torch; then
  for py in $(find bench -name '*.py' | sort); do echo "== $py"; PYTHONUNBUFFERED=1 timeout 300 python3 "$py" 2>&1 | tail -30; done
fi
if has peft; then
  [ -f scripts/gpu/peft_roundtrip.sh ] && { echo "== peft round trip"; timeout 400 bash scripts/gpu/peft_roundtrip.sh "$B" 2>&1 | tail -40; }
fi
exit 0
