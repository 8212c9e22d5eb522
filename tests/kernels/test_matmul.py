"""mg_sgemm, mg_matmul_forward and mg_matmul_backward against float64 numpy.

Tolerances. The inputs are float32 values, and the float64 reference uses the
same values, so the only error is the float32 accumulation over K (FMA chains
in K blocks, then block sums added). Each rounding is at most u = 2**-24
relative to a partial sum, and a partial sum is at most sum_k |a_ik||b_kj|, so
the error is bounded by about K*u*sum|a||b| in the worst case and grows like
sqrt(K)*u*sum|a||b| for random signs. We check
    |got - want| <= 8 * u * sqrt(K + 1) * sum_k |a_ik||b_kj|  (+ 1e-6 relative)
which is tens of times the errors we observe yet still catches any dropped or
doubled product (an error of one whole |a_ik b_kj| term), and, unlike a
plain rtol on |want|, stays meaningful where the sum cancels to near zero.
"""
from __future__ import annotations

import numpy as np
import pytest

import reference as ref
from conftest import assert_close, f32
from mingpt_c import _lib, ops
from mingpt_c._lib import check, ffi, lib
from mingpt_c.errors import DTypeError, MinGPTError, ShapeError

U = 2.0 ** -24


def gemm_tol(abs_a, abs_b, K, extra=None):
    """Absolute tolerance per element: 8 u sqrt(K+1) |a|@|b| (+ |extra|)."""
    bound = abs_a @ abs_b
    if extra is not None:
        bound = bound + np.abs(extra)
    return 8 * U * np.sqrt(K + 1) * bound + 1e-30


def op(x, trans):
    return x.T if trans else x


def rand(rng, *shape):
    return f32(rng.standard_normal(shape))


def ptr(a):
    return ffi.from_buffer("float*", a)


@pytest.fixture
def threads():
    """Restores the thread count a test changes."""
    n = _lib.get_num_threads()
    yield
    _lib.set_num_threads(n)

# ---------------------------------------------------------------- sgemm

SHAPES = [(1, 1, 1), (1, 7, 13), (7, 13, 17), (13, 1, 64), (17, 65, 7),
          (64, 64, 64), (65, 127, 13), (127, 17, 300), (300, 65, 127), (6, 16, 256),
          (5, 33, 257)]


@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("M,N,K", SHAPES)
def test_sgemm_matches_float64(rng, ta, tb, M, N, K):
    a = rand(rng, *((K, M) if ta else (M, K)))
    b = rand(rng, *((N, K) if tb else (K, N)))
    A, B = op(a.astype(np.float64), ta), op(b.astype(np.float64), tb)
    got = ops.sgemm(a, b, trans_a=ta, trans_b=tb)
    assert_close(got, A @ B, rtol=1e-6, atol=gemm_tol(abs(A), abs(B), K))
    # beta = 1 adds into an existing C
    c0 = rand(rng, M, N)
    got = ops.sgemm(a, b, trans_a=ta, trans_b=tb, c=c0.copy(), accumulate=True)
    assert_close(got, c0 + A @ B, rtol=1e-6, atol=gemm_tol(abs(A), abs(B), K, c0))


@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
def test_sgemm_b_in_several_chunks(rng, ta, tb, threads):
    """K*N above the packed-B budget (4M floats): N is cut into chunks, each
    packed whole; edge rows, edge panels and every chunk must add up."""
    M, N, K = 19, 1100, 4000
    a = rand(rng, *((K, M) if ta else (M, K)))
    b = rand(rng, *((N, K) if tb else (K, N)))
    A, B = op(a.astype(np.float64), ta), op(b.astype(np.float64), tb)
    for n in (1, 2):
        _lib.set_num_threads(n)
        got = ops.sgemm(a, b, trans_a=ta, trans_b=tb)
        assert_close(got, A @ B, rtol=1e-6, atol=gemm_tol(abs(A), abs(B), K))


@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
def test_sgemm_long_k_in_several_chunks(rng, ta, tb, threads):
    """K so long that a chunk of all K would be narrower than 768 columns
    (the head's dinp: K = vocabulary): chunks cut K at block boundaries
    instead. Sums must still cover every K block once, in the same order
    whatever the thread count (the same bits), with or without beta."""
    M, N, K = 19, 800, 6000
    a = rand(rng, *((K, M) if ta else (M, K)))
    b = rand(rng, *((N, K) if tb else (K, N)))
    c0 = rand(rng, M, N)
    A, B = op(a.astype(np.float64), ta), op(b.astype(np.float64), tb)
    got = {}
    for n in (1, 2):
        _lib.set_num_threads(n)
        got[n] = ops.sgemm(a, b, trans_a=ta, trans_b=tb)
        assert_close(got[n], A @ B, rtol=1e-6, atol=gemm_tol(abs(A), abs(B), K))
        acc = ops.sgemm(a, b, trans_a=ta, trans_b=tb, c=c0.copy(), accumulate=True)
        assert_close(acc, c0 + A @ B, rtol=1e-6, atol=gemm_tol(abs(A), abs(B), K, c0))
    assert np.array_equal(got[1], got[2])


@pytest.mark.parametrize("ta", [0, 1])
@pytest.mark.parametrize("tb", [0, 1])
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_sgemm_strided_views(rng, ta, tb, beta):
    """lda/ldb/ldc larger than the row: sub-blocks of bigger arrays, via ffi."""
    M, N, K = 37, 29, 70
    abig = rand(rng, 90, 100)
    bbig = rand(rng, 80, 110)
    cbig = rand(rng, 50, 45)
    a = abig[:K, :M] if ta else abig[:M, :K]
    b = bbig[:N, :K] if tb else bbig[:K, :N]
    c_before = cbig.copy()
    check(lib.mg_sgemm(ta, tb, M, N, K, ptr(abig), abig.shape[1], ptr(bbig), bbig.shape[1],
                       beta, ptr(cbig), cbig.shape[1]))
    A, B = op(a.astype(np.float64), ta), op(b.astype(np.float64), tb)
    want = beta * c_before[:M, :N] + A @ B
    assert_close(cbig[:M, :N], want, rtol=1e-6,
                 atol=gemm_tol(abs(A), abs(B), K, beta * c_before[:M, :N]))
    # nothing outside the (M, N) window of C is touched
    outside = np.ones(cbig.shape, bool)
    outside[:M, :N] = False
    assert np.array_equal(cbig[outside], c_before[outside])


def test_sgemm_empty_sizes(rng):
    c = rand(rng, 3, 4)
    a, b = np.zeros((3, 1), np.float32), np.zeros((1, 4), np.float32)
    # K = 0: C = beta * C
    before = c.copy()
    check(lib.mg_sgemm(0, 0, 3, 4, 0, ptr(a), 1, ptr(b), 4, 1.0, ptr(c), 4))
    assert np.array_equal(c, before)
    check(lib.mg_sgemm(0, 0, 3, 4, 0, ptr(a), 1, ptr(b), 4, 0.0, ptr(c), 4))
    assert np.array_equal(c, np.zeros_like(c))
    # M = 0 or N = 0: nothing to do, empty operands may be NULL
    check(lib.mg_sgemm(0, 0, 0, 4, 1, ffi.NULL, 1, ptr(b), 4, 0.0, ffi.NULL, 4))
    check(lib.mg_sgemm(0, 0, 3, 0, 1, ptr(a), 1, ffi.NULL, 1, 0.0, ffi.NULL, 1))


@pytest.mark.parametrize("args,exc,words", [
    (dict(M=-1), ShapeError, "negative size"),
    (dict(K=-2), ShapeError, "negative size"),
    (dict(lda=3), ShapeError, "lda=3"),
    (dict(ldb=4), ShapeError, "ldb=4"),
    (dict(ldc=5), ShapeError, "ldc=5"),
    (dict(beta=0.5), ShapeError, "beta"),
    (dict(transA=2), ShapeError, "transA"),
    (dict(A=None), ShapeError, "A is NULL"),
    (dict(B=None), ShapeError, "B is NULL"),
    (dict(Cm=None), ShapeError, "Cm is NULL"),
])
def test_sgemm_rejects_bad_arguments(args, exc, words):
    a, b, c = np.ones((8, 8), np.float32), np.ones((8, 8), np.float32), np.full((8, 8), 7, np.float32)
    kw = dict(transA=0, transB=0, M=6, N=6, K=6, A=ptr(a), lda=8, B=ptr(b), ldb=8,
              beta=0.0, Cm=ptr(c), ldc=8)
    kw.update({k: (ffi.NULL if v is None else v) for k, v in args.items()})
    with pytest.raises(exc, match=words):
        check(lib.mg_sgemm(*kw.values()))
    assert np.all(c == 7), "validation must happen before any work"


def test_sgemm_python_errors():
    a = np.ones((4, 5), np.float32)
    with pytest.raises(ShapeError):
        ops.sgemm(a, np.ones((4, 3), np.float32))
    with pytest.raises(DTypeError):
        ops.sgemm(a.astype(np.float64), np.ones((5, 3), np.float32))
    with pytest.raises(DTypeError):
        ops.sgemm(np.ones((4, 10), np.float32)[:, ::2], np.ones((5, 3), np.float32))

# ---------------------------------------------------------------- linear layer

LAYERS = [(1, 1, 1), (1, 100, 37), (4, 384, 129), (2, 17, 6), (3, 1536, 386), (1, 40, 4), (7, 13, 17), (13, 64, 7), (64, 65, 127), (127, 300, 65), (300, 128, 384)]


@pytest.mark.parametrize("N,C,OC", LAYERS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_matmul_forward(rng, N, C, OC, with_bias):
    x, w, b = rand(rng, N, C), rand(rng, OC, C), rand(rng, OC)
    b = b if with_bias else None
    got = ops.matmul_forward(x, w, b)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    want = ref.matmul_forward(x64, w64, None if b is None else b.astype(np.float64))
    assert_close(got, want, rtol=1e-6, atol=gemm_tol(abs(x64), abs(w64.T), C, b))


def test_matmul_forward_batched_rows(rng):
    x, w, b = rand(rng, 3, 5, 24), rand(rng, 40, 24), rand(rng, 40)
    got = ops.matmul_forward(x, w, b)
    assert got.shape == (3, 5, 40)
    want = ref.matmul_forward(*map(np.float64, (x, w, b)))
    assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("N,C,OC", LAYERS)
def test_matmul_backward_accumulates(rng, N, C, OC):
    x, w, dout = rand(rng, N, C), rand(rng, OC, C), rand(rng, N, OC)
    dx0, dw0, db0 = rand(rng, N, C), rand(rng, OC, C), rand(rng, OC)
    dx, dw, db = ops.matmul_backward(dout, x, w, dx=dx0.copy(), dw=dw0.copy(), db=db0.copy())
    x64, w64, d64 = x.astype(np.float64), w.astype(np.float64), dout.astype(np.float64)
    wdx, wdw, wdb = ref.matmul_backward(d64, x64, w64)
    assert_close(dx, dx0 + wdx, rtol=1e-6, atol=gemm_tol(abs(d64), abs(w64), OC, dx0))
    assert_close(dw, dw0 + wdw, rtol=1e-6, atol=gemm_tol(abs(d64.T), abs(x64), N, dw0))
    assert_close(db, db0 + wdb, rtol=1e-6,
                 atol=gemm_tol(np.ones((1, N)), abs(d64), N, db0)[0])


@pytest.mark.parametrize("N,C,OC", [(7, 13, 17), (300, 128, 384), (3, 1536, 386)])
def test_matmul_backward_overwrite_dx(rng, N, C, OC):
    """overwrite_dx replaces whatever dx held, with the bits of zeroing it and
    accumulating; dw and db still accumulate."""
    x, w, dout = rand(rng, N, C), rand(rng, OC, C), rand(rng, N, OC)
    dw0, db0 = rand(rng, OC, C), rand(rng, OC)
    want = ops.matmul_backward(dout, x, w, dx=np.zeros((N, C), np.float32), dw=dw0.copy(), db=db0.copy())
    junk = np.full((N, C), np.nan, np.float32)
    got = ops.matmul_backward(dout, x, w, dx=junk, dw=dw0.copy(), db=db0.copy(), overwrite_dx=True)
    for g, w_ in zip(got, want):
        assert np.array_equal(g, w_)


def test_matmul_backward_optional_outputs(rng):
    N, C, OC = 9, 10, 11
    x, w, dout = rand(rng, N, C), rand(rng, OC, C), rand(rng, N, OC)
    dx, dw, db = ops.matmul_backward(dout, x, w, need_dx=False, need_db=False)
    assert dx is None and db is None
    _, wdw, _ = ref.matmul_backward(*map(np.float64, (dout, x, w)))
    assert_close(dw, wdw, rtol=1e-5, atol=1e-5)
    # all three NULL is a valid no-op
    check(lib.mg_matmul_backward(ffi.NULL, ffi.NULL, ffi.NULL, ptr(dout), ptr(x), ptr(w),
                                 N, C, OC, 0))


# Rows below and above the unpacked dot-product path; a chunk cut of N
# (58101 columns), a long K cut into chunks of K (20000), odd edges.
PACKED = [(1, 7, 5), (4, 64, 100), (5, 64, 100), (37, 100, 9000), (64, 512, 5000), (300, 129, 391),
          (9, 20000, 300), (70, 512, 58101)]


@pytest.mark.parametrize("N,C,OC", PACKED)
def test_matmul_forward_packed_gives_the_same_bits(rng, N, C, OC):
    """A weight packed once gives exactly mg_matmul_forward's result, with
    and without a bias, and serves every row count (decoding batches
    shrink)."""
    w, b = rand(rng, OC, C), rand(rng, OC)
    pw = ops.PackedWeight(w)
    assert pw.data.ctypes.data % 64 == 0
    for rows in sorted({N, max(1, N // 3), 1}):
        x = rand(rng, rows, C)
        for bias in (b, None):
            assert np.array_equal(ops.matmul_forward(x, w, bias, packed=pw), ops.matmul_forward(x, w, bias))


def test_matmul_packed_errors(rng):
    w, w2 = rand(rng, 30, 16), rand(rng, 30, 16)
    pw = ops.PackedWeight(w)
    with pytest.raises(ShapeError, match="another weight"):
        ops.matmul_forward(rand(rng, 8, 16), w2, packed=pw)
    with pytest.raises(ShapeError):
        ops.PackedWeight(rand(rng, 30))
    n = ffi.new("size_t*")
    check(lib.mg_matmul_packed_size(n, 16, 30))
    buf = np.zeros(n[0] + 32, np.float32)
    start = (-buf.ctypes.data % 64) // 4
    x, out = rand(rng, 8, 16), np.zeros((8, 30), np.float32)
    with pytest.raises(ShapeError, match="packs to"):      # a wrong size
        check(lib.mg_matmul_pack(ptr(buf[start:]), n[0] + 1, ptr(w), 16, 30))
    with pytest.raises(MinGPTError, match="aligned"):  # misaligned
        check(lib.mg_matmul_forward_packed(ptr(out), ptr(x), ptr(w), ptr(buf[start + 1:]), n[0], ffi.NULL,
                                           8, 16, 30))


def test_matmul_shape_and_dtype_errors():
    x, w = np.ones((4, 8), np.float32), np.ones((6, 8), np.float32)
    with pytest.raises(ShapeError):
        ops.matmul_forward(x, np.ones((6, 7), np.float32))
    with pytest.raises(ShapeError):
        ops.matmul_forward(x, w, np.ones(5, np.float32))
    with pytest.raises(ShapeError):
        ops.matmul_backward(np.ones((4, 5), np.float32), x, w)
    with pytest.raises(DTypeError):
        ops.matmul_forward(x.astype(np.float64), w)
    with pytest.raises(DTypeError):
        ops.matmul_forward(np.ones((4, 16), np.float32)[:, ::2], w)
    with pytest.raises(DTypeError):
        ops.matmul_backward(np.ones((4, 6), np.float64), x, w)
    with pytest.raises(ShapeError, match="C=0"):
        check(lib.mg_matmul_forward(ptr(x), ptr(x), ptr(w), ffi.NULL, 4, 0, 6))
    with pytest.raises(ShapeError, match="NULL"):
        check(lib.mg_matmul_forward(ffi.NULL, ptr(x), ptr(w), ffi.NULL, 4, 8, 6))

# ---------------------------------------------------------------- determinism

# Large enough to run in parallel, with edge tiles and several K blocks: one
# below SPLIT_MNK (64M multiply-adds per product), one above.
DET = (301, 517, 389)   # N, C, OC
DET_LARGE = (311, 530, 420)


def _run_all(x, w, b, dout):
    out = ops.matmul_forward(x, w, b)
    dx, dw, db = ops.matmul_backward(dout, x, w)
    junk = np.full(x.shape, np.nan, np.float32)
    ox, ow, ob = ops.matmul_backward(dout, x, w, dx=junk, overwrite_dx=True)
    c = ops.sgemm(x, w, trans_b=True)
    return out, dx, dw, db, ox, ow, ob, c


@pytest.mark.parametrize("shape", [DET, DET_LARGE], ids=["split", "shared"])
def test_deterministic_repeats_and_thread_counts(rng, threads, shape):
    """Ties every parallel path to the serial one. DET's products are small
    enough (SPLIT_MNK) that at 2 threads a backward runs its two side by
    side, one serial product per thread, and at 2 and 3 threads a single
    product splits its rows; DET_LARGE's run on shared packed panels."""
    N, C, OC = shape
    assert (N * C * OC <= 64 * 1024 * 1024) == (shape == DET)
    x, w, b, dout = rand(rng, N, C), rand(rng, OC, C), rand(rng, OC), rand(rng, N, OC)
    first = _run_all(x, w, b, dout)
    again = _run_all(x, w, b, dout)
    for p, q in zip(first, again):
        assert np.array_equal(p, q)
    results = {}
    for nt in (1, 2, 3):
        _lib.set_num_threads(nt)
        results[nt] = _run_all(x, w, b, dout)
    for nt in (2, 3):
        for p, q in zip(results[1], results[nt]):
            assert np.array_equal(p, q), f"{nt} threads differ from 1 thread"
