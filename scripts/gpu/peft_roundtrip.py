"""PEFT 0.21 round trip of the folders the `lori` tool writes (run by scripts/gpu/peft_roundtrip.sh).

Rebuilds the tiny Llama of tests/data/peft_adapters/README.md, then for each case loads adapters with
PeftModel.from_pretrained and compares, on the same input:
  * a fixture as PEFT wrote it vs `lori unpack (lori pack X)`         -> logits and deltas bit-identical
  * PEFT's own forward pass vs `lori apply BASE X` (merged weights)    -> logits close, deltas close
  * `lori sparsify` / `lori merge --method ...` folders loaded by PEFT vs PEFT's add_weighted_adapter
    on the original fixtures                                            -> deltas and logits close
Prints a PASS/FAIL table; exit status 1 if anything failed.

usage: python peft_roundtrip.py --lori BUILD/bin/lori --fixtures tests/data/peft_adapters --work DIR [--device cpu]
"""
import argparse
import copy
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM
import peft
from peft import PeftModel
from peft.tuners.lora import LoraLayer

ap = argparse.ArgumentParser()
ap.add_argument("--lori", required=True)
ap.add_argument("--fixtures", required=True)
ap.add_argument("--work", required=True)
ap.add_argument("--device", default="cpu")
args = ap.parse_args()
os.makedirs(args.work, exist_ok=True)
dev = torch.device(args.device)
W = lambda *p: os.path.join(args.work, *p)
F = lambda n: os.path.join(args.fixtures, n)

rows = []


def record(case, check, diff, tol, ok=None):
    ok = (diff <= tol) if ok is None else ok
    rows.append((case, check, diff, tol, ok))
    print(f"{'PASS' if ok else 'FAIL'}  {case:34s} {check:44s} {diff:11.3e} (tol {tol:.1e})", flush=True)


def lori(*a):
    r = subprocess.run([args.lori, *a], capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stdout, r.stderr)
        raise SystemExit(f"lori {' '.join(a)} failed with {r.returncode}")
    return r.stdout


def base_model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    m = LlamaForCausalLM(cfg)
    return m.to(dev).eval()


BASE = base_model()
BASE_SD = {k: v.detach().clone() for k, v in BASE.state_dict().items()}
save_file({k: v.cpu().contiguous() for k, v in BASE_SD.items()}, W("base.safetensors"), metadata={"format": "pt"})
torch.manual_seed(1234)
IDS = torch.randint(0, 128, (2, 24), device=dev)


def fresh():
    m = copy.deepcopy(BASE)
    m.load_state_dict(BASE_SD)
    return m


@torch.no_grad()
def logits(model):
    return model(input_ids=IDS).logits.float()


def deltas(model, adapter):
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, LoraLayer) and adapter in mod.lora_A:
            key = name[len("base_model.model."):] if name.startswith("base_model.model.") else name
            out[key] = mod.get_delta_weight(adapter).detach().double().cpu()
    return out


def peft_load(folder, name="default"):
    return PeftModel.from_pretrained(fresh(), folder, adapter_name=name).eval()


def max_rel(a, b):
    """max |a - b| / max |b| (0 if both zero)."""
    den = b.abs().max().item()
    return (a - b).abs().max().item() / (den if den > 0 else 1.0)


def cmp_deltas(case, da, db, tol, exact=False):
    if set(da) != set(db):
        record(case, f"same modules ({len(da)} vs {len(db)})", 1.0, 0.0, ok=False)
        return
    worst = max(max_rel(da[k], db[k]) for k in da)
    if exact:
        same = all(torch.equal(da[k], db[k]) for k in da)
        record(case, f"deltas of {len(da)} modules bit-identical", worst, 0.0, ok=same)
    else:
        record(case, f"deltas of {len(da)} modules (max rel diff)", worst, tol)


def applied_logits(folders, weights=None):
    out = W("applied.safetensors")
    a = ["apply", W("base.safetensors"), *folders, "-o", out]
    if weights:
        a += ["--weights", *[str(w) for w in weights]]
    lori(*a)
    m = fresh()
    m.load_state_dict({k: v.to(dev) for k, v in load_file(out).items()}, strict=True)
    return logits(m.eval()), {k: v for k, v in load_file(out).items()}


def applied_deltas(applied_sd, keys):
    return {k: (applied_sd[k + ".weight"].double() - BASE_SD[k + ".weight"].double().cpu()) for k in keys}


base_logits = logits(BASE)
print(f"torch {torch.__version__}, peft {peft.__version__}, device {dev}")

# ---- 1. fixtures: PEFT vs lori apply; pack/unpack bit-identity ---------------------------------------
for name in ["nlu", "math", "code"]:
    pm = peft_load(F(name))
    lp = logits(pm)
    dp = deltas(pm, "default")
    change = (lp - base_logits).abs().max().item()
    record(f"{name}: fixture", "adapter changes the logits (max |diff|)", change, 0.0, ok=change > 0)
    la, asd = applied_logits([F(name)])
    # lori apply rounds W + s B A (double) once to float32; PEFT adds s (x A^T) B^T in float32: both
    # ~1e-7 relative, so 1e-5 of the largest delta / 1e-4 of the largest logit are wide margins
    # (a wrong key, scaling or transpose shows up as O(1)).
    record(f"{name}: lori apply vs PEFT", "logits (max rel diff)", max_rel(la, lp), 1e-4)
    cmp_deltas(f"{name}: lori apply vs PEFT", applied_deltas(asd, dp.keys()), dp, 1e-5)
    lori("pack", F(name), "-o", W(f"{name}.lori"))
    lori("unpack", W(f"{name}.lori"), "-o", W(f"{name}_unpacked"))
    pu = peft_load(W(f"{name}_unpacked"))
    record(f"{name}: unpack(pack(X))", "logits bit-identical", (logits(pu) - lp).abs().max().item(), 0.0,
           ok=torch.equal(logits(pu), lp))
    cmp_deltas(f"{name}: unpack(pack(X))", deltas(pu, "default"), dp, 0.0, exact=True)

# ---- 2. sparsify: PEFT loads the LoRI-S folder; lori apply agrees -----------------------------------
lori("calibrate", F("math"), "--sparsity", "0.9", "-o", W("mask.safetensors"))
lori("sparsify", F("math"), "--mask", W("mask.safetensors"), "-o", W("math_s"))
ps = peft_load(W("math_s"))
zeros = sum((m.lora_B["default"].weight == 0).sum().item() for _, m in ps.named_modules() if isinstance(m, LoraLayer))
total = sum(m.lora_B["default"].weight.numel() for _, m in ps.named_modules() if isinstance(m, LoraLayer))
record("math: sparsify 0.9", "PEFT sees B 90% zero (|zeros/total - 0.9|)", abs(zeros / total - 0.9), 0.002)
la, asd = applied_logits([W("math_s")])
record("math: sparsify 0.9", "lori apply vs PEFT logits", max_rel(la, logits(ps)), 1e-4)
lori("pack", W("math_s"), "-o", W("math_s.lori"))
lori("unpack", W("math_s.lori"), "-o", W("math_s_unpacked"))
record("math: unpack(pack(sparse))", "logits bit-identical", 0.0, 0.0,
       ok=torch.equal(logits(peft_load(W("math_s_unpacked"))), logits(ps)))

# ---- 3. merges: lori merge folder vs PEFT add_weighted_adapter --------------------------------------
def peft_merged(names, weights, combo, **kw):
    m = PeftModel.from_pretrained(fresh(), F(names[0]), adapter_name=names[0])
    for n in names[1:]:
        m.load_adapter(F(n), adapter_name=n)
    m.add_weighted_adapter(adapters=names, weights=weights, adapter_name="merged", combination_type=combo, **kw)
    m.set_adapter("merged")
    return m.eval()


cases = [
    ("cat", ["nlu", "math", "code"], [1.0, 0.5, -2.0], {}, 1e-5),
    ("linear", ["nlu", "math"], [0.6, 0.4], {}, 1e-5),
    ("svd", ["nlu", "math"], [1.0, 1.0], {"svd_rank": 16}, 1e-4),
    ("svd", ["nlu", "math", "code"], [1.0, 0.5, 0.5], {"svd_rank": 8}, 1e-4),
    ("ties", ["nlu", "math", "code"], [0.4, 0.3, 0.3], {"density": 0.5}, 1e-5),
    ("magnitude_prune", ["nlu", "math"], [0.5, 0.5], {"density": 0.3}, 1e-5),
    ("ties_svd", ["nlu", "math"], [1.0, 1.0], {"density": 0.5, "svd_rank": 8}, 1e-4),
    ("magnitude_prune_svd", ["nlu", "math"], [1.0, 1.0], {"density": 0.5, "svd_rank": 8}, 1e-4),
]
flag = {"density": "--density", "svd_rank": "--svd-rank", "majority_sign_method": "--majority-sign"}
for combo, names, weights, kw, tol in cases:
    case = f"merge {combo} {'+'.join(names)}"
    out = W(f"merged_{combo}_{len(names)}")
    a = ["merge", *[F(n) for n in names], "--method", combo, "--weights", *[str(w) for w in weights], "-o", out]
    for k, v in kw.items():
        a += [flag[k], str(v)]
    lori(*a)
    pm = peft_merged(names, weights, combo, **kw)
    lm = peft_load(out)
    cmp_deltas(case, deltas(lm, "default"), deltas(pm, "merged"), tol)
    record(case, "logits: PEFT(lori folder) vs PEFT merge", max_rel(logits(lm), logits(pm)), tol)
    la, _ = applied_logits([out])
    record(case, "logits: lori apply vs PEFT(lori folder)", max_rel(la, logits(lm)), 1e-4)

# DARE draws are random in both (torch vs lori's generator): only check that PEFT loads the folder and
# that the delta's size is in the range of the linear merge's.
for combo in ["dare_linear", "dare_ties"]:
    out = W(f"merged_{combo}")
    lori("merge", F("nlu"), F("math"), "--method", combo, "--weights", "0.5", "0.5", "--density", "0.5", "--seed", "3", "-o", out)
    lm = peft_load(out)
    d = deltas(lm, "default")
    record(f"merge {combo} nlu+math", "PEFT loads it; delta finite and nonzero", 0.0, 0.0,
           ok=all(torch.isfinite(v).all() for v in d.values()) and any(v.abs().max() > 0 for v in d.values()))

fails = [r for r in rows if not r[4]]
print()
print(f"{'result':6s} {'case':34s} {'check':44s} {'diff':>11s}")
for case, check, diff, tol, ok in rows:
    print(f"{'PASS' if ok else 'FAIL':6s} {case:34s} {check:44s} {diff:11.3e}")
print(f"\npeft round trip: {len(rows) - len(fails)} passed, {len(fails)} failed")
sys.exit(1 if fails else 0)
