"""Times attention forward+backward (causal, training shapes) for the C core
and, when torch is installed, for torch's scaled_dot_product_attention.

Checks the C result against the float64 reference before timing anything.
Both sides run on 2 threads; each figure is the median of --reps runs, and
the two systems are timed in alternating rounds so that drift on a shared
machine hits both alike.

    python3 bench/bench_attention.py [--reps 15] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from mingpt_c import _lib, ops  # noqa: E402
import reference  # noqa: E402

# (name, B, T, C, NH)
SHAPES = [
    ("baby", 12, 64, 128, 4),
    ("small", 8, 256, 384, 6),
    ("gpt2", 4, 256, 768, 12),
    ("long", 8, 1024, 384, 6),
]

# ms for forward+backward of the first, naive C version (plain loops, one
# (b, h) per work item), measured with this script on the project machine.
NAIVE_MS = {"baby": 6.14, "small": 244.9, "gpt2": 212.5, "long": 3579.0}


def check(B, T, C, NH, rng):
    qkv = rng.normal(size=(B, T, 3 * C)).astype(np.float32)
    dout = rng.normal(size=(B, T, C)).astype(np.float32)
    out, att = ops.attention_forward(qkv, NH, causal=True)
    dqkv = ops.attention_backward(dout, qkv, att, NH, causal=True)
    want = reference.attention_forward(qkv.astype(np.float64), NH, True)[0]
    dwant = reference.attention_backward(dout.astype(np.float64), qkv.astype(np.float64), NH, True)
    assert np.allclose(out, want, rtol=1e-4, atol=1e-5), "forward mismatch"
    assert np.allclose(dqkv, dwant, rtol=1e-3, atol=1e-4), "backward mismatch"


def c_step(qkv, dout, NH, bufs):
    out, att, dqkv, scratch = bufs
    ops.attention_forward(qkv, NH, causal=True, out=out, att=att)
    dqkv.fill(0.0)
    ops.attention_backward(dout, qkv, att, NH, causal=True, dqkv=dqkv, scratch=scratch)


def torch_heads(torch, a, B, T, NH, hs):
    """(B, T, NH*hs) numpy -> (B, NH, T, hs) torch tensor (a copy)."""
    return torch.from_numpy(a.reshape(B, T, NH, hs).transpose(0, 2, 1, 3).copy())


def torch_step(torch, q, k, v, dout):
    for x in (q, k, v):
        x.grad = None
    y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    y.backward(dout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", default=",".join(s[0] for s in SHAPES))
    args = ap.parse_args()
    _lib.set_num_threads(args.threads)
    try:
        import torch
        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    wanted = set(args.shapes.split(","))
    rows = []
    for name, B, T, C, NH in SHAPES:
        if name not in wanted:
            continue
        if T <= 256:
            check(B, T, C, NH, rng)
        hs = C // NH
        qkv = rng.normal(size=(B, T, 3 * C)).astype(np.float32)  # (B, T, 3C)
        dout = rng.normal(size=(B, T, C)).astype(np.float32)     # (B, T, C)
        bufs = (np.empty((B, T, C), np.float32), np.empty((B, NH, T, T), np.float32),
                np.zeros((B, T, 3 * C), np.float32), np.empty((B, NH, T, T), np.float32))
        reps = args.reps if T <= 256 else max(3, args.reps // 3)
        if torch is not None:
            q, k, v = (torch_heads(torch, qkv[..., i * C:(i + 1) * C], B, T, NH, hs).requires_grad_()
                       for i in range(3))
            tdout = torch_heads(torch, dout, B, T, NH, hs)
        ct, tt = [], []
        c_step(qkv, dout, NH, bufs)
        if torch is not None:
            torch_step(torch, q, k, v, tdout)
        for _ in range(reps):
            t0 = time.perf_counter()
            c_step(qkv, dout, NH, bufs)
            ct.append(time.perf_counter() - t0)
            if torch is not None:
                t0 = time.perf_counter()
                torch_step(torch, q, k, v, tdout)
                tt.append(time.perf_counter() - t0)
        c_ms = 1e3 * statistics.median(ct)
        t_ms = 1e3 * statistics.median(tt) if tt else float("nan")
        # causal: half of the 4 (fwd) + 8 (bwd) B*NH*T*T*hs flops
        gflop = 12 * B * NH * T * T * hs / 2 / 1e9
        rows.append((name, f"B{B} T{T} C{C} NH{NH}", NAIVE_MS.get(name, float("nan")),
                     c_ms, t_ms, gflop / (c_ms / 1e3)))
    print(f"attention forward+backward, causal, {args.threads} threads, median ms")
    print(f"{'shape':6} {'sizes':22} {'naive C':>9} {'C':>9} {'torch SDPA':>11} "
          f"{'vs naive':>9} {'vs torch':>9} {'GFLOP/s':>8}")
    for name, sz, nv, c, t, gf in rows:
        print(f"{name:6} {sz:22} {nv:9.2f} {c:9.2f} {t:11.2f} {nv / c:8.1f}x {t / c:8.2f}x {gf:8.1f}")


if __name__ == "__main__":
    main()
