# Sourced (not run) by the checkpoint scripts scripts/gpu/check_<name>.sh, which the integrator runs from
# the repository root as `bash scripts/gpu/check_<name>.sh BUILD_DIR OUT_DIR` under a hard 80 s limit:
# their shared preamble.
#   check_begin NAME BUILD_DIR OUT_DIR   sets B (the build folder), OUT (the out folder, created),
#       log (OUT/NAME.txt, emptied), t0 (the start, s), sb ("stdbuf -oL" where stdbuf exists: line-
#       buffered benchmark output survives a timeout) and cs (compute-sanitizer).
#   left CAP [BUDGET]   the seconds a step may take: CAP, or what is left of BUDGET seconds after t0
#       (default 78) if less; at least 1 (timeout 0 would mean no limit at all).
#   elapsed             seconds since t0.
# Run on its own (e.g. by a check_*.sh glob) it does nothing.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then echo "check_common.sh: sourced by the check_<name>.sh scripts, nothing to run"; exit 0; fi
set -uo pipefail
check_begin() {
  [ $# -ge 3 ] || { echo "usage: bash scripts/gpu/check_$1.sh BUILD_DIR OUT_DIR" >&2; exit 1; }
  B=$2
  OUT=$3
  mkdir -p "$OUT"
  log="$OUT/$1.txt"
  : > "$log"
  t0=$(date +%s)
  sb=$(command -v stdbuf > /dev/null && echo "stdbuf -oL" || true)
  cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
}
left() {
  local l=$(( ${2:-78} - ($(date +%s) - t0) ))
  [ "$l" -gt "$1" ] && l=$1
  [ "$l" -lt 1 ] && l=1
  echo "$l"
}
elapsed() { echo $(( $(date +%s) - t0 )); }
