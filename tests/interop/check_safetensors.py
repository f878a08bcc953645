"""Reads the safetensors file qforge wrote with the `safetensors` package (safetensors.numpy),
decodes qforge's quantized layout and bitsandbytes' 4-bit layout from their documented rules
(docs/formats.md) in numpy, and checks that every value equals what qforge decodes.
Usage: check_safetensors.py SAMPLES_DIR"""
import json
import sys
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file

failures = []


def check(ok, what):
    if not ok:
        failures.append(what)
        print("FAIL:", what)


def same(a, b, what):
    ok = a.shape == b.shape and np.array_equal(a, b)
    check(ok, f"{what}: values equal" + ("" if ok or a.shape != b.shape else f" (max diff {np.max(np.abs(a - b))})")
          + ("" if a.shape == b.shape else f" (shapes {a.shape} vs {b.shape})"))


def unpack_nibbles(packed, count, high_first):
    hi, lo = packed >> 4, packed & 0xF
    pairs = np.stack([hi, lo] if high_first else [lo, hi], axis=-1).reshape(-1)
    return pairs[:count]


def qforge_dequantize(tensors, meta, name):
    m = json.loads(meta[name + ".qforge"])
    qtype, shape = m["qtype"], tuple(m["shape"])
    bits = int(qtype.lstrip("uint"))
    signed = not qtype.startswith("uint")
    qv = tensors[name + ".qvalue"]
    if bits == 4:  # two codes a byte, element 2k in the low nibble
        codes = unpack_nibbles(qv.reshape(-1), int(np.prod(shape)), high_first=False).astype(np.int64)
        if signed:
            codes = np.where(codes >= 8, codes - 16, codes)
    else:
        codes = qv.astype(np.int64).reshape(-1)
    codes = codes.reshape(shape).astype(np.float64)
    scale = tensors[name + ".scale"].astype(np.float64)
    zp = tensors.get(name + ".zero_point")
    zp = np.zeros_like(scale) if zp is None else zp.astype(np.float64)
    # Scales are per channel or per tile: repeat each one over the elements it covers.
    for axis, n in enumerate(shape):
        scale = np.repeat(scale, n // scale.shape[axis], axis=axis)
        zp = np.repeat(zp, n // zp.shape[axis], axis=axis)
    return ((codes - zp) * scale).astype(np.float32)


def bnb4_dequantize(tensors, name):
    key = [k for k in tensors if k.startswith(name + ".quant_state.bitsandbytes__")]
    check(len(key) == 1, f"{name}: one quant_state entry")
    state = json.loads(bytes(tensors[key[0]]).decode("utf-8"))
    check(key[0].endswith("__" + state["quant_type"]), f"{name}: quant_type matches its key")
    n = int(np.prod(state["shape"]))
    check(tensors[name].shape == ((n + 1) // 2, 1), f"{name}: packed shape {tensors[name].shape}")
    codes = unpack_nibbles(tensors[name].reshape(-1), n, high_first=True)
    absmax = tensors[name + ".absmax"]
    if "nested_blocksize" in state:
        check(absmax.dtype == np.uint8, f"{name}: nested absmax codes are U8")
        nested = tensors[name + ".nested_absmax"]
        nmap = tensors[name + ".nested_quant_map"]
        check(nmap.shape == (256,), f"{name}: nested_quant_map has 256 values")
        idx = np.arange(absmax.size) // state["nested_blocksize"]
        absmax = (nmap[absmax] * nested[idx]).astype(np.float32) + np.float32(state["nested_offset"])
    qmap = tensors[name + ".quant_map"]
    block = np.arange(n) // state["blocksize"]
    return (qmap[codes] * absmax[block]).astype(np.float32).reshape(state["shape"])


def main():
    d = Path(sys.argv[1])
    path = str(d / "sample.safetensors")
    print(f"reading {path}")
    tensors = load_file(path)
    with safe_open(path, framework="np") as f:
        meta = f.metadata()
    expected = load_file(str(d / "expected.safetensors"))
    check(meta.get("format") == "pt" and meta.get("qforge.interop") == "sample", "__metadata__ strings")
    check(meta.get("qforge.format") == "qforge.qarray/1", "qforge.format metadata")
    same(tensors["plain.f32"], expected["st/plain.f32"], "plain.f32")
    same(tensors["plain.f16"].astype(np.float32), expected["st/plain.f16"], "plain.f16")
    i = np.arange(10)
    same(tensors["plain.i8"], (i * 25 - 128).astype(np.int8).reshape(2, 5), "plain.i8")
    same(tensors["plain.u8"], (i * 28).astype(np.uint8), "plain.u8")
    same(tensors["plain.i32"], (-100000 * i + 7).astype(np.int32).reshape(5, 2), "plain.i32")
    same(tensors["plain.i64"], (-(1 << 40) + i).astype(np.int64), "plain.i64")
    check(tensors["plain.empty"].shape == (0, 3), "zero-size tensor")
    for name in ["q.int8", "q.int4", "q.uint8", "q.uint4"]:
        same(qforge_dequantize(tensors, meta, name), expected["st/" + name], name)
    for name in ["bnb.nf4.weight", "bnb.fp4.weight"]:
        same(bnb4_dequantize(tensors, name), expected["st/" + name], name)
    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    print(f"safetensors interop: all checks passed ({len(tensors)} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
