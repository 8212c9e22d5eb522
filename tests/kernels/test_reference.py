"""The float64 references against central finite differences.

Each reference backward must return the gradient of the probe loss
sum(forward(x) * dout). We perturb every input entry by +-eps (float64,
eps = 1e-6) and compare.
"""
import numpy as np
import pytest

import reference as ref
from conftest import assert_close


def numgrad(f, x, eps=1e-6):
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        fp = f()
        x[i] = old - eps
        fm = f()
        x[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


def check(f, x, analytic):
    assert_close(analytic, numgrad(f, x), rtol=1e-6, atol=1e-7)


def test_matmul(rng):
    x, w, b = rng.normal(size=(3, 5)), rng.normal(size=(4, 5)), rng.normal(size=4)
    dout = rng.normal(size=(3, 4))
    probe = lambda: (ref.matmul_forward(x, w, b) * dout).sum()
    dx, dw, db = ref.matmul_backward(dout, x, w)
    check(probe, x, dx), check(probe, w, dw), check(probe, b, db)


def test_embedding(rng):
    V, maxT, C = 7, 6, 3
    tokens = rng.integers(0, V, size=(2, 4))
    wte, wpe = rng.normal(size=(V, C)), rng.normal(size=(maxT, C))
    dout = rng.normal(size=(2, 4, C))
    probe = lambda: (ref.embedding_forward(tokens, wte, wpe) * dout).sum()
    dwte, dwpe = ref.embedding_backward(dout, tokens, V, maxT)
    check(probe, wte, dwte), check(probe, wpe, dwpe)


def test_embedding_scaled(rng):
    V, maxT, C, scale = 7, 6, 3, 1.7
    tokens = rng.integers(0, V, size=(2, 4))
    wte, wpe = rng.normal(size=(V, C)), rng.normal(size=(maxT, C))
    dout = rng.normal(size=(2, 4, C))
    probe = lambda: (ref.embedding_forward(tokens, wte, wpe, scale) * dout).sum()
    dwte, dwpe = ref.embedding_backward(dout, tokens, V, maxT, scale)
    check(probe, wte, dwte), check(probe, wpe, dwpe)


@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("C", [6, 7])
def test_sinusoid_table(interleaved, C):
    """The table against its definition, element by element."""
    pe = ref.sinusoid_table(5, C, interleaved)
    h = (C + 1) // 2
    for t in range(5):
        for i in range(h):
            a = t / 10000 ** (2 * i / C)
            sin_col, cos_col = (2 * i, 2 * i + 1) if interleaved else (i, h + i)
            assert pe[t, sin_col] == pytest.approx(np.sin(a), abs=1e-15)
            if cos_col < C:
                assert pe[t, cos_col] == pytest.approx(np.cos(a), abs=1e-15)


def test_layernorm(rng):
    x, w, b = rng.normal(size=(2, 3, 6)) * 2 + 1, rng.normal(size=6), rng.normal(size=6)
    dout = rng.normal(size=x.shape)
    probe = lambda: (ref.layernorm_forward(x, w, b)[0] * dout).sum()
    dx, dw, db = ref.layernorm_backward(dout, x, w)
    check(probe, x, dx), check(probe, w, dw), check(probe, b, db)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("masked", [False, True])
def test_attention(rng, causal, masked):
    B, T, C, NH = 2, 5, 8, 2
    qkv = rng.normal(size=(B, T, 3 * C))
    mask = None
    if masked:
        mask = np.ones((B, T), np.int32)
        mask[0, 3:] = 0
        mask[1, 0] = 0
    dout = rng.normal(size=(B, T, C))
    probe = lambda: (ref.attention_forward(qkv, NH, causal, mask)[0] * dout).sum()
    check(probe, qkv, ref.attention_backward(dout, qkv, NH, causal, mask))


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("B,Tq,Tk,NH,hs", [(2, 3, 5, 2, 4), (1, 1, 4, 3, 2), (2, 4, 1, 1, 3)])
def test_cross_attention(rng, B, Tq, Tk, NH, hs, masked):
    C = NH * hs
    q, kv = rng.normal(size=(B, Tq, C)), rng.normal(size=(B, Tk, 2 * C))
    mask = None
    if masked:
        mask = np.ones((B, Tk), np.int32)
        mask[0, Tk - 1] = 0 if Tk > 1 else 1
        mask[-1] = 0 if B > 1 else mask[-1]   # a fully padded source row
    dout = rng.normal(size=(B, Tq, C))
    probe = lambda: (ref.cross_attention_forward(q, kv, NH, mask)[0] * dout).sum()
    dq, dkv = ref.cross_attention_backward(dout, q, kv, NH, mask)
    check(probe, q, dq), check(probe, kv, dkv)


def test_relu(rng):
    x = rng.normal(size=(4, 9)) * 3   # no entry within eps of the kink
    x[np.abs(x) < 1e-3] = 0.5
    dout = rng.normal(size=x.shape)
    check(lambda: (ref.relu_forward(x) * dout).sum(), x, ref.relu_backward(dout, x))


def test_silu(rng):
    x = rng.normal(size=(4, 9)) * 4
    x[0, :6] = [-30.0, -1.2785, 0.0, 1e-3, 30.0, -5.0]   # saturated, the gradient's root, 0
    dout = rng.normal(size=x.shape)
    check(lambda: (ref.silu_forward(x) * dout).sum(), x, ref.silu_backward(dout, x))


@pytest.mark.parametrize("fwd,bwd", [(ref.gelu_forward, ref.gelu_backward),
                                     (ref.gelu_erf_forward, ref.gelu_erf_backward)],
                         ids=["gelu", "gelu_erf"])
def test_gelu(rng, fwd, bwd):
    x = rng.normal(size=(4, 9)) * 3
    dout = rng.normal(size=x.shape)
    check(lambda: (fwd(x) * dout).sum(), x, bwd(dout, x))


def test_residual(rng):
    a, b = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    dout = rng.normal(size=a.shape)
    probe = lambda: (ref.residual_forward(a, b) * dout).sum()
    da, db = ref.residual_backward(dout)
    check(probe, a, da), check(probe, b, db)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_crossentropy(rng, smoothing):
    logits = rng.normal(size=(5, 7)) * 2
    targets = np.array([0, 6, -100, 3, 3])
    dl = rng.normal(size=5)
    probe = lambda: (ref.crossentropy_forward(logits, targets, smoothing=smoothing)[0] * dl).sum()
    check(probe, logits, ref.crossentropy_backward(dl, logits, targets, smoothing=smoothing))
    losses, _ = ref.crossentropy_forward(logits, targets, smoothing=smoothing)
    assert losses[2] == 0.0
    # the closed form the kernels use: (lse - z_t) + eps (z_t - mean_j z_j)
    lse = np.log(np.exp(logits).sum(1))
    zt = logits[[0, 1, 3, 4], targets[[0, 1, 3, 4]]]
    want = (lse[[0, 1, 3, 4]] - zt) + smoothing * (zt - logits[[0, 1, 3, 4]].mean(1))
    assert np.allclose(losses[[0, 1, 3, 4]], want, rtol=1e-12)


def test_global_norm(rng):
    g = rng.normal(size=100)
    assert ref.global_norm(g) == pytest.approx(np.linalg.norm(g), rel=1e-12)
