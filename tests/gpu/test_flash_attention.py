"""The fused self-attention (csrc/cuda/flash_attention.cu) against the CPU
kernels and a float64 reference.

out and dqkv are held to the CPU's mg_attention_forward/backward (which
materialise the probabilities) within fp32 rounding, lse to a float64
log-sum-exp; at T = 1, 63, 64, 257, 1024 and 2048, causal and not, with a
key padding mask (a fully padded row included), head sizes 16 to 64. The
backward also runs with accumulate off over NaN buffers, the same call twice
gives the same bits, and at T = 4096 the memory the calls take is far below
one (T, T) matrix of scores.
"""
import numpy as np
import pytest

from mingpt_c import cuda, ops
from mingpt_c.errors import DTypeError, ShapeError

from .conftest import close, gpu, key_mask, nan_like, rand, same_bits

pytestmark = gpu
D = cuda.to_device

# (B, T, NH, hs)
SHAPES = [(2, 1, 2, 64), (2, 63, 2, 32), (1, 64, 3, 16), (2, 257, 2, 64), (1, 1024, 2, 48),
          (1, 2048, 1, 64)]


def lse_reference(qkv, NH, causal, mask):
    """float64 log-sum-exp of each query's visible scaled scores (-inf: none)."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // NH
    x = qkv.astype(np.float64).reshape(B, T, 3, NH, hs)
    q, k = x[:, :, 0].transpose(0, 2, 1, 3), x[:, :, 1].transpose(0, 2, 1, 3)   # (B, NH, T, hs)
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hs)                                 # (B, NH, T, T)
    seen = np.ones((B, 1, T, T), bool)
    if causal:
        seen &= np.tril(np.ones((T, T), bool))
    if mask is not None:
        seen &= mask[:, None, None, :] != 0
    s = np.where(seen, s, -np.inf)
    m = s.max(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = m[..., 0] + np.log(np.exp(s - np.where(np.isfinite(m), m, 0)).sum(-1))
    return np.where(seen.any(-1), out, -np.inf)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("B,T,NH,hs", SHAPES)
def test_flash_attention_matches_the_cpu(rng, B, T, NH, hs, causal, masked):
    C = NH * hs
    qkv, dout = rand(rng, B, T, 3 * C), rand(rng, B, T, C)
    mask = key_mask(rng, B, T) if masked else None
    dmask = D(mask) if masked else None
    want_out, att = ops.attention_forward(qkv, NH, causal=causal, key_mask=mask)
    out, lse = ops.flash_attention_forward(D(qkv), NH, causal=causal, key_mask=dmask,
                                           out=nan_like((B, T, C)), lse=nan_like((B, NH, T)))
    close(out, want_out, rtol=1e-4, what="out")
    want_lse = lse_reference(qkv, NH, causal, mask)
    got_lse = lse.numpy().astype(np.float64)
    assert np.array_equal(np.isneginf(got_lse), np.isneginf(want_lse))
    fin = np.isfinite(want_lse)
    np.testing.assert_allclose(got_lse[fin], want_lse[fin], rtol=1e-5, atol=1e-5)

    d0 = rand(rng, B, T, 3 * C)
    want = ops.attention_backward(dout, qkv, att, NH, causal=causal, dqkv=d0.copy())
    got = ops.flash_attention_backward(D(dout), D(qkv), out, lse, NH, causal=causal, key_mask=dmask,
                                       dqkv=D(d0))
    close(got, want, rtol=1e-4, what="dqkv += grad")
    want = ops.attention_backward(dout, qkv, att, NH, causal=causal, dqkv=np.zeros_like(qkv),
                                  accumulate=False)
    got = ops.flash_attention_backward(D(dout), D(qkv), out, lse, NH, causal=causal, key_mask=dmask,
                                       dqkv=nan_like(qkv.shape), accumulate=False)
    close(got, want, rtol=1e-4, what="dqkv = grad")
    again = ops.flash_attention_backward(D(dout), D(qkv), out, lse, NH, causal=causal, key_mask=dmask,
                                         dqkv=nan_like(qkv.shape), accumulate=False)
    assert same_bits(again, got)


def test_flash_attention_nan_score_poisons_its_row(rng):
    B, T, NH, hs = 1, 40, 1, 32
    qkv = rand(rng, B, T, 3 * NH * hs)
    qkv[0, 5, :hs] = np.nan                      # query 5's q: its scores are NaN
    out, lse = ops.flash_attention_forward(D(qkv), NH, causal=True)
    out, lse = out.numpy(), lse.numpy()
    assert np.isnan(out[0, 5]).all() and np.isnan(lse[0, 0, 5])
    assert np.isfinite(out[0, :5]).all() and np.isfinite(out[0, 6:]).all()


def test_flash_attention_memory_is_linear_in_T(rng):
    """At T = 4096 one head's (T, T) scores would be 64 MiB: forward and
    backward together take a few MiB beyond their inputs and outputs."""
    B, T, NH, hs = 1, 4096, 2, 64
    C = NH * hs
    qkv, dout = D(rand(rng, B, T, 3 * C)), D(rand(rng, B, T, C))
    out, lse, dqkv = cuda.empty((B, T, C)), cuda.empty((B, NH, T)), cuda.zeros((B, T, 3 * C))
    cuda.synchronize()
    free0 = cuda.info()["free_memory"]
    ops.flash_attention_forward(qkv, NH, out=out, lse=lse)
    ops.flash_attention_backward(dout, qkv, out, lse, NH, dqkv=dqkv)
    cuda.synchronize()
    taken = free0 - cuda.info()["free_memory"]
    assert taken < 16 * (1 << 20), f"{taken / (1 << 20):.1f} MiB taken"
    assert np.isfinite(dqkv.numpy()).all()


def test_flash_attention_refuses_what_it_does_not_take(rng):
    with pytest.raises(ShapeError, match="head size"):
        ops.flash_attention_forward(D(rand(rng, 1, 4, 3 * 24)), 1)
    with pytest.raises(DTypeError, match="GPU only"):
        ops.flash_attention_forward(rand(rng, 1, 4, 3 * 32), 1)
