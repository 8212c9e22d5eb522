"""Attention kernels (csrc/attention.c) against the float64 reference.

Forward and backward, causal and bidirectional, with and without a key mask,
on odd and even shapes; the KV-cache decode against the full causal forward;
bitwise determinism across repeated calls and thread counts; argument errors.
"""
import numpy as np
import pytest

import reference as ref
from conftest import assert_close, f32
from mingpt_c import _lib, ops
from mingpt_c._lib import ffi, lib
from mingpt_c.errors import IndexRangeError, ShapeError

# (B, T, NH, hs): every T in {1, 7, 13, 64}, NH in {1, 2, 4}, hs in
# {1, 3, 8, 32, 64} appears; odd hs and ragged T exercise the tail paths.
SHAPES = [
    (1, 1, 1, 1), (2, 1, 2, 8), (2, 7, 1, 3), (2, 7, 4, 8), (3, 7, 2, 32),
    (2, 13, 1, 64), (2, 13, 4, 3), (1, 13, 2, 1), (2, 64, 4, 32), (1, 64, 1, 64),
    (2, 64, 2, 3), (1, 64, 4, 8), (2, 13, 2, 17),
]


def make(rng, B, T, NH, hs, scale=1.0):
    C = NH * hs
    qkv = f32(scale * rng.normal(size=(B, T, 3 * C)))  # (B, T, 3C)
    dout = f32(rng.normal(size=(B, T, C)))              # (B, T, C)
    return qkv, dout


def make_mask(rng, B, T):
    mask = (rng.random((B, T)) > 0.3).astype(np.int32)  # (B, T)
    if B > 1:
        mask[1] = 0          # a fully padded batch row
    mask[0, 0] = 0           # causal: query 0 of row 0 sees no key at all
    return mask


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("B,T,NH,hs", SHAPES)
def test_forward_backward(rng, B, T, NH, hs, causal, masked):
    qkv, dout = make(rng, B, T, NH, hs)
    mask = make_mask(rng, B, T) if masked else None
    out, att = ops.attention_forward(qkv, NH, causal=causal, key_mask=mask)
    want_out, want_att = ref.attention_forward(qkv.astype(np.float64), NH, causal, mask)
    assert_close(att, want_att, rtol=1e-5, atol=1e-7, what="att")
    assert_close(out, want_out, rtol=1e-5, atol=2e-6, what="out")

    dqkv0 = f32(rng.normal(size=qkv.shape))            # backward must ADD to this
    dqkv = ops.attention_backward(dout, qkv, att, NH, causal=causal, dqkv=dqkv0.copy())
    want = ref.attention_backward(dout.astype(np.float64), qkv.astype(np.float64), NH,
                                  causal, mask)
    assert_close(dqkv - dqkv0, want, rtol=1e-4, atol=1e-5, what="dqkv")


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("B,T,NH,hs", [(2, 7, 2, 3), (3, 17, 4, 16), (1, 520, 1, 256)])
def test_backward_overwrites(rng, B, T, NH, hs, causal):
    """accumulate=False writes dqkv over whatever it held (NaN here): the same
    bits as adding into zeros, on the packed and the strided paths."""
    qkv, dout = make(rng, B, T, NH, hs, scale=0.3)
    _, att = ops.attention_forward(qkv, NH, causal=causal)
    want = ops.attention_backward(dout, qkv, att, NH, causal, np.zeros_like(qkv))
    got = ops.attention_backward(dout, qkv, att, NH, causal, np.full_like(qkv, np.nan),
                                 accumulate=False)
    assert np.array_equal(got, want)


@pytest.mark.parametrize("causal", [True, False])
def test_large_head_strided_path(rng, causal):
    """T*hs too large for the per-thread copy areas: the strided fallback."""
    B, T, NH, hs = 1, 520, 1, 256
    qkv, dout = make(rng, B, T, NH, hs, scale=0.2)
    out, att = ops.attention_forward(qkv, NH, causal=causal)
    want_out, want_att = ref.attention_forward(qkv.astype(np.float64), NH, causal)
    assert_close(out, want_out, rtol=1e-5, atol=2e-6, what="out")
    dqkv = ops.attention_backward(dout, qkv, att, NH, causal=causal)
    want = ref.attention_backward(dout.astype(np.float64), qkv.astype(np.float64), NH, causal)
    assert_close(dqkv, want, rtol=1e-4, atol=1e-5, what="dqkv")


@pytest.mark.parametrize("T", [5, 13])
def test_nan_propagates(rng, T):
    """A NaN query poisons its own row; it must not read as 'no visible key'."""
    qkv, _ = make(rng, 1, T, 2, 4)
    qkv[0, 3, 0] = np.nan  # query 3, head 0
    out, att = ops.attention_forward(qkv, 2, causal=True)
    assert np.all(np.isnan(out[0, 3, :4])) and np.all(np.isnan(att[0, 0, 3, :4]))
    bad = np.zeros(out.shape, bool)
    bad[0, 3, :4] = True
    assert np.all(np.isfinite(out[~bad]))


def test_fully_masked_row_is_zero(rng):
    B, T, NH, hs = 3, 13, 2, 8
    qkv, dout = make(rng, B, T, NH, hs)
    mask = np.ones((B, T), np.int32)
    mask[1] = 0
    for causal in (True, False):
        out, att = ops.attention_forward(qkv, NH, causal=causal, key_mask=mask)
        assert np.all(out[1] == 0.0) and np.all(att[1] == 0.0)
        assert np.all(np.isfinite(out)) and np.all(att[0].sum(-1) > 0.999)
        dqkv = ops.attention_backward(dout, qkv, att, NH, causal=causal)
        assert np.all(dqkv[1] == 0.0)


def test_causal_upper_triangle_is_zero(rng):
    qkv, _ = make(rng, 2, 13, 2, 3)
    _, att = ops.attention_forward(qkv, 2, causal=True)
    assert np.all(np.triu(np.ones((13, 13), bool), 1)[None, None] <= (att == 0.0))
    assert_close(att.sum(-1), np.ones((2, 2, 13)), rtol=1e-6, atol=0)


def test_softmax_exp_accuracy():
    """Scores spread over [-87, 0]: every probability to ~1e-6 relative."""
    T = 64
    qkv = np.zeros((1, T, 3), np.float32)  # hs = 1, so scale = 1 and S = q k
    qkv[:, :, 0] = 1.0
    # multiples of 1/64: score - max is exact in float32, so only exp rounds
    qkv[0, :, 1] = np.round(np.linspace(-87.0, 0.0, T) * 64) / 64
    qkv[0, :, 2] = np.linspace(-1, 1, T)
    out, att = ops.attention_forward(qkv, 1, causal=False)
    _, want = ref.attention_forward(qkv.astype(np.float64), 1, False)
    assert_close(att, want, rtol=2e-6, atol=1e-37, what="att")
    # large scores: the row max is subtracted, so nothing overflows
    qkv[0, :, 1] *= -1.0
    qkv[0, :, 0] = 40.0
    out, att = ops.attention_forward(qkv, 1, causal=True)
    _, want = ref.attention_forward(qkv.astype(np.float64), 1, True)
    assert np.all(np.isfinite(out))
    assert_close(att, want, rtol=2e-6, atol=1e-37, what="att, large scores")


@pytest.mark.parametrize("chunk", [1, 3, 8])
@pytest.mark.parametrize("B,T,NH,hs", [(2, 13, 2, 8), (1, 20, 4, 3), (2, 9, 1, 64)])
def test_decode_matches_forward(rng, B, T, NH, hs, chunk):
    qkv, _ = make(rng, B, T, NH, hs)
    C = NH * hs
    maxT = T + 3
    want, _ = ops.attention_forward(qkv, NH, causal=True)
    kc = np.full((B, NH, maxT, hs), np.nan, np.float32)  # unwritten rows must not be read
    vc = np.full((B, NH, maxT, hs), np.nan, np.float32)
    got = np.empty((B, T, C), np.float32)
    for pos in range(0, T, chunk):
        x = np.ascontiguousarray(qkv[:, pos:pos + chunk])
        got[:, pos:pos + chunk] = ops.attention_decode(x, kc, vc, pos, NH)
    assert_close(got, want, rtol=1e-5, atol=1e-6, what="decode")
    k = qkv[..., C:2 * C].reshape(B, T, NH, hs).transpose(0, 2, 1, 3)
    v = qkv[..., 2 * C:].reshape(B, T, NH, hs).transpose(0, 2, 1, 3)
    assert np.array_equal(kc[:, :, :T], k) and np.array_equal(vc[:, :, :T], v)


def _run(qkv, dout, NH, causal, mask):
    out, att = ops.attention_forward(qkv, NH, causal=causal, key_mask=mask)
    dqkv = ops.attention_backward(dout, qkv, att, NH, causal=causal)
    return out, att, dqkv


@pytest.mark.parametrize("causal", [True, False])
def test_deterministic_across_calls_and_threads(rng, causal):
    B, T, NH, hs = 3, 37, 3, 24
    qkv, dout = make(rng, B, T, NH, hs)
    mask = make_mask(rng, B, T)
    before = _lib.get_num_threads()
    try:
        _lib.set_num_threads(2)
        first = _run(qkv, dout, NH, causal, mask)
        again = _run(qkv, dout, NH, causal, mask)
        _lib.set_num_threads(1)
        single = _run(qkv, dout, NH, causal, mask)
    finally:
        _lib.set_num_threads(before)
    for a, b, c in zip(first, again, single):
        assert np.array_equal(a, b) and np.array_equal(a, c)


# ---------------------------------------------------------------- errors


def _err():
    return ffi.string(lib.mg_last_error()).decode()


def test_heads_must_divide_channels(rng):
    qkv = f32(rng.normal(size=(2, 5, 30)))  # C = 10
    with pytest.raises(ShapeError, match="C=10"):
        ops.attention_forward(qkv, 3)
    # the C core checks too, for callers that skip the wrapper
    out = np.empty((2, 5, 10), np.float32)
    att = np.empty((2, 3, 5, 5), np.float32)
    rc = lib.mg_attention_forward(ffi.from_buffer("float*", out), ffi.from_buffer("float*", att),
                                  ffi.from_buffer("float*", qkv), ffi.NULL, 2, 5, 10, 3, 1)
    assert rc == lib.MG_ERR_SHAPE and "C=10" in _err() and "NH=3" in _err()
    rc = lib.mg_attention_backward(ffi.from_buffer("float*", qkv), ffi.from_buffer("float*", att),
                                   ffi.from_buffer("float*", out), ffi.from_buffer("float*", qkv),
                                   ffi.from_buffer("float*", att), 2, 5, 10, 3, 1, 1)
    assert rc == lib.MG_ERR_SHAPE and "NH=3" in _err()


def test_bad_mask_and_null(rng):
    qkv = f32(rng.normal(size=(2, 5, 12)))
    with pytest.raises(ShapeError, match="key_mask"):
        ops.attention_forward(qkv, 2, key_mask=np.ones((2, 4), np.int32))
    rc = lib.mg_attention_forward(ffi.NULL, ffi.NULL, ffi.from_buffer("float*", qkv), ffi.NULL,
                                  2, 5, 4, 2, 1)
    assert rc == lib.MG_ERR_NULL and "out" in _err()
    rc = lib.mg_attention_forward(ffi.from_buffer("float*", qkv), ffi.from_buffer("float*", qkv),
                                  ffi.from_buffer("float*", qkv), ffi.NULL, 2, 0, 4, 2, 1)
    assert rc == lib.MG_ERR_SHAPE and "T=0" in _err()


def test_decode_position_out_of_range(rng):
    B, NH, hs, maxT = 1, 2, 4, 6
    kc = np.zeros((B, NH, maxT, hs), np.float32)
    vc = np.zeros_like(kc)
    qkv = f32(rng.normal(size=(B, 2, 3 * NH * hs)))
    with pytest.raises(ShapeError, match="cache of 6"):
        ops.attention_decode(qkv, kc, vc, 5, NH)
    scratch = np.zeros((B, NH, maxT), np.float32)
    out = np.zeros((B, 2, NH * hs), np.float32)
    p = lambda a: ffi.from_buffer("float*", a)
    for pos in (-1, 5, 1000):
        rc = lib.mg_attention_decode(p(out), p(kc), p(vc), p(scratch), p(qkv),
                                     B, 2, pos, maxT, NH * hs, NH)
        assert rc == lib.MG_ERR_SHAPE and "cache of 6" in _err()
    assert np.all(kc == 0.0) and np.all(out == 0.0)  # validated before any work


@pytest.mark.parametrize("src,length", [([0, 0, 1, 2], 3), ([2, 0, 1, 3, 3, 0, 6], 4), ([1, 0], 0),
                                        ([4, 4, 5, 5], 2), ([0, 1, 2], 4)])
def test_gather_rows(rng, src, length):
    """Row r takes row src[r]'s first `length` positions: duplicates, a
    cycle, sources past the kept rows; later positions and rows stay."""
    B, NH, maxT, hs = 7, 3, 4, 5
    buf = f32(rng.normal(size=(B, NH, maxT, hs)))
    want = buf.copy()
    want[:len(src), :, :length] = buf[src, :, :length]
    scratch = np.full(B * NH * max(length, 1) * hs, np.nan, np.float32)
    ops.gather_rows(buf, np.array(src), length, scratch)
    assert np.array_equal(buf, want)


def test_gather_rows_errors(rng):
    buf = f32(rng.normal(size=(4, 2, 3, 2)))
    scratch = np.empty(buf.size, np.float32)
    with pytest.raises(IndexRangeError):
        ops.gather_rows(buf, np.array([0, 4]), 2, scratch)
    with pytest.raises(ShapeError):
        ops.gather_rows(buf, np.array([0, 1]), 4, scratch)
    with pytest.raises(ShapeError):
        ops.gather_rows(buf, np.array([0, 1, 2, 3, 0]), 2, scratch)
