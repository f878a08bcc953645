"""Checks qforge's quantize + dequantize against Qwix itself (PyPI qwix, CPU JAX) on the cases that
qforge_qwix_case_writer wrote. For every case:
  - the scale equals Qwix's bit for bit (with 'rms' calibration within a few ulps: the sums of
    squares are accumulated differently), including Qwix's float32 arithmetic as XLA runs it on the
    CPU, where x / s is x · fl(1/s);
  - the zero point equals Qwix's;
  - qforge's dequantized values equal, bit for bit, what Qwix's own quantize_with_scale_zero_point
    and dequantize give with qforge's scale and zero point: every other step is Qwix's arithmetic;
  - so the codes equal Qwix's own quantize (differences are counted: only 'rms' may have any, from
    its scale, and then by one grid step).
Usage: check_qwix.py DIR
"""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from qwix._src.core import numerics
from qwix._src.core import qarray as qa
from safetensors.numpy import load_file
from safetensors import safe_open

jax.config.update("jax_platforms", "cpu")

QTYPES = {"int8": jnp.int8, "int4": jnp.int4, "fp8_e4m3": jnp.float8_e4m3fn, "nf4": "nf4"}


def qwix_how(case):
    return qa.HowToQuantize(
        qtype=QTYPES[case["qtype"]],
        channelwise_axes=case["channelwise_axes"],
        tiled_axes={int(k): v for k, v in case["tiled_axes"].items()},
        calibration_method=case["calibration_method"],
    )


def scale_problems(case, theirs, our_scale):
    """qforge's scale must be Qwix's bit for bit ('rms' within a few ulps: Qwix sums squares in
    float32 in XLA's order, qforge in double)."""
    their_scale = np.asarray(theirs.scale, dtype=np.float32)
    if our_scale.shape != their_scale.shape:
        # Qwix makes 'fixed' scales per tensor; qforge keeps the layout's shape with equal cells.
        if not (their_scale.size == 1 and np.all(our_scale == our_scale.flat[0])):
            return [f"scale shape {our_scale.shape}, Qwix {their_scale.shape}"]
        their_scale = np.broadcast_to(their_scale, our_scale.shape)
    ulps = np.abs(our_scale.view(np.int32).astype(np.int64) - their_scale.view(np.int32))
    ok = ulps <= (4 if case["calibration_method"].startswith("rms") else 0)
    if ok.all():
        return []
    i = tuple(np.argwhere(~ok)[0])
    return [f"scale{i} {our_scale[i]!r}, Qwix {their_scale[i]!r} ({ulps[i]} ulps apart)"]


def check_case(cid, case, t):
    x = jnp.asarray(t[f"{cid}.x"])
    how = qwix_how(case)
    theirs = qa.quantize(x, how)
    our_scale = t[f"{cid}.scale"]
    symmetric = theirs.zero_point is None
    problems = scale_problems(case, theirs, our_scale)
    our_zp = t.get(f"{cid}.zero_point")
    if (our_zp is None) != symmetric:
        problems.append(f"zero point present: ours {our_zp is not None}, Qwix {not symmetric}")
    elif our_zp is not None and not np.array_equal(
            our_zp, np.broadcast_to(np.asarray(theirs.zero_point, dtype=np.float32), our_zp.shape)):
        problems.append("zero points differ")
    if problems:
        return problems, 0
    zp = None if our_zp is None else jnp.asarray(our_zp).astype(theirs.zero_point.dtype)
    replay = qa.quantize_with_scale_zero_point(x, how.qtype, jnp.asarray(our_scale), zp)
    want = np.asarray(qa.dequantize(replay), dtype=np.float32)
    ours = t[f"{cid}.dq"]
    if not np.array_equal(want.view(np.uint32), ours.view(np.uint32)):
        i = tuple(np.argwhere(want.view(np.uint32) != ours.view(np.uint32))[0])
        problems.append(f"with our scale Qwix gives {want[i]!r} at {i}, qforge {ours[i]!r} (x = {t[f'{cid}.x'][i]!r})")
        return problems, 0
    # Codes (storage values) that differ from Qwix's own quantize: each by one grid step at most.
    their_q = np.asarray(numerics.convert_from(theirs.qvalue, theirs.qtype), dtype=np.float32)
    our_q = np.asarray(numerics.convert_from(replay.qvalue, replay.qtype), dtype=np.float32)
    differ = their_q != our_q
    if differ.any() and not case["calibration_method"].startswith("rms"):
        i = tuple(np.argwhere(differ)[0])
        problems.append(f"code at {i}: Qwix {their_q[i]!r}, qforge {our_q[i]!r} with the same scale")
    elif case["qtype"] in ("int8", "int4") and differ.any() and np.abs(their_q - our_q)[differ].max() != 1:
        problems.append(f"codes differ by up to {np.abs(their_q - our_q)[differ].max()} steps (want 1)")
    return problems, int(differ.sum())


def main():
    d = sys.argv[1]
    path = f"{d}/cases.safetensors"
    t = load_file(path)
    with safe_open(path, "np") as f:
        meta = f.metadata()
    n = int(meta["cases"])
    failures = 0
    differing_cases = 0
    for cid in range(n):
        case = json.loads(meta[str(cid)])
        problems, differ = check_case(cid, case, t)
        label = (f"{case['qtype']} {case['calibration_method']} tiled {case['tiled_axes'] or '-'} "
                 f"{case['distribution']} (seed {case['seed']})")
        if problems:
            failures += 1
            print(f"FAIL case {cid}: {label}: " + "; ".join(problems))
        elif differ:
            differing_cases += 1
            print(f"case {cid}: {label}: {differ} of {t[f'{cid}.x'].size} values differ from Qwix's own quantize, "
                  "all from rms's scale")
    print(f"qwix: {n} cases, {failures} failed, {differing_cases} differ from Qwix only through an rms scale")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
