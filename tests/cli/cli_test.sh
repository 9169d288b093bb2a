#!/usr/bin/env bash
# CLI tests of the `lori` tool on the fixture adapters: cli_test.sh SUBCOMMAND LORI HELPER DATA WORK
# Each subcommand's group checks the normal path and its error paths: exit code 2, exactly one line
# on stderr naming the problem, and no output file left behind.
set -u
sub="$1"; LORI="$2"; HELPER="$3"; DATA="$4"; WORK="$5/$1"
rm -rf "$WORK"; mkdir -p "$WORK"
A="$DATA/peft_adapters"
fails=0
pass() { echo "PASS $*"; }
fail() { echo "FAIL $*"; fails=$((fails + 1)); }

# ok DESCRIPTION -- command...   : must exit 0; stdout kept in $WORK/out, stderr must be empty
ok() {
  local what="$1"; shift 2
  if "$@" >"$WORK/out" 2>"$WORK/err"; then
    if [ -s "$WORK/err" ]; then fail "$what: unexpected stderr: $(head -c 300 "$WORK/err")"; else pass "$what"; fi
  else fail "$what: exit $? ($(head -c 300 "$WORK/err"))"; fi
}
# err DESCRIPTION PATTERN NOT_CREATED -- command... : exit 2, one stderr line matching PATTERN, NOT_CREATED absent
err() {
  local what="$1" pat="$2" absent="$3"; shift 4
  "$@" >"$WORK/out" 2>"$WORK/err"; local rc=$?
  local lines; lines=$(wc -l <"$WORK/err")
  if [ "$rc" -ne 2 ]; then fail "$what: exit $rc, expected 2"; return; fi
  if [ "$lines" -ne 1 ]; then fail "$what: $lines stderr lines, expected 1: $(cat "$WORK/err")"; return; fi
  if ! grep -q -- "$pat" "$WORK/err"; then fail "$what: stderr lacks '$pat': $(cat "$WORK/err")"; return; fi
  if [ -n "$absent" ] && ls "$absent"* >/dev/null 2>&1; then fail "$what: partial output left: $(ls -d "$absent"*)"; return; fi
  pass "$what"
}
has() { if grep -q -- "$2" "$WORK/out"; then pass "$1"; else fail "$1: output lacks '$2'"; fi; }

# A corrupt adapter: truncated safetensors.
mkdir -p "$WORK/corrupt"; cp "$A/nlu/adapter_config.json" "$WORK/corrupt/"
head -c 1000 "$A/nlu/adapter_model.safetensors" >"$WORK/corrupt/adapter_model.safetensors"
# A rank-mismatched adapter: config says r = 4.
mkdir -p "$WORK/rank4"; cp "$A/nlu/adapter_model.safetensors" "$WORK/rank4/"
sed 's/"r": 8/"r": 4/' "$A/nlu/adapter_config.json" >"$WORK/rank4/adapter_config.json"

for c in inspect calibrate sparsify merge interference apply pack unpack; do
  [ "$c" = "$sub" ] || [ "$sub" = "help" ] || continue
  ok "$c --help" -- "$LORI" "$c" --help; has "$c --help shows usage" "usage: lori $c"
done

case "$sub" in
help)
  ok "lori --help" -- "$LORI" --help; has "--help lists commands" "calibrate"
  err "unknown command" "unknown command 'frobnicate'" "" -- "$LORI" frobnicate
  "$LORI" >/dev/null 2>&1; [ $? -eq 2 ] && pass "no command: exit 2" || fail "no command: exit code"
  ;;
inspect)
  for t in nlu math code; do
    ok "inspect $t" -- "$LORI" inspect "$A/$t"
    has "inspect $t: 14 modules" "modules 14"
    has "inspect $t: q_proj shape, rank, alpha, scaling" "model.layers.0.self_attn.q_proj *64 x 64 *8 *16 *2 "
    has "inspect $t: down_proj shape" "model.layers.1.mlp.down_proj *64 x 160"
    has "inspect $t: parameter count" "parameters 17920"
    has "inspect $t: per-layer line" "layer 1    B sparsity 0.0000  parameters 8960"
  done
  err "inspect: missing folder" "no such adapter" "" -- "$LORI" inspect "$WORK/nope"
  err "inspect: corrupt file" "runs past the end\|truncated\|cover" "" -- "$LORI" inspect "$WORK/corrupt"
  err "inspect: rank mismatch" "rank 8 but adapter_config.json gives r = 4" "" -- "$LORI" inspect "$WORK/rank4"
  err "inspect: two arguments" "expects exactly one" "" -- "$LORI" inspect "$A/nlu" "$A/math"
  err "inspect: unknown option" "unknown option '--frob'" "" -- "$LORI" inspect "$A/nlu" --frob
  ;;
calibrate)
  ok "calibrate s=0.9 model" -- "$LORI" calibrate "$A/math" --sparsity 0.9 -o "$WORK/m.safetensors"
  has "calibrate prints threshold" "threshold"
  has "calibrate prints kept fractions" "total sparsity 0.9"
  ok "calibrated mask is the global top-|B|" -- "$HELPER" check-mask "$WORK/m.safetensors" "$A/math" 0.9
  ok "calibrate --granularity layer --exact" -- "$LORI" calibrate "$A/math" --sparsity 0.8 --granularity layer --exact -o "$WORK/ml.safetensors"
  has "per-layer groups reported" "layer 1"
  ok "calibrate --exclude" -- "$LORI" calibrate "$A/code" --sparsity 0.9 --exclude "$WORK/m.safetensors" -o "$WORK/mx.safetensors"
  err "calibrate: bad number" "bad number 'abc' for --sparsity" "$WORK/bad1" -- "$LORI" calibrate "$A/math" --sparsity abc -o "$WORK/bad1"
  err "calibrate: sparsity out of range" "must be in \[0, 1\]" "$WORK/bad2" -- "$LORI" calibrate "$A/math" --sparsity 1.5 -o "$WORK/bad2"
  err "calibrate: missing --sparsity" "missing required option --sparsity" "$WORK/bad3" -- "$LORI" calibrate "$A/math" -o "$WORK/bad3"
  err "calibrate: missing -o" "missing required option --output" "" -- "$LORI" calibrate "$A/math" --sparsity 0.9
  err "calibrate: bad granularity" "unknown granularity 'row'" "$WORK/bad4" -- "$LORI" calibrate "$A/math" --sparsity 0.9 --granularity row -o "$WORK/bad4"
  err "calibrate: corrupt adapter" "nlu\|corrupt" "$WORK/bad5" -- "$LORI" calibrate "$WORK/corrupt" --sparsity 0.9 -o "$WORK/bad5"
  err "calibrate: exclude not a mask file" "mask keys must look like\|not a LoRA\|must be U8" "$WORK/bad6" -- "$LORI" calibrate "$A/math" --sparsity 0.9 --exclude "$A/nlu/adapter_model.safetensors" -o "$WORK/bad6"
  ;;
sparsify)
  "$LORI" calibrate "$A/nlu" --sparsity 0.9 -o "$WORK/m.safetensors" >/dev/null
  ok "sparsify" -- "$LORI" sparsify "$A/nlu" --mask "$WORK/m.safetensors" -o "$WORK/s"
  ok "sparsified folder loads" -- "$LORI" inspect "$WORK/s"
  has "sparsified B is 90% zeros" "B sparsity 0.900"
  has "per-layer sparsity" "layer 0    B sparsity 0\.89"
  ok "sparsify into an existing folder" -- "$LORI" sparsify "$A/nlu" --mask "$WORK/m.safetensors" -o "$WORK/s"
  "$LORI" calibrate "$A/nlu" --sparsity 0.5 --granularity matrix -o "$WORK/m5.safetensors" >/dev/null
  err "sparsify: mask of another shape (rank 4 adapter)" "rank 8 but adapter_config.json gives r = 4" "$WORK/bad1" -- "$LORI" sparsify "$WORK/rank4" --mask "$WORK/m.safetensors" -o "$WORK/bad1"
  err "sparsify: missing mask file" "cannot open" "$WORK/bad2" -- "$LORI" sparsify "$A/nlu" --mask "$WORK/none.safetensors" -o "$WORK/bad2"
  err "sparsify: mask is not a mask" "mask keys must look like\|must be U8" "$WORK/bad3" -- "$LORI" sparsify "$A/nlu" --mask "$A/nlu/adapter_model.safetensors" -o "$WORK/bad3"
  err "sparsify: missing --mask" "missing required option --mask" "$WORK/bad4" -- "$LORI" sparsify "$A/nlu" -o "$WORK/bad4"
  ;;
merge)
  "$HELPER" make-base "$WORK/base.safetensors" F32
  # cat is exact: B'A' = sum_i w_i s_i B_i A_i. Applying the merged adapter must equal applying the
  # three with their weights; A' = w s A is rounded to float once (2^-24 relative), summed over
  # r = 24 terms: 1e-5 of the largest delta bounds it with a wide margin.
  ok "merge cat" -- "$LORI" merge "$A/nlu" "$A/math" "$A/code" --method cat --weights 1 0.5 -2 -o "$WORK/cat"
  ok "cat folder loads" -- "$LORI" inspect "$WORK/cat"
  has "cat rank is the sum" "r 24  lora_alpha 24"
  ok "apply cat" -- "$LORI" apply "$WORK/base.safetensors" "$WORK/cat" -o "$WORK/cat.safetensors"
  ok "cat delta = weighted sum of deltas" -- "$HELPER" check-apply "$WORK/base.safetensors" "$WORK/cat.safetensors" 1e-5 1 "$A/nlu" 0.5 "$A/math" -2 "$A/code"
  # linear with one adapter collapses to w s B A (PEFT does the same).
  ok "merge linear (one adapter)" -- "$LORI" merge "$A/math" --method linear --weights 0.7 -o "$WORK/lin1"
  ok "apply linear" -- "$LORI" apply "$WORK/base.safetensors" "$WORK/lin1" -o "$WORK/lin1.safetensors"
  ok "single-adapter linear = 0.7 s B A" -- "$HELPER" check-apply "$WORK/base.safetensors" "$WORK/lin1.safetensors" 1e-5 0.7 "$A/math"
  # svd of two adapters at rank 16 = sum of ranks: exact up to float storage.
  ok "merge svd (full rank)" -- "$LORI" merge "$A/nlu" "$A/math" --method svd --weights 1 1 --svd-rank 16 -o "$WORK/svd"
  ok "apply svd" -- "$LORI" apply "$WORK/base.safetensors" "$WORK/svd" -o "$WORK/svd.safetensors"
  ok "full-rank svd delta = sum of deltas" -- "$HELPER" check-apply "$WORK/base.safetensors" "$WORK/svd.safetensors" 1e-5 1 "$A/nlu" 1 "$A/math"
  for m in linear ties dare_linear dare_ties magnitude_prune ties_svd dare_linear_svd dare_ties_svd magnitude_prune_svd; do
    ok "merge $m" -- "$LORI" merge "$A/nlu" "$A/math" "$A/code" --method $m --weights 0.4 0.3 0.3 --density 0.5 --seed 7 -o "$WORK/$m"
    ok "$m folder loads" -- "$LORI" inspect "$WORK/$m"
  done
  ok "merge with --majority-sign frequency --svd-clamp" -- "$LORI" merge "$A/nlu" "$A/math" --method ties_svd --weights 1 1 --density 0.3 --majority-sign frequency --svd-rank 4 --svd-clamp 0.99 -o "$WORK/tsf"
  ok "clamped svd folder loads" -- "$LORI" inspect "$WORK/tsf"
  has "--svd-rank honoured" "r 4  lora_alpha 4"
  err "merge: unknown method" "unknown method 'average'" "$WORK/bad1" -- "$LORI" merge "$A/nlu" "$A/math" --method average --weights 1 1 -o "$WORK/bad1"
  err "merge: density missing" "needs --density" "$WORK/bad2" -- "$LORI" merge "$A/nlu" "$A/math" --method ties --weights 1 1 -o "$WORK/bad2"
  err "merge: weights count" "--weights has 1 values for 2 adapters" "$WORK/bad3" -- "$LORI" merge "$A/nlu" "$A/math" --method cat --weights 1 -o "$WORK/bad3"
  err "merge: bad density" "bad number 'half'" "$WORK/bad4" -- "$LORI" merge "$A/nlu" "$A/math" --method ties --weights 1 1 --density half -o "$WORK/bad4"
  err "merge: density out of range" "must be in \[0, 1\]" "$WORK/bad5" -- "$LORI" merge "$A/nlu" "$A/math" --method ties --weights 1 1 --density 2 -o "$WORK/bad5"
  err "merge: missing weights" "missing required option --weights" "$WORK/bad6" -- "$LORI" merge "$A/nlu" "$A/math" --method cat -o "$WORK/bad6"
  err "merge: bad majority sign" "total or frequency" "$WORK/bad7" -- "$LORI" merge "$A/nlu" "$A/math" --method ties --weights 1 1 --density 0.5 --majority-sign most -o "$WORK/bad7"
  err "merge: rank mismatch" "gives r = 4" "$WORK/bad8" -- "$LORI" merge "$A/nlu" "$WORK/rank4" --method cat --weights 1 1 -o "$WORK/bad8"
  err "merge: bad svd rank" "--svd-rank must be positive" "$WORK/bad9" -- "$LORI" merge "$A/nlu" "$A/math" --method svd --weights 1 1 --svd-rank 0 -o "$WORK/bad9"
  ;;
interference)
  ok "interference of three adapters" -- "$LORI" interference "$A/nlu" "$A/math" "$A/code" --csv "$WORK/i.csv"
  has "14 modules in common" "modules in common: 14"
  has "overall pair rows" "overall  1-2"
  has "per-layer rows" "layer 1  0-2"
  has "cross-term energy" "cross-term energy of the linear merge"
  [ "$(wc -l <"$WORK/i.csv")" -eq $((1 + 14 * 3 + 3)) ] && pass "csv has one row per module and pair + overall" || fail "csv rows: $(wc -l <"$WORK/i.csv")"
  ok "interference numbers = dense double reference" -- "$HELPER" check-interference "$WORK/i.csv" "$A/nlu" "$A/math"
  "$LORI" calibrate "$A/nlu" --sparsity 0.9 -o "$WORK/m1.safetensors" >/dev/null && "$LORI" sparsify "$A/nlu" --mask "$WORK/m1.safetensors" -o "$WORK/s1" >/dev/null
  "$LORI" calibrate "$A/math" --sparsity 0.9 -o "$WORK/m2.safetensors" >/dev/null && "$LORI" sparsify "$A/math" --mask "$WORK/m2.safetensors" -o "$WORK/s2" >/dev/null
  ok "interference of LoRI-S adapters" -- "$LORI" interference "$WORK/s1" "$WORK/s2"
  if grep -q "^overall  0-1 .* 0\.[0-9]*$" "$WORK/out"; then pass "mask Jaccard reported"; else fail "mask Jaccard missing"; fi
  err "interference: one adapter" "expects at least two adapters" "" -- "$LORI" interference "$A/nlu"
  err "interference: corrupt adapter" "truncated\|runs past\|cover" "" -- "$LORI" interference "$A/nlu" "$WORK/corrupt"
  err "interference: weights count" "--weights has 3 values for 2 adapters" "" -- "$LORI" interference "$A/nlu" "$A/math" --weights 1 1 1
  err "interference: unwritable csv" "cannot create" "" -- "$LORI" interference "$A/nlu" "$A/math" --csv "$WORK/no/dir/x.csv"
  ;;
apply)
  ok "make base F32" -- "$HELPER" make-base "$WORK/base.safetensors" F32
  ok "make base BF16" -- "$HELPER" make-base "$WORK/base16.safetensors" BF16
  ok "apply one adapter" -- "$LORI" apply "$WORK/base.safetensors" "$A/nlu" -o "$WORK/out1.safetensors"
  ok "apply result = W + s B A (double reference)" -- "$HELPER" check-apply "$WORK/base.safetensors" "$WORK/out1.safetensors" 0 1 "$A/nlu"
  ok "apply two adapters with weights" -- "$LORI" apply "$WORK/base.safetensors" "$A/nlu" "$A/math" --weights 0.5 -1.25 -o "$WORK/out2.safetensors"
  ok "weighted apply matches reference" -- "$HELPER" check-apply "$WORK/base.safetensors" "$WORK/out2.safetensors" 0 0.5 "$A/nlu" -1.25 "$A/math"
  ok "apply on a BF16 base" -- "$LORI" apply "$WORK/base16.safetensors" "$A/code" -o "$WORK/out3.safetensors"
  ok "BF16 apply matches reference to one rounding" -- "$HELPER" check-apply "$WORK/base16.safetensors" "$WORK/out3.safetensors" 0 1 "$A/code"
  err "apply: weights count" "--weights has 1 values for 2 adapters" "$WORK/bad1" -- "$LORI" apply "$WORK/base.safetensors" "$A/nlu" "$A/math" --weights 1 -o "$WORK/bad1"
  err "apply: bad weight" "bad number 'x'" "$WORK/bad2" -- "$LORI" apply "$WORK/base.safetensors" "$A/nlu" --weights x -o "$WORK/bad2"
  err "apply: base lacks module" "no tensor 'model.layers.0.mlp.down_proj.weight'" "$WORK/bad3" -- "$LORI" apply "$A/nlu/adapter_model.safetensors" "$A/nlu" -o "$WORK/bad3"
  err "apply: corrupt base" "truncated\|runs past\|cover" "$WORK/bad4" -- "$LORI" apply "$WORK/corrupt/adapter_model.safetensors" "$A/nlu" -o "$WORK/bad4"
  err "apply: missing -o" "missing required option --output" "" -- "$LORI" apply "$WORK/base.safetensors" "$A/nlu"
  err "apply: unwritable output" "cannot create" "" -- "$LORI" apply "$WORK/base.safetensors" "$A/nlu" -o "$WORK/no/such/dir/x.safetensors"
  ;;
pack)
  "$LORI" calibrate "$A/code" --sparsity 0.9 -o "$WORK/m.safetensors" >/dev/null
  "$LORI" sparsify "$A/code" --mask "$WORK/m.safetensors" -o "$WORK/s" >/dev/null
  ok "pack a sparsified adapter" -- "$LORI" pack "$WORK/s" -o "$WORK/s.lori"
  has "pack reports the size ratio" "x smaller"
  ok "pack a dense adapter" -- "$LORI" pack "$A/code" -o "$WORK/d.lori"
  ok "packed file inspects like the folder" -- "$LORI" inspect "$WORK/s.lori"
  has "packed B sparsity" "B sparsity 0.900"
  ok "make an adapter whose A is lori's projection" -- "$HELPER" make-lori-adapter "$WORK/gen" 42
  ok "pack --a-seed" -- "$LORI" pack "$WORK/gen" --a-seed 42 -o "$WORK/gen.lori"
  has "every A regenerated from the seed" "A regenerated from its seed for 14 modules, stored for 0"
  ok "unpack of a seed-packed file" -- "$LORI" unpack "$WORK/gen.lori" -o "$WORK/gen_u"
  cmp -s "$WORK/gen/adapter_model.safetensors" "$WORK/gen_u/adapter_model.safetensors" && pass "seed-packed round trip byte-identical" || fail "seed-packed round trip differs"
  ok "pack with the wrong seed stores A" -- "$LORI" pack "$WORK/gen" --a-seed 43 -o "$WORK/gen43.lori"
  has "wrong seed: A stored" "for 0 modules, stored for 14"
  [ "$(stat -c %s "$WORK/gen.lori")" -lt "$(( $(stat -c %s "$WORK/gen43.lori") / 3 ))" ] && pass "seed packing is > 3x smaller than dense A here" || fail "seed packing size"
  err "pack: bad --a-seed" "bad integer 'x'" "$WORK/bad3" -- "$LORI" pack "$WORK/gen" --a-seed x -o "$WORK/bad3"
  err "pack: bad distribution" "--a-distribution must be" "$WORK/bad4" -- "$LORI" pack "$WORK/gen" --a-seed 1 --a-distribution cauchy -o "$WORK/bad4"
  # gaussian_v2: packed as a seed, restored bit for bit; the same A is not the 256-layer gaussian's.
  ok "make an adapter whose A is lori's gaussian_v2 projection" -- "$HELPER" make-lori-adapter "$WORK/genv2" 42 gaussian_v2
  ok "pack --a-distribution gaussian_v2" -- "$LORI" pack "$WORK/genv2" --a-seed 42 --a-distribution gaussian_v2 -o "$WORK/genv2.lori"
  ok "unpack of a gaussian_v2 seed-packed file" -- "$LORI" unpack "$WORK/genv2.lori" -o "$WORK/genv2_u"
  cmp -s "$WORK/genv2/adapter_model.safetensors" "$WORK/genv2_u/adapter_model.safetensors" && pass "gaussian_v2 seed-packed round trip byte-identical" || fail "gaussian_v2 seed-packed round trip differs"
  ok "pack a gaussian_v2 A as gaussian stores A" -- "$LORI" pack "$WORK/genv2" --a-seed 42 --a-distribution gaussian -o "$WORK/genv2g.lori"
  [ "$(stat -c %s "$WORK/genv2.lori")" -lt "$(( $(stat -c %s "$WORK/genv2g.lori") / 3 ))" ] && pass "gaussian_v2 seed packing is > 3x smaller than dense A (the formats differ)" || fail "gaussian_v2 seed packing size"
  err "pack: missing -o" "missing required option --output" "" -- "$LORI" pack "$A/code"
  err "pack: missing folder" "no such adapter" "$WORK/bad1" -- "$LORI" pack "$WORK/nope" -o "$WORK/bad1"
  err "pack: rank mismatch" "gives r = 4" "$WORK/bad2" -- "$LORI" pack "$WORK/rank4" -o "$WORK/bad2"
  ;;
unpack)
  "$LORI" calibrate "$A/math" --sparsity 0.9 -o "$WORK/m.safetensors" >/dev/null
  "$LORI" sparsify "$A/math" --mask "$WORK/m.safetensors" -o "$WORK/s" >/dev/null
  "$LORI" pack "$WORK/s" -o "$WORK/s.lori" >/dev/null
  ok "unpack" -- "$LORI" unpack "$WORK/s.lori" -o "$WORK/u"
  cmp -s "$WORK/s/adapter_model.safetensors" "$WORK/u/adapter_model.safetensors" && pass "unpack(pack(X)) tensors byte-identical" || fail "unpack(pack(X)) differs"
  cmp -s "$WORK/s/adapter_config.json" "$WORK/u/adapter_config.json" && pass "unpack(pack(X)) config identical" || fail "config differs"
  "$LORI" pack "$A/math" -o "$WORK/d.lori" >/dev/null && "$LORI" unpack "$WORK/d.lori" -o "$WORK/du" >/dev/null
  cmp -s "$A/math/adapter_model.safetensors" "$WORK/du/adapter_model.safetensors" && pass "dense fixture round trip byte-identical to PEFT's file" || fail "dense round trip differs"
  err "unpack: not a compact file" "not a compact LoRI file" "$WORK/bad1" -- "$LORI" unpack "$A/math/adapter_model.safetensors" -o "$WORK/bad1"
  err "unpack: missing file" "no such file" "$WORK/bad2" -- "$LORI" unpack "$WORK/none.lori" -o "$WORK/bad2"
  head -c 500 "$WORK/s.lori" >"$WORK/trunc.lori"
  err "unpack: truncated file" "runs past the end\|cover" "$WORK/bad3" -- "$LORI" unpack "$WORK/trunc.lori" -o "$WORK/bad3"
  echo "not a dir" >"$WORK/afile"
  err "unpack: output is a file" "exists and is not a directory" "" -- "$LORI" unpack "$WORK/s.lori" -o "$WORK/afile"
  ;;
*) echo "unknown group $sub"; exit 1 ;;
esac
echo "cli $sub: $fails failure(s)"
[ "$fails" -eq 0 ]
