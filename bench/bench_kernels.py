"""Kernel benchmarks: GFLOP/s of the C core beside numpy (OpenBLAS) and,
where installed, PyTorch (MKL), float32.

    python3 bench/bench_kernels.py            # full table (a few minutes)
    python3 bench/bench_kernels.py --quick    # fewer shapes and repeats
    python3 bench/bench_kernels.py --threads 1 --only matmul

Each section checks correctness first, then times. Ours and numpy's run in
alternating rounds on the same buffers and the table shows medians, because
the machines we run on are shared and drift by 10-20% between time windows:
compare the ratio column, not absolute numbers across runs.

Adding a kernel: write `check_<name>()` and `bench_<name>(args)` returning
rows for `print_table`, and register the pair in SECTIONS.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    p.add_argument("--threads", type=int, default=2, help="threads for ours and numpy's BLAS")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per shape")
    p.add_argument("--only", default=None, help="comma-separated sections to run")
    return p.parse_args(argv)


ARGS = parse_args()
# numpy's BLAS reads its thread count when it loads: set it before the import.
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)
# OpenBLAS's idle threads busy-wait for about 2**28 cycles (~0.1 s) after each
# call; on 2 cores that steals the CPU from whatever runs next, so alternating
# rounds would measure each side against the other's spinning threads. A short
# timeout puts them to sleep at once (numpy itself loses nothing measurable).
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from mingpt_c import _lib, ops  # noqa: E402
from mingpt_c._lib import build_info, check, ffi, lib  # noqa: E402

try:  # optional: pins numpy's BLAS pool even if it was loaded already
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

try:  # optional: PyTorch's own GEMM (MKL on x86), a third column
    import torch
    torch.set_num_threads(ARGS.threads)
except ImportError:  # pragma: no cover
    torch = None

# ---------------------------------------------------------------- timing


def median_times(fns: dict, repeats: int, warmup: int = 1) -> dict:
    """Median seconds of each callable, run in alternating rounds."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def print_table(title: str, rows: list[dict]) -> None:
    cols = list(rows[0].keys()) if rows else []
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print(f"\n## {title}\n")
    print("| " + " | ".join(c.ljust(width[c]) for c in cols) + " |")
    print("|" + "|".join("-" * (width[c] + 2) for c in cols) + "|")
    for r in rows:
        print("| " + " | ".join(str(r[c]).rjust(width[c]) for c in cols) + " |")
    sys.stdout.flush()


def _p(a):
    return ffi.NULL if a is None else ffi.from_buffer("float*", a)

# ---------------------------------------------------------------- matmul

# (C, OC) of a transformer's linear layers: qkv (C, 3C), attention projection
# (C, C), MLP up (C, 4C) and down (4C, C), the vocabulary head (C, 50257).
MATMUL_SHAPES = [(128, 384), (128, 512), (384, 1152), (384, 1536), (1536, 384),
                 (768, 768), (768, 2304), (768, 3072), (3072, 768), (768, 50257)]
MATMUL_QUICK = [(128, 384), (384, 1536), (1536, 384), (768, 3072), (3072, 768)]


def check_matmul() -> None:
    """Forward and backward against float64 on odd shapes before any timing."""
    rng = np.random.default_rng(0)
    for N, C, OC in [(7, 13, 17), (300, 130, 390), (65, 769, 129)]:
        x = rng.standard_normal((N, C)).astype(np.float32)
        w = rng.standard_normal((OC, C)).astype(np.float32)
        b = rng.standard_normal(OC).astype(np.float32)
        d = rng.standard_normal((N, OC)).astype(np.float32)
        x64, w64, d64 = (a.astype(np.float64) for a in (x, w, d))
        got = [ops.matmul_forward(x, w, b), *ops.matmul_backward(d, x, w)]
        want = [x64 @ w64.T + b, d64 @ w64, d64.T @ x64, d64.sum(0)]
        bound = [abs(x64) @ abs(w64.T) + abs(b), abs(d64) @ abs(w64),
                 abs(d64.T) @ abs(x64), abs(d64).sum(0)]
        for name, g, wt, bd in zip(("out", "dinp", "dweight", "dbias"), got, want, bound):
            err = float(np.max(np.abs(g - wt) / bd))
            if err > 1e-5:
                raise SystemExit(f"matmul {name} wrong at N={N} C={C} OC={OC}: "
                                 f"error {err:.2e} of sum|a||b|")
    print("matmul: correctness checked against float64")


# GFLOP and seconds summed over every shape and pass, per side ("" ours)
TOTALS = {"": [0.0, 0.0], "np_": [0.0, 0.0], "pt_": [0.0, 0.0]}


def matmul_fns(N, C, OC, x, w, dout, out, dx, dw, np_out, np_dx, np_dw) -> dict:
    """The timed calls for one shape: ours and numpy's forward, dinp and
    dweight into the given buffers, and torch's into its own where installed."""
    wT, doutT = w.T, dout.T   # views: numpy passes them to BLAS as transposes
    fns = {
        "fwd": lambda: check(lib.mg_matmul_forward(
            _p(out), _p(x), _p(w), ffi.NULL, N, C, OC)),
        "np_fwd": lambda: np.matmul(x, wT, out=np_out),
        "dinp": lambda: check(lib.mg_matmul_backward(
            _p(dx), ffi.NULL, ffi.NULL, _p(dout), _p(x), _p(w), N, C, OC, 0)),
        "np_dinp": lambda: np.matmul(dout, w, out=np_dx),
        "dweight": lambda: check(lib.mg_matmul_backward(
            ffi.NULL, _p(dw), ffi.NULL, _p(dout), _p(x), _p(w), N, C, OC, 0)),
        "np_dweight": lambda: np.matmul(doutT, x, out=np_dw),
    }
    if torch is not None:   # the same inputs (shared memory), own outputs
        tx, tw, tdout = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(dout)
        t_out, t_dx, t_dw = (torch.from_numpy(a.copy()) for a in (out, dx, dw))
        fns["pt_fwd"] = lambda: torch.matmul(tx, tw.T, out=t_out)
        fns["pt_dinp"] = lambda: torch.matmul(tdout, tw, out=t_dx)
        fns["pt_dweight"] = lambda: torch.matmul(tdout.T, tx, out=t_dw)
    return fns


def bench_matmul(args) -> list[dict]:
    rows_n = [768] if args.quick else [768, 2048]
    shapes = MATMUL_QUICK if args.quick else MATMUL_SHAPES
    repeats = args.repeats or (3 if args.quick else 7)
    rng = np.random.default_rng(1)
    rows = []
    for N in rows_n:
        for C, OC in shapes:
            x = rng.standard_normal((N, C)).astype(np.float32)     # (N, C)
            w = rng.standard_normal((OC, C)).astype(np.float32)    # (OC, C)
            b = rng.standard_normal(OC).astype(np.float32)         # (OC,)
            dout = rng.standard_normal((N, OC)).astype(np.float32)  # (N, OC)
            out = np.empty((N, OC), np.float32)
            dx = np.zeros((N, C), np.float32)
            dw = np.zeros((OC, C), np.float32)
            np_out, np_dx, np_dw = out.copy(), dx.copy(), dw.copy()
            fns = matmul_fns(N, C, OC, x, w, dout, out, dx, dw, np_out, np_dx, np_dw)
            reps = max(2, repeats // 2) if OC > 10000 else repeats
            t = median_times(fns, reps)
            gf = 2.0 * N * C * OC / 1e9
            row = {"N": N, "C": C, "OC": OC}
            for k in ("fwd", "dinp", "dweight"):
                ours, theirs = gf / t[k], gf / t["np_" + k]
                row[f"{k} ours"] = f"{ours:.1f}"
                row[f"{k} numpy"] = f"{theirs:.1f}"
                row[f"{k} ratio"] = f"{ours / theirs:.2f}"
                if torch is not None:
                    row[f"{k} torch"] = f"{gf / t['pt_' + k]:.1f}"
                for side in ("", "np_", "pt_"):
                    if side + k in t:
                        TOTALS[side] = [TOTALS[side][0] + gf, TOTALS[side][1] + t[side + k]]
            rows.append(row)
            print(" ".join(f"{k}={v}" for k, v in row.items()), file=sys.stderr)
            del x, w, b, dout, out, dx, dw, np_out, np_dx, np_dw, fns
    return rows

# ---------------------------------------------------------------- main

SECTIONS = {
    "matmul": (check_matmul, bench_matmul, "matmul GFLOP/s (ratio = ours / numpy)"),
}


def main(args) -> None:
    _lib.set_num_threads(args.threads)
    info = build_info()
    print(f"mingpt-c {info['version']} ({info['compiler']}, {info['simd']}, "
          f"openmp={info['openmp']}), {args.threads} threads; numpy {np.__version__}")
    names = args.only.split(",") if args.only else list(SECTIONS)
    for name in names:
        if name not in SECTIONS:
            raise SystemExit(f"unknown section {name!r}; have {', '.join(SECTIONS)}")
    for name in names:
        check_fn, bench_fn, title = SECTIONS[name]
        check_fn()
        if threadpool_limits is not None:
            with threadpool_limits(limits=args.threads):
                rows = bench_fn(args)
        else:
            rows = bench_fn(args)
        print_table(title, rows)
        if name == "matmul":
            sides = {"ours": "", "numpy": "np_", "torch": "pt_"}
            print("all shapes and passes (total GFLOP / total median time): " + ", ".join(
                f"{label} {TOTALS[k][0] / TOTALS[k][1]:.1f}"
                for label, k in sides.items() if TOTALS[k][1] > 0))


if __name__ == "__main__":
    main(ARGS)
