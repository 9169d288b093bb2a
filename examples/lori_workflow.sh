#!/usr/bin/env bash
# The LoRI workflow on real PEFT adapters, with the `lori` tool:
#   inspect three LoRA adapters (PEFT 0.21 folders bundled in tests/data/peft_adapters), calibrate a
#   90%-sparse LoRI-S mask for each (global top-|B|), apply the masks, measure the interference between
#   the adapters, merge them (cat = exact sum of the updates), and pack one into the compact LoRI format.
# usage: examples/lori_workflow.sh [LORI_BINARY] [WORK_DIR]
#   LORI_BINARY defaults to build/bin/lori (cmake -S . -B build && cmake --build build --target lori_tool)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
LORI="${1:-$root/build/bin/lori}"
work="${2:-$(mktemp -d "${TMPDIR:-/tmp}/lori_workflow.XXXXXX")}"
A="$root/tests/data/peft_adapters"
mkdir -p "$work"
step() { printf '\n== %s\n$ %s\n' "$1" "${*:2}"; "${@:2}"; }

step "1. inspect a PEFT adapter" "$LORI" inspect "$A/nlu"
for t in nlu math code; do
  step "2. calibrate the LoRI-S mask of '$t' (keep the top 10% of |B| over the whole model)" \
    "$LORI" calibrate "$A/$t" --sparsity 0.9 -o "$work/$t.mask.safetensors"
  step "3. sparsify '$t' with its mask" "$LORI" sparsify "$A/$t" --mask "$work/$t.mask.safetensors" -o "$work/${t}_s"
done
if "$LORI" interference --help >/dev/null 2>&1; then
  step "4. interference between the sparse adapters" \
    "$LORI" interference "$work/nlu_s" "$work/math_s" "$work/code_s" --csv "$work/interference.csv"
fi
step "5. merge the three sparse adapters (cat: the exact weighted sum of their updates)" \
  "$LORI" merge "$work/nlu_s" "$work/math_s" "$work/code_s" --method cat --weights 1 1 1 -o "$work/merged"
step "   the merged adapter is a PEFT folder" "$LORI" inspect "$work/merged"
step "6. pack a sparse adapter into the compact LoRI format" "$LORI" pack "$work/math_s" -o "$work/math_s.lori"
step "   and unpack it (bit-exact)" "$LORI" unpack "$work/math_s.lori" -o "$work/math_s_unpacked"
cmp "$work/math_s/adapter_model.safetensors" "$work/math_s_unpacked/adapter_model.safetensors" && echo "identical tensors"
printf '\nlori workflow: done (outputs in %s)\n' "$work"
