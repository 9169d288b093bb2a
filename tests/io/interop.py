"""Interop of lori's safetensors reader/writer with the official `safetensors` package.

usage: python interop.py INTEROP_TOOL WORKDIR
 1. lori writes one tensor of every dtype; safetensors reads it: numpy-capable dtypes through
    safetensors.numpy.load_file (values compared bit-exactly), all dtypes (BF16, F8_*, C64 included)
    through safetensors.deserialize (raw bytes), and the package, given the same tensors, must
    produce the very same file bytes.
 2. safetensors writes (numpy.save_file for numpy dtypes, serialize() with raw specs for the rest);
    lori reads those files and checks every byte.
"""
import json, os, subprocess, sys
import numpy as np
import safetensors
import safetensors.numpy as stnp
from safetensors import TensorSpec

tool, work = sys.argv[1], sys.argv[2]
os.makedirs(work, exist_ok=True)
# lori dtype order (enum order) and sizes; torch-style names the TensorSpec API takes.
DTYPES = [("BOOL", 1, "bool"), ("U8", 1, "uint8"), ("I8", 1, "int8"), ("F8_E5M2", 1, "float8_e5m2"),
          ("F8_E4M3", 1, "float8_e4m3fn"), ("F8_E8M0", 1, "float8_e8m0fnu"), ("I16", 2, "int16"),
          ("U16", 2, "uint16"), ("F16", 2, "float16"), ("BF16", 2, "bfloat16"), ("I32", 4, "int32"),
          ("U32", 4, "uint32"), ("F32", 4, "float32"), ("C64", 8, "complex64"), ("F64", 8, "float64"),
          ("I64", 8, "int64"), ("U64", 8, "uint64")]
NUMPY = {"BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "I16": np.int16, "U16": np.uint16, "F16": np.float16,
         "I32": np.int32, "U32": np.uint32, "F32": np.float32, "C64": np.complex64, "F64": np.float64,
         "I64": np.int64, "U64": np.uint64}

def pattern(dt, n):
    b = bytes(((k * 37 + dt * 11 + 5) & 0xFF) for k in range(n))
    return bytes(x & 1 for x in b) if dt == 0 else b

fails = []
def check(cond, what):
    print(("PASS " if cond else "FAIL ") + what)
    if not cond:
        fails.append(what)

# ---- 1. lori writes, safetensors reads ---------------------------------------------------------
lori_file = os.path.join(work, "from_lori.safetensors")
subprocess.run([tool, "write", lori_file], check=True)
data = open(lori_file, "rb").read()
raw = dict(safetensors.deserialize(data))
for i, (name, size, _) in enumerate(DTYPES):
    t = raw["t_" + name]
    check(t["dtype"] == name and list(t["shape"]) == [3, 5] and bytes(t["data"]) == pattern(i, 15 * size),
          f"safetensors.deserialize reads lori's {name} tensor bit-exactly")
    e = raw["e_" + name]
    check(list(e["shape"]) == [2, 0] and len(e["data"]) == 0, f"empty {name} tensor")
# safetensors.numpy.load_file refuses a file holding dtypes numpy lacks (BF16, F8), so read the
# numpy-capable tensors through the same numpy backend one by one.
with safetensors.safe_open(lori_file, framework="numpy") as f:
    check(f.metadata() == {"format": "lori"}, "metadata read back")
    for i, (name, size, _) in enumerate(DTYPES):
        if name not in NUMPY:
            continue
        a = f.get_tensor("t_" + name)
        want = np.frombuffer(pattern(i, 15 * size), dtype=NUMPY[name]).reshape(3, 5)
        check(a.dtype == want.dtype and a.shape == (3, 5) and a.tobytes() == want.tobytes(),
              f"safetensors numpy backend reads lori's {name} tensor bit-exactly")
# Byte-identical output: the package serialises the same tensors to the same file.
keep, specs = [], {}
for i, (name, size, tname) in enumerate(DTYPES):
    for prefix, shape in (("t_", [3, 5]), ("e_", [2, 0])):
        buf = np.frombuffer(pattern(i, 15 * size) if prefix == "t_" else b"\0", dtype=np.uint8).copy()
        keep.append(buf)
        n = 15 * size if prefix == "t_" else 0
        specs[prefix + name] = TensorSpec(dtype=tname, shape=shape, data_ptr=buf.ctypes.data, data_len=n)
ref = bytes(safetensors.serialize(specs, metadata={"format": "lori"}))
check(ref == data, "lori's file is byte-identical to the one the safetensors package writes")

# ---- 2. safetensors writes, lori reads -----------------------------------------------------------
py_numpy = os.path.join(work, "from_numpy.safetensors")
arrays = {}
for i, (name, size, _) in enumerate(DTYPES):
    if name in NUMPY:
        arrays["t_" + name] = np.frombuffer(pattern(i, 15 * size), dtype=NUMPY[name]).reshape(3, 5).copy()
stnp.save_file(arrays, py_numpy, metadata={"writer": "numpy"})
r = subprocess.run([tool, "check", py_numpy], capture_output=True, text=True)
print(r.stdout.strip(), r.stderr.strip())
check(r.returncode == 0, "lori reads safetensors.numpy.save_file output (all numpy dtypes) bit-exactly")
py_raw = os.path.join(work, "from_serialize.safetensors")
safetensors.serialize_file(specs, py_raw)
r = subprocess.run([tool, "check", py_raw], capture_output=True, text=True)
print(r.stdout.strip(), r.stderr.strip())
check(r.returncode == 0 and "17 tensors" in r.stdout, "lori reads safetensors.serialize_file output (all 17 dtypes incl. BF16, F8) bit-exactly")

print("interop:", "FAILED " + str(len(fails)) if fails else "all passed")
sys.exit(1 if fails else 0)
