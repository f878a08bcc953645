#!/usr/bin/env python3
"""GPTQ on one layer the way a PyTorch user runs it: the peer bench/algorithms_bench.cpp times
qforge's GPTQ against.

Written from the paper (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers", Algorithm 1 and section 4) and the published reference's
options: float32 throughout, dead columns zeroed, relative damping of the Hessian's mean
diagonal, the upper Cholesky factor of H^-1, columns quantized one at a time inside lazy batches
of --block-size columns whose update to the remaining columns is one matrix product, act-order
(columns by decreasing Hessian diagonal) and groups whose min-max parameters come either from
the original weight (--static-groups) or from the weight as updated so far when a group's first
column comes up (the reference computes them before the current batch's own pending updates).

Reads W (float32 [rows, cols]) and H ([cols, cols], any float dtype) from safetensors files,
writes the signed codes (q - 2^(bits-1), int8, original column order, as `qforge layer`'s
`qvalue`) and prints one JSON line: seconds (the algorithm alone, after one untimed call, as the
C++ benchmark does), first_call_seconds, loss, torch version and threads.

Usage: gptq_torch.py --weight W.safetensors[:NAME] --hessian H.safetensors[:NAME] --codes OUT
       [--bits 4] [--group-size 128] [--sym] [--act-order] [--static-groups] [--block-size 128]
       [--damp 0.01] [--threads N]
"""
import argparse
import json
import sys
import time

try:
    import torch
except ImportError as e:  # the benchmark reports this line as its reason to skip
    print(f"gptq_torch: torch is not installed ({e}); run scripts/torch-env.sh", file=sys.stderr)
    sys.exit(77)
import numpy as np
from safetensors.numpy import load_file, save_file


def load_matrix(spec):
    path, _, name = spec.partition(":")
    tensors = load_file(path)
    if not name:
        if len(tensors) != 1:
            raise SystemExit(f"gptq_torch: {path} holds {len(tensors)} tensors; name one as {path}:NAME")
        name = next(iter(tensors))
    if name not in tensors:
        raise SystemExit(f"gptq_torch: {path} has no tensor '{name}'")
    return torch.from_numpy(np.ascontiguousarray(tensors[name]))


def minmax_params(x, bits, sym):
    """Per-row scale and zero point of x [rows, n] on the unsigned grid 0..2^bits-1."""
    maxq = 2**bits - 1
    lo = torch.clamp(x.min(dim=1).values, max=0.0)
    hi = torch.clamp(x.max(dim=1).values, min=0.0)
    if sym:
        hi = torch.maximum(-lo, hi)
        lo = torch.where(lo < 0, -hi, lo)  # a group without negatives keeps lo = 0, as the reference
    empty = (lo == 0) & (hi == 0)
    lo = torch.where(empty, torch.full_like(lo, -1.0), lo)
    hi = torch.where(empty, torch.full_like(hi, 1.0), hi)
    scale = (hi - lo) / maxq
    zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-lo / scale)
    return scale, zero


def quantize_column(w, scale, zero, maxq):
    q = torch.clamp(torch.round(w / scale) + zero, 0, maxq)
    return q, scale * (q - zero)


def gptq(W, H, bits=4, group_size=128, sym=False, act_order=False, static_groups=False, block_size=128, damp=0.01):
    """Returns (unsigned codes [rows, cols] in original column order, loss)."""
    W = W.clone().float()
    H = H.clone().float()
    rows, cols = W.shape
    maxq = 2**bits - 1
    group = group_size if group_size > 0 else cols

    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0

    static = None
    if static_groups:
        static = [minmax_params(W[:, g:g + group], bits, sym) for g in range(0, cols, group)]
    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True, stable=True)
        W = W[:, perm]
        H = H[perm][:, perm]

    idx = torch.arange(cols)
    H[idx, idx] += damp * torch.mean(torch.diag(H))
    # U: the upper Cholesky factor of H^-1. Row j of U holds the update the error of column j
    # spreads over the columns after it, scaled by U[j, j].
    L = torch.linalg.cholesky(H)
    U = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)

    Q = torch.zeros_like(W)
    loss = torch.zeros((), dtype=torch.float64)
    scale = zero = None
    for b0 in range(0, cols, block_size):
        b1 = min(b0 + block_size, cols)
        Wb = W[:, b0:b1].clone()
        Eb = torch.zeros_like(Wb)
        Ub = U[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = b0 + i
            if static is not None:
                scale, zero = static[(int(perm[col]) if perm is not None else col) // group]
            elif col % group == 0:  # from W as updated by earlier batches, not this batch's pending updates
                scale, zero = minmax_params(W[:, col:col + group], bits, sym)
            w = Wb[:, i]
            q, wq = quantize_column(w, scale, zero, maxq)
            Q[:, col] = q
            err = (w - wq) / Ub[i, i]
            loss += (err.double() ** 2).sum() / 2
            Wb[:, i:] -= torch.outer(err, Ub[i, i:])
            Eb[:, i] = err
        W[:, b1:] -= Eb @ U[b0:b1, b1:]  # the lazy batch update: one product per batch

    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    return Q, float(loss)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weight", required=True)
    ap.add_argument("--hessian", required=True)
    ap.add_argument("--codes", required=True, help="output safetensors with 'qvalue' int8 [rows, cols]")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--sym", action="store_true")
    ap.add_argument("--act-order", action="store_true")
    ap.add_argument("--static-groups", action="store_true")
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--damp", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    W, H = load_matrix(a.weight), load_matrix(a.hessian)
    if W.dim() != 2 or H.shape != (W.shape[1], W.shape[1]):
        raise SystemExit(f"gptq_torch: W is {tuple(W.shape)}, H is {tuple(H.shape)}; H must be [in, in] of W [out, in]")
    options = dict(bits=a.bits, group_size=a.group_size, sym=a.sym, act_order=a.act_order,
                   static_groups=a.static_groups, block_size=a.block_size, damp=a.damp)
    with torch.no_grad():
        t0 = time.perf_counter()
        gptq(W, H, **options)
        t1 = time.perf_counter()
        Q, loss = gptq(W, H, **options)
        t2 = time.perf_counter()
    codes = (Q.to(torch.int16) - 2 ** (a.bits - 1)).to(torch.int8)
    save_file({"qvalue": codes.numpy()}, a.codes)
    print(json.dumps({"seconds": t2 - t1, "first_call_seconds": t1 - t0, "loss": loss,
                      "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
