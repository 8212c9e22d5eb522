"""Cross-attention kernels (csrc/cross_attention.c) against the float64 reference.

Forward and backward with and without a key padding mask (a fully padded
source row included), on odd shapes: Tq != Tk, Tq = 1 (a decoding step),
Tk = 1, head sizes that are not multiples of 8 or 16; central differences
on the C kernel itself; accumulate = 0 against 1; bitwise determinism across
calls and thread counts; a query row computed alone equals its row of a full
call; PyTorch parity; argument errors at both boundaries.
"""
import numpy as np
import pytest

import reference as ref
from conftest import assert_close, f32
from mingpt_c import _lib, ops
from mingpt_c._lib import ffi, lib
from mingpt_c.errors import DTypeError, ShapeError

# (B, Tq, Tk, NH, hs): Tq and Tk in {1, 7, 13, 64} and unequal, hs in
# {1, 3, 8, 17, 32, 64} (the 16-lane dot's tail and the 64-channel chunks).
SHAPES = [
    (1, 1, 1, 1, 1), (2, 1, 7, 2, 8), (2, 7, 1, 1, 3), (3, 7, 13, 2, 17),
    (2, 13, 7, 4, 8), (1, 1, 64, 4, 32), (2, 64, 13, 1, 64), (2, 13, 64, 2, 3),
    (1, 64, 64, 2, 33), (2, 5, 9, 1, 80),
]


def make(rng, B, Tq, Tk, NH, hs, scale=1.0):
    C = NH * hs
    q = f32(scale * rng.normal(size=(B, Tq, C)))       # (B, Tq, C)
    kv = f32(scale * rng.normal(size=(B, Tk, 2 * C)))  # (B, Tk, 2C)
    dout = f32(rng.normal(size=(B, Tq, C)))            # (B, Tq, C)
    return q, kv, dout


def make_mask(rng, B, Tk):
    mask = (rng.random((B, Tk)) > 0.3).astype(np.int32)  # (B, Tk), 0 = padded key
    mask[0, 0] = 1                                        # row 0 sees a key
    if B > 1:
        mask[1] = 0                                       # a fully padded source row
    return mask


def f64(*arrays):
    return [a.astype(np.float64) for a in arrays]


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("B,Tq,Tk,NH,hs", SHAPES)
def test_forward_backward(rng, B, Tq, Tk, NH, hs, masked):
    q, kv, dout = make(rng, B, Tq, Tk, NH, hs)
    mask = make_mask(rng, B, Tk) if masked else None
    out, att = ops.cross_attention_forward(q, kv, NH, key_mask=mask)
    want_out, want_att = ref.cross_attention_forward(*f64(q, kv), NH, mask)
    assert_close(att, want_att, rtol=1e-5, atol=1e-7, what="att")
    assert_close(out, want_out, rtol=1e-5, atol=2e-6, what="out")
    if masked:
        assert np.all(att.transpose(0, 3, 1, 2)[mask == 0] == 0.0)   # padded keys: P = 0

    dq0, dkv0 = f32(rng.normal(size=q.shape), rng.normal(size=kv.shape))  # must ADD to these
    dq, dkv = ops.cross_attention_backward(dout, q, kv, att, NH, dq=dq0.copy(), dkv=dkv0.copy())
    want_dq, want_dkv = ref.cross_attention_backward(*f64(dout, q, kv), NH, mask)
    assert_close(dq - dq0, want_dq, rtol=1e-4, atol=1e-5, what="dq")
    assert_close(dkv - dkv0, want_dkv, rtol=1e-4, atol=1e-5, what="dkv")


def test_fully_padded_row_is_zero(rng):
    B, Tq, Tk, NH, hs = 3, 5, 9, 2, 8
    q, kv, dout = make(rng, B, Tq, Tk, NH, hs)
    mask = np.ones((B, Tk), np.int32)
    mask[1] = 0
    mask[2, 4:] = 0
    out, att = ops.cross_attention_forward(q, kv, NH, key_mask=mask)
    assert np.all(out[1] == 0.0) and np.all(att[1] == 0.0)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(att))
    assert_close(att[[0, 2]].sum(-1), np.ones((2, NH, Tq)), rtol=1e-6, atol=0)
    dq, dkv = ops.cross_attention_backward(dout, q, kv, att, NH)
    assert np.all(dq[1] == 0.0) and np.all(dkv[1] == 0.0)
    assert np.all(dkv[2, 4:] == 0.0)   # padded keys get no gradient


@pytest.mark.parametrize("masked", [False, True])
def test_c_kernel_central_differences(rng, masked):
    """The C kernel's backward is the gradient of its own forward: central
    differences of the probe loss sum(out * dout), evaluated in float64 on
    float32 outputs (eps large enough for float32 rounding to stay below the
    tolerance, small enough for the truncation error)."""
    B, Tq, Tk, NH, hs = 2, 3, 5, 2, 3
    q, kv, dout = make(rng, B, Tq, Tk, NH, hs)
    mask = np.array([[1, 0, 1, 1, 0], [1, 1, 1, 1, 1]], np.int32) if masked else None
    _, att = ops.cross_attention_forward(q, kv, NH, key_mask=mask)
    dq, dkv = ops.cross_attention_backward(dout, q, kv, att, NH)
    dout64 = dout.astype(np.float64)

    def probe():
        return float((ops.cross_attention_forward(q, kv, NH, key_mask=mask)[0] * dout64).sum())

    eps = 1e-2
    for x, grad in ((q, dq), (kv, dkv)):
        num = np.zeros(x.shape)
        for i in np.ndindex(x.shape):
            old = x[i]
            x[i] = old + eps
            fp = probe()
            x[i] = old - eps
            fm = probe()
            x[i] = old
            num[i] = (fp - fm) / (2 * eps)
        assert_close(grad, num, rtol=5e-3, atol=5e-4, what="central differences")


@pytest.mark.parametrize("B,Tq,Tk,NH,hs", [(2, 7, 5, 2, 3), (3, 17, 9, 4, 16), (1, 1, 70, 1, 130)])
def test_backward_overwrites(rng, B, Tq, Tk, NH, hs):
    """accumulate=False writes dq and dkv over whatever they held (NaN here):
    the same bits as adding into zeros."""
    q, kv, dout = make(rng, B, Tq, Tk, NH, hs, scale=0.3)
    _, att = ops.cross_attention_forward(q, kv, NH)
    want = ops.cross_attention_backward(dout, q, kv, att, NH, np.zeros_like(q),
                                        np.zeros_like(kv))
    got = ops.cross_attention_backward(dout, q, kv, att, NH, np.full_like(q, np.nan),
                                       np.full_like(kv, np.nan), accumulate=False)
    fresh = ops.cross_attention_backward(dout, q, kv, att, NH)   # no buffers: written
    for g, f, w in zip(got, fresh, want):
        assert np.array_equal(g, w) and np.array_equal(f, w)
    # one buffer given: accumulate adds into it, the other starts from zero
    d0 = f32(rng.normal(size=q.shape))
    dq, dkv = ops.cross_attention_backward(dout, q, kv, att, NH, dq=d0.copy())
    assert_close(dq, d0 + want[0], rtol=1e-6, atol=1e-6) and np.array_equal(dkv, want[1])


def test_decoding_rows_equal_the_full_call(rng):
    """Tq = 1 over the same kv (a decoding step) gives, bit for bit, the row
    of a call with every query at once: each query is computed alone."""
    B, Tq, Tk, NH, hs = 2, 9, 11, 2, 24
    q, kv, _ = make(rng, B, Tq, Tk, NH, hs)
    mask = make_mask(rng, B, Tk)
    out, att = ops.cross_attention_forward(q, kv, NH, key_mask=mask)
    for t in range(Tq):
        o1, a1 = ops.cross_attention_forward(np.ascontiguousarray(q[:, t:t + 1]), kv, NH,
                                             key_mask=mask)
        assert np.array_equal(o1[:, 0], out[:, t]) and np.array_equal(a1[:, :, 0], att[:, :, t])


@pytest.mark.parametrize("where", ["q", "k"])
def test_nan_poisons_its_rows_only(rng, where):
    B, Tq, Tk, NH, hs = 1, 4, 6, 2, 4
    q, kv, _ = make(rng, B, Tq, Tk, NH, hs)
    if where == "q":
        q[0, 2, 1] = np.nan        # query 2, head 0: that query row only
    else:
        kv[0, 3, 1] = np.nan       # key 3, head 0: every query of head 0
    out, att = ops.cross_attention_forward(q, kv, NH)
    rows = [2] if where == "q" else list(range(Tq))
    bad = np.zeros(out.shape, bool)
    bad[0, rows, :hs] = True
    assert np.all(np.isnan(out[bad])) and np.all(np.isfinite(out[~bad]))
    assert np.all(np.isnan(att[0, 0, rows])) and np.all(np.isfinite(att[0, 1]))


def test_large_scores_do_not_overflow(rng):
    q, kv, _ = make(rng, 2, 5, 7, 2, 8, scale=30.0)   # scores in the thousands
    out, att = ops.cross_attention_forward(q, kv, 2)
    want_out, want_att = ref.cross_attention_forward(*f64(q, kv), 2)
    assert np.all(np.isfinite(out))
    assert_close(att, want_att, rtol=1e-4, atol=1e-6, what="att")
    assert_close(out, want_out, rtol=1e-4, atol=1e-3, what="out")


def _run(q, kv, dout, NH, mask):
    out, att = ops.cross_attention_forward(q, kv, NH, key_mask=mask)
    return (out, att, *ops.cross_attention_backward(dout, q, kv, att, NH))


def test_deterministic_across_calls_and_threads(rng):
    B, Tq, Tk, NH, hs = 3, 37, 29, 3, 24
    q, kv, dout = make(rng, B, Tq, Tk, NH, hs)
    mask = make_mask(rng, B, Tk)
    before = _lib.get_num_threads()
    try:
        _lib.set_num_threads(2)
        first = _run(q, kv, dout, NH, mask)
        again = _run(q, kv, dout, NH, mask)
        _lib.set_num_threads(1)
        single = _run(q, kv, dout, NH, mask)
    finally:
        _lib.set_num_threads(before)
    for a, b, c in zip(first, again, single):
        assert np.array_equal(a, b) and np.array_equal(a, c)


@pytest.mark.parametrize("masked", [False, True])
def test_matches_torch(rng, masked):
    """A hand-written PyTorch cross-attention (float32, autograd) agrees."""
    torch = pytest.importorskip("torch")
    B, Tq, Tk, NH, hs = 2, 6, 9, 3, 5
    C = NH * hs
    q, kv, dout = make(rng, B, Tq, Tk, NH, hs)
    mask = None
    if masked:
        mask = np.ones((B, Tk), np.int32)
        mask[0, 6:] = 0
        mask[1, ::2] = 0
    tq = torch.tensor(q, requires_grad=True)
    tkv = torch.tensor(kv, requires_grad=True)
    heads = lambda a: a.view(B, -1, NH, hs).transpose(1, 2)   # (B, NH, T, hs)
    s = heads(tq) @ heads(tkv[..., :C]).transpose(-1, -2) / hs ** 0.5
    if masked:
        s = s.masked_fill(torch.tensor(mask == 0)[:, None, None, :], float("-inf"))
    p = torch.softmax(s, -1)
    y = (p @ heads(tkv[..., C:])).transpose(1, 2).reshape(B, Tq, C)
    y.backward(torch.tensor(dout))
    out, att = ops.cross_attention_forward(q, kv, NH, key_mask=mask)
    assert_close(att, p.detach().numpy(), rtol=1e-5, atol=1e-6, what="att")
    assert_close(out, y.detach().numpy(), rtol=1e-5, atol=1e-5, what="out")
    dq, dkv = ops.cross_attention_backward(dout, q, kv, att, NH)
    assert_close(dq, tq.grad.numpy(), rtol=1e-4, atol=1e-5, what="dq")
    assert_close(dkv, tkv.grad.numpy(), rtol=1e-4, atol=1e-5, what="dkv")

# ---------------------------------------------------------------- errors


def _err():
    return ffi.string(lib.mg_last_error()).decode()


def _p(a, ctype="float*"):
    return ffi.from_buffer(ctype, a)


def test_wrapper_checks_shapes_and_dtypes(rng):
    q, kv, dout = make(rng, 2, 3, 5, 2, 4)
    with pytest.raises(ShapeError, match="C=8 not divisible by n_head=3"):
        ops.cross_attention_forward(q, kv, 3)
    with pytest.raises(ShapeError, match="kv has shape"):
        ops.cross_attention_forward(q, f32(np.zeros((2, 5, 8))), 2)
    with pytest.raises(ShapeError, match="kv has shape"):
        ops.cross_attention_forward(q, f32(np.zeros((1, 5, 16))), 2)
    with pytest.raises(ShapeError, match="q must be"):
        ops.cross_attention_forward(q[0], kv, 2)
    with pytest.raises(ShapeError, match="key_mask has shape"):
        ops.cross_attention_forward(q, kv, 2, key_mask=np.ones((2, 3), np.int32))
    with pytest.raises(DTypeError, match="key_mask must be int32"):
        ops.cross_attention_forward(q, kv, 2, key_mask=np.ones((2, 5), np.int64))
    with pytest.raises(DTypeError, match="kv must be float32"):
        ops.cross_attention_forward(q, kv.astype(np.float64), 2)
    with pytest.raises(ShapeError, match="Tk=0"):
        ops.cross_attention_forward(q, f32(np.zeros((2, 0, 16))), 2)
    _, att = ops.cross_attention_forward(q, kv, 2)
    with pytest.raises(ShapeError, match="att has shape"):
        ops.cross_attention_backward(dout, q, kv, np.ascontiguousarray(att[:, :, :2]), 2)
    with pytest.raises(ShapeError, match="dout has shape"):
        ops.cross_attention_backward(np.ascontiguousarray(dout[:, :2]), q, kv, att, 2)
    with pytest.raises(ShapeError, match="dkv has shape"):
        ops.cross_attention_backward(dout, q, kv, att, 2, dkv=np.zeros_like(q))


def test_c_checks_arguments(rng):
    """Callers that skip the wrapper get a status and a message, not a crash;
    nothing is written before the checks pass."""
    B, Tq, Tk, C = 2, 3, 5, 10
    q, kv = f32(rng.normal(size=(B, Tq, C)), rng.normal(size=(B, Tk, 2 * C)))
    out = np.zeros((B, Tq, C), np.float32)
    att = np.zeros((B, 3, Tq, Tk), np.float32)
    rc = lib.mg_cross_attention_forward(_p(out), _p(att), _p(q), _p(kv), ffi.NULL,
                                        B, Tq, Tk, C, 3)
    assert rc == lib.MG_ERR_SHAPE and "C=10" in _err() and "NH=3" in _err()
    rc = lib.mg_cross_attention_forward(ffi.NULL, _p(att), _p(q), _p(kv), ffi.NULL,
                                        B, Tq, Tk, C, 2)
    assert rc == lib.MG_ERR_NULL and "out" in _err()
    for name, sizes in (("Tq=0", (B, 0, Tk)), ("Tk=-1", (B, Tq, -1)), ("B=0", (0, Tq, Tk))):
        rc = lib.mg_cross_attention_forward(_p(out), _p(att), _p(q), _p(kv), ffi.NULL,
                                            *sizes, C, 2)
        assert rc == lib.MG_ERR_SHAPE and name in _err()
    dq, dkv = np.zeros_like(q), np.zeros_like(kv)
    rc = lib.mg_cross_attention_backward(_p(dq), ffi.NULL, _p(att), _p(out), _p(q), _p(kv),
                                         _p(att), B, Tq, Tk, C, 2, 1)
    assert rc == lib.MG_ERR_NULL and "dkv" in _err()
    rc = lib.mg_cross_attention_backward(_p(dq), _p(dkv), _p(att), _p(out), _p(q), _p(kv),
                                         _p(att), B, Tq, Tk, C, 4, 0)
    assert rc == lib.MG_ERR_SHAPE and "NH=4" in _err()
    assert np.all(out == 0.0) and np.all(dq == 0.0) and np.all(dkv == 0.0)
