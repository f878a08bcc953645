"""Reads the GGUF files qforge wrote with the `gguf` package (llama.cpp's gguf-py) and checks
that its reader sees the same metadata, types, shapes and alignment, that its dequantize gives
exactly the values qforge's decoders give, and that its own Q4_0/Q4_1/Q8_0 encoders produce the
same bytes as qforge's from the same floats.
Usage: check_gguf.py SAMPLES_DIR"""
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGMLQuantizationType
from gguf.quants import dequantize, quantize
from safetensors.numpy import load_file

failures = []


def check(ok, what):
    if not ok:
        failures.append(what)
        print("FAIL:", what)


def field(reader, key):
    f = reader.fields.get(key)
    if f is None:
        failures.append(f"missing key {key}")
        return None
    return f.contents()


def check_file(path, expected, alignment):
    print(f"reading {path}")
    reader = GGUFReader(path)
    check(field(reader, "general.architecture") == "qforge", "general.architecture")
    check(field(reader, "general.quantization_version") == 2, "general.quantization_version == 2")
    check(field(reader, "general.file_type") == 2, "general.file_type == 2")
    check(field(reader, "qforge.test.u32") == 4000000000, "u32 value")
    check(field(reader, "qforge.test.i32") == -12345, "i32 value")
    check(field(reader, "qforge.test.f32") == 0.25, "f32 value")
    check(field(reader, "qforge.test.bool") is True, "bool value")
    check(field(reader, "qforge.test.strings") == ["alpha", "beta", ""], "string array")
    check(reader.alignment == alignment, f"alignment {reader.alignment} == {alignment}")
    names = [t.name for t in reader.tensors]
    want_names = [k[len("src/"):] for k in expected if k.startswith("src/")]
    check(sorted(names) == sorted(want_names), f"tensor names {names}")
    types = {
        "blk.0.attn_q.weight": GGMLQuantizationType.Q4_0,
        "blk.0.attn_k.weight": GGMLQuantizationType.Q4_1,
        "blk.0.ffn_up.weight": GGMLQuantizationType.Q8_0,
        "blk.0.cube.weight": GGMLQuantizationType.Q8_0,
        "output_norm.weight": GGMLQuantizationType.F32,
        "blk.0.f16.weight": GGMLQuantizationType.F16,
        "blk.0.ffn_down.weight": GGMLQuantizationType.Q4_K,
        "blk.0.attn_v.weight": GGMLQuantizationType.Q6_K,
    }
    for t in reader.tensors:
        src = expected["src/" + t.name]
        ours = expected["gguf/" + t.name]
        check(t.tensor_type == types[t.name], f"{t.name}: type {t.tensor_type.name}")
        # GGUF lists ne[0] (innermost) first: the reverse of the row-major shape.
        check(list(reversed([int(d) for d in t.shape])) == list(src.shape), f"{t.name}: dims {list(t.shape)} vs {src.shape}")
        check(t.data_offset % alignment == 0, f"{t.name}: data offset {t.data_offset} aligned to {alignment}")
        theirs = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(src.shape)
        check(np.array_equal(theirs, ours), f"{t.name}: gguf dequantize equals qforge's decode "
              f"(max diff {np.max(np.abs(theirs - ours)) if theirs.shape == ours.shape else 'shape'})")
        if t.tensor_type in (GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q8_0):
            their_bytes = quantize(src, t.tensor_type).reshape(-1)
            our_bytes = np.asarray(t.data).reshape(-1)
            diff = int(np.count_nonzero(their_bytes != our_bytes)) if their_bytes.shape == our_bytes.shape else -1
            check(diff == 0, f"{t.name}: gguf's {t.tensor_type.name} encoder bytes equal qforge's ({diff} bytes differ)")
    print(f"  {len(reader.tensors)} tensors, {len(reader.fields)} keys checked")


def main():
    d = Path(sys.argv[1])
    expected = load_file(str(d / "expected.safetensors"))
    check_file(str(d / "sample.gguf"), expected, 32)
    check_file(str(d / "sample_align64.gguf"), expected, 64)
    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    print("gguf interop: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
