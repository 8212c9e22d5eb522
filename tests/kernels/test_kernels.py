"""C kernels against the float64 references (tests/reference.py).

Inputs are random float32; shapes include 1, odd sizes and sizes that are not
multiples of the vector width. Backward calls start from non-zero gradient
buffers, so accumulation (+=) is tested too. Both GELUs (tanh and exact) share
their tests; ReLU, the scaled embedding and the sinusoidal position table
(both layouts, against Hugging Face's Marian and XLM tables) have theirs;
PyTorch and transformers parity is skipped without them. Matmul, attention,
cross-attention and SiLU have their own files (test_matmul.py,
test_attention.py, test_cross_attention.py, test_silu.py).
"""
import numpy as np
import pytest

import reference as ref
from conftest import assert_close, f32
from mingpt_c import ops
from mingpt_c._lib import check, ffi, get_num_threads, lib, set_num_threads
from mingpt_c.errors import DTypeError, ShapeError

ROWS = [1, 7, 13, 64]
WIDTHS = [1, 7, 13, 64, 129]


def nonzero_like(rng, a):
    return f32(rng.normal(size=a.shape))

# ---------------------------------------------------------------- embedding


@pytest.mark.parametrize("B,T,C,V", [(1, 1, 1, 1), (2, 7, 13, 11), (3, 13, 64, 50), (4, 64, 7, 3)])
def test_embedding(rng, B, T, C, V):
    maxT = T + 3
    tokens = rng.integers(0, V, size=(B, T)).astype(np.int32)
    wte, wpe = f32(rng.normal(size=(V, C)), rng.normal(size=(maxT, C)))
    out = ops.embedding_forward(tokens, wte, wpe)
    assert_close(out, ref.embedding_forward(tokens, wte, wpe), rtol=1e-6)
    dout = f32(rng.normal(size=(B, T, C)))
    dwte0, dwpe0 = nonzero_like(rng, wte), nonzero_like(rng, wpe)
    dwte, dwpe = ops.embedding_backward(dout, tokens, V, maxT, dwte0.copy(), dwpe0.copy())
    want_te, want_pe = ref.embedding_backward(dout, tokens, V, maxT)
    assert_close(dwte, dwte0 + want_te, rtol=1e-5, atol=1e-5)
    assert_close(dwpe, dwpe0 + want_pe, rtol=1e-5, atol=1e-5)
    only_te, none = ops.embedding_backward(dout, tokens, V, maxT, dwte0.copy(), need_dwpe=False)
    assert none is None and np.array_equal(only_te, dwte)


@pytest.mark.parametrize("scale", [1.0, 8.0, 0.37, -2.5])
@pytest.mark.parametrize("B,T,C,V", [(1, 1, 1, 1), (2, 7, 13, 11), (3, 13, 64, 5)])
def test_embedding_scaled(rng, B, T, C, V, scale):
    """out = scale * wte[tokens] + wpe[t] (the Transformer's sqrt(C)); the
    backward scales dwte only. Scale 1 is the plain float32 sum, bit for bit."""
    maxT = T + 2
    tokens = rng.integers(0, V, size=(B, T)).astype(np.int32)
    wte, wpe = f32(rng.normal(size=(V, C)), rng.normal(size=(maxT, C)))
    out = ops.embedding_forward(tokens, wte, wpe, scale=scale)
    assert_close(out, ref.embedding_forward(tokens, wte, wpe, scale), rtol=1e-6)
    assert np.array_equal(out, np.float32(scale) * wte[tokens] + wpe[None, :T])
    if scale == 1.0:
        assert np.array_equal(out, ops.embedding_forward(tokens, wte, wpe))
    dout = f32(rng.normal(size=(B, T, C)))
    dwte0, dwpe0 = nonzero_like(rng, wte), nonzero_like(rng, wpe)
    dwte, dwpe = ops.embedding_backward(dout, tokens, V, maxT, dwte0.copy(), dwpe0.copy(),
                                        scale=scale)
    want_te, want_pe = ref.embedding_backward(dout, tokens, V, maxT, scale)
    assert_close(dwte, dwte0 + want_te, rtol=1e-5, atol=1e-5, what="dwte")
    assert_close(dwpe, dwpe0 + want_pe, rtol=1e-5, atol=1e-5, what="dwpe")
    if scale == 1.0:
        same = ops.embedding_backward(dout, tokens, V, maxT, dwte0.copy(), dwpe0.copy())
        assert np.array_equal(same[0], dwte) and np.array_equal(same[1], dwpe)


@pytest.mark.parametrize("scale", [np.inf, -np.inf, np.nan])
def test_embedding_scale_must_be_finite(scale):
    tokens = np.zeros((1, 2), np.int32)
    wte, wpe = f32(np.ones((3, 4))), f32(np.ones((5, 4)))
    with pytest.raises(ShapeError, match="scale"):
        ops.embedding_forward(tokens, wte, wpe, scale=scale)
    with pytest.raises(ShapeError, match="scale"):
        ops.embedding_backward(f32(np.ones((1, 2, 4))), tokens, 3, 5, scale=scale)
    # the C core checks too, before writing anything
    out = np.zeros((1, 2, 4), np.float32)
    p = lambda a, t="float*": ffi.from_buffer(t, a)
    rc = lib.mg_embedding_forward(p(out), p(tokens, "int32_t*"), p(wte), p(wpe), scale,
                                  1, 2, 4, 3, 5)
    assert rc == lib.MG_ERR_VALUE and "not finite" in ffi.string(lib.mg_last_error()).decode()
    rc = lib.mg_embedding_backward(p(wte), p(wpe), p(out), p(tokens, "int32_t*"), scale,
                                   1, 2, 4, 3, 5)
    assert rc == lib.MG_ERR_VALUE and np.all(out == 0.0) and np.all(wte == 1.0)

# ---------------------------------------------------------------- sinusoid table


@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("maxT,C", [(1, 1), (7, 2), (13, 7), (64, 64), (300, 512)])
def test_sinusoid_table(maxT, C, interleaved):
    pe = ops.sinusoid_table(maxT, C, interleaved=interleaved)
    assert pe.shape == (maxT, C) and pe.dtype == np.float32
    want = ref.sinusoid_table(maxT, C, interleaved)
    np.testing.assert_array_max_ulp(pe, want.astype(np.float32), maxulp=1)
    assert_close(pe, want, rtol=1e-7, atol=1e-7)


def test_sinusoid_layouts_hold_the_same_columns():
    """The half layout is a permutation of the interleaved one's columns."""
    a, b = ops.sinusoid_table(50, 10, True), ops.sinusoid_table(50, 10, False)
    assert np.array_equal(a[:, 0::2], b[:, :5]) and np.array_equal(a[:, 1::2], b[:, 5:])
    assert np.all(a[0, 0::2] == 0.0) and np.all(a[0, 1::2] == 1.0)


@pytest.mark.parametrize("C", [512, 64, 7, 1])
def test_sinusoid_half_layout_matches_marian(C):
    """Hugging Face's MarianSinusoidalPositionalEmbedding table, computed the
    same way (float64 numpy, then float32): the same floats."""
    pytest.importorskip("torch")
    marian = pytest.importorskip("transformers.models.marian.modeling_marian")
    want = marian.MarianSinusoidalPositionalEmbedding(512, C).create_weight().numpy()
    got = ops.sinusoid_table(512, C, interleaved=False)
    np.testing.assert_array_max_ulp(got, want, maxulp=1)


@pytest.mark.parametrize("C", [512, 7])
def test_sinusoid_interleaved_matches_xlm(C):
    """The paper's layout as Hugging Face's XLM writes it."""
    torch = pytest.importorskip("torch")
    xlm = pytest.importorskip("transformers.models.xlm.modeling_xlm")
    want = xlm.create_sinusoidal_embeddings(512, C, torch.empty(512, C)).numpy()
    got = ops.sinusoid_table(512, C, interleaved=True)
    np.testing.assert_array_max_ulp(got, want, maxulp=1)


def test_sinusoid_bad_arguments():
    for maxT, C in ((0, 4), (4, 0), (-1, 4)):
        with pytest.raises(ShapeError, match="positive"):
            ops.sinusoid_table(maxT, C)
    with pytest.raises(DTypeError, match="integer"):
        ops.sinusoid_table(4.5, 4)
    pe = np.zeros((2, 4), np.float32)
    with pytest.raises(ShapeError, match="interleaved=2"):
        check(lib.mg_sinusoid_table(ffi.from_buffer("float*", pe), 2, 4, 2))
    with pytest.raises(ShapeError, match="C=0"):
        check(lib.mg_sinusoid_table(ffi.from_buffer("float*", pe), 2, 0, 1))
    with pytest.raises(ShapeError, match="NULL"):
        check(lib.mg_sinusoid_table(ffi.NULL, 2, 4, 1))
    assert np.all(pe == 0.0)

# ---------------------------------------------------------------- layernorm


@pytest.mark.parametrize("N", ROWS)
@pytest.mark.parametrize("C", WIDTHS)
def test_layernorm(rng, N, C):
    x = f32(rng.normal(size=(N, C)) * 3 + 2)
    w, b = f32(rng.normal(size=C), rng.normal(size=C))
    out, mean, rstd = ops.layernorm_forward(x, w, b)
    want, wmean, wrstd = ref.layernorm_forward(x.astype(np.float64), w, b)
    assert_close(out, want, rtol=1e-5, atol=1e-5)
    assert_close(mean, wmean, rtol=1e-5, atol=1e-6)
    assert_close(rstd, wrstd, rtol=1e-5, atol=1e-6)
    dout = f32(rng.normal(size=x.shape))
    d0 = [nonzero_like(rng, a) for a in (x, w, b)]
    got = ops.layernorm_backward(dout, x, w, mean, rstd, *[d.copy() for d in d0])
    want = ref.layernorm_backward(dout.astype(np.float64), x.astype(np.float64), w)
    for g, w0, wt, name in zip(got, d0, want, ("dinp", "dweight", "dbias")):
        assert_close(g, w0 + wt, rtol=1e-4, atol=1e-4, what=name)


def test_layernorm_batched_shape(rng):
    x = f32(rng.normal(size=(2, 3, 5)))
    w, b = f32(np.ones(5), np.zeros(5))
    out, mean, rstd = ops.layernorm_forward(x, w, b)
    assert out.shape == x.shape and mean.shape == (2, 3)

# ---------------------------------------------------------------- elementwise


# The two GELUs: GPT-2's tanh approximation and the exact x * Phi(x) (BERT, ViT).
GELUS = {"gelu": (ops.gelu_forward, ops.gelu_backward, ref.gelu_forward, ref.gelu_backward),
         "gelu_erf": (ops.gelu_erf_forward, ops.gelu_erf_backward, ref.gelu_erf_forward,
                      ref.gelu_erf_backward)}


@pytest.mark.parametrize("which", GELUS)
@pytest.mark.parametrize("n", [1, 7, 13, 64, 1000, 70_000])
def test_gelu(rng, which, n):
    fwd, bwd, ref_fwd, ref_bwd = GELUS[which]
    x = f32(rng.normal(size=n) * 4)
    assert_close(fwd(x), ref_fwd(x.astype(np.float64)), rtol=1e-5, atol=1e-6)
    dout = f32(rng.normal(size=n))
    d0 = nonzero_like(rng, x)
    got = bwd(dout, x, d0.copy())
    assert_close(got, d0 + ref_bwd(dout.astype(np.float64), x.astype(np.float64)),
                 rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("which", GELUS)
def test_gelu_in_place_and_extremes(which):
    """Saturation: 0 far left, x far right, finite everywhere (no inf * 0)."""
    fwd, bwd, ref_fwd, _ = GELUS[which]
    x = f32(np.array([-1e4, -30.0, -1.0, 0.0, 1.0, 30.0, 1e4]))
    y = x.copy()
    assert fwd(y, out=y) is y
    assert np.all(np.isfinite(y))
    assert_close(y, ref_fwd(x.astype(np.float64)), rtol=1e-6, atol=1e-6)
    ends = [0, 1, 3, -2, -1]   # -1e4, -30, 0, 30, 1e4
    assert_close(y[ends], [0.0, 0.0, 0.0, 30.0, 1e4], atol=1e-6)
    d = bwd(np.ones_like(x), x)
    assert np.all(np.isfinite(d))
    assert_close(d[ends], [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)


@pytest.mark.parametrize("which", GELUS)
def test_gelu_rejects_float64(which):
    fwd, bwd, _, _ = GELUS[which]
    with pytest.raises(DTypeError, match="float32"):
        fwd(np.zeros(4))
    with pytest.raises(DTypeError, match="float32"):
        bwd(f32(np.zeros(4)), np.zeros(4))


@pytest.mark.parametrize("which,approximate", [("gelu", "tanh"), ("gelu_erf", "none")])
def test_gelu_matches_torch(rng, which, approximate):
    torch = pytest.importorskip("torch")
    fwd, bwd, _, _ = GELUS[which]
    x = f32(rng.normal(size=(5, 33)) * 3)
    dout = f32(rng.normal(size=x.shape))
    t = torch.tensor(x, requires_grad=True)
    y = torch.nn.functional.gelu(t, approximate=approximate)
    y.backward(torch.tensor(dout))
    assert_close(fwd(x), y.detach().numpy(), rtol=1e-6, atol=1e-6)
    assert_close(bwd(dout, x), t.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_gelu_erf_differs_from_tanh_approximation():
    x = f32(np.linspace(-3, 3, 61))
    diff = np.abs(ops.gelu_erf_forward(x) - ops.gelu_forward(x)).max()
    assert 1e-4 < diff < 1e-2  # the two GELUs are close but not the same function


def test_gelu_erf_tail_keeps_relative_accuracy():
    """The exact kernel goes through erfc, so far into the negative tail,
    where 0.5 x (1 + erf) would cancel to 0 in float32, the values stay
    accurate."""
    x = f32(np.linspace(-12, 9, 2001))
    want = ref.gelu_erf_forward(x.astype(np.float64))
    got = ops.gelu_erf_forward(x).astype(np.float64)
    # exp(-x^2/2) amplifies the float32 rounding of x by about x^2: the condition number
    assert np.all(np.abs(got - want) <= 2e-6 * (1 + x.astype(np.float64) ** 2) * np.abs(want))
    dwant = ref.gelu_erf_backward(np.ones(x.shape), x.astype(np.float64))
    dgot = ops.gelu_erf_backward(np.ones_like(x), x).astype(np.float64)
    assert np.all(np.abs(dgot - dwant) <= 2e-6 * np.abs(dwant) + 1e-7)


@pytest.mark.parametrize("n", [1, 7, 13, 64, 1000, 70_000])
def test_relu(rng, n):
    x = f32(rng.normal(size=n) * 4)
    x[::5] = 0.0                       # the kink: gradient 0 there
    y = ops.relu_forward(x)
    assert np.array_equal(y, np.maximum(x, 0))   # exact: no arithmetic
    assert_close(y, ref.relu_forward(x.astype(np.float64)), rtol=0, atol=0)
    dout = f32(rng.normal(size=n))
    d0 = nonzero_like(rng, x)
    got = ops.relu_backward(dout, x, d0.copy())
    assert np.array_equal(got, d0 + np.where(x > 0, dout, np.float32(0)))
    assert_close(got, d0 + ref.relu_backward(dout.astype(np.float64), x.astype(np.float64)),
                 rtol=1e-6, atol=1e-7)


def test_relu_in_place_and_specials():
    """As PyTorch: -0 and NaN pass through the forward; the gradient is 0 at
    exactly 0 and at -0, dout at NaN."""
    x = f32([-np.inf, -1.0, -0.0, 0.0, 1e-30, 2.0, np.inf, np.nan])
    y = x.copy()
    assert ops.relu_forward(y, out=y) is y
    assert np.array_equal(y[:-1], f32([0.0, 0.0, -0.0, 0.0, 1e-30, 2.0, np.inf]))
    assert np.signbit(y[2]) and np.isnan(y[-1])
    d = ops.relu_backward(f32(np.full(x.shape, 3.0)), x)
    assert np.array_equal(d, f32([0, 0, 0, 0, 3, 3, 3, 3]))


def test_relu_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x = f32(rng.normal(size=(5, 33)) * 3)
    x[0, :7] = [0.0, -0.0, np.nan, 1.0, -1.0, np.inf, -np.inf]
    dout = f32(rng.normal(size=x.shape))
    t = torch.tensor(x, requires_grad=True)
    y = torch.relu(t)
    y.backward(torch.tensor(dout))
    assert ops.relu_forward(x).tobytes() == y.detach().numpy().tobytes()
    assert ops.relu_backward(dout, x).tobytes() == t.grad.numpy().tobytes()


@pytest.mark.parametrize("n", [1, 13, 1000])
def test_residual(rng, n):
    a, b = f32(rng.normal(size=n), rng.normal(size=n))
    assert_close(ops.residual_forward(a, b), a.astype(np.float64) + b, rtol=1e-6)
    dout = f32(rng.normal(size=n))
    da0, db0 = nonzero_like(rng, a), nonzero_like(rng, b)
    da, db = ops.residual_backward(dout, da0.copy(), db0.copy())
    assert_close(da, da0 + dout.astype(np.float64), rtol=1e-6)
    assert_close(db, db0 + dout.astype(np.float64), rtol=1e-6)


def test_dropout(rng):
    x = f32(rng.normal(size=100_000))
    p = 0.25
    y, mask = ops.dropout_forward(x, p, seed=7)
    keep = mask.astype(bool)
    assert abs(keep.mean() - (1 - p)) < 0.01
    assert_close(y[keep], x[keep] / (1 - p), rtol=1e-6)
    assert np.all(y[~keep] == 0)
    y2, mask2 = ops.dropout_forward(x, p, seed=7)
    assert np.array_equal(y, y2) and np.array_equal(mask, mask2)
    _, mask3 = ops.dropout_forward(x, p, seed=8)
    assert not np.array_equal(mask, mask3)
    dout = f32(rng.normal(size=x.shape))
    d0 = nonzero_like(rng, x)
    dx = ops.dropout_backward(dout, mask, p, d0.copy())
    assert_close(dx, d0 + np.where(keep, dout / (1 - p), 0.0), rtol=1e-6)



@pytest.mark.parametrize("which", ["gelu", "gelu_erf", "relu", "silu", "dropout"])
@pytest.mark.parametrize("n", [1, 13, 70_000])
def test_elementwise_backward_overwrites(rng, which, n):
    """accumulate=False writes the gradient over whatever the buffer held
    (NaN here): the same bits as adding it into zeros."""
    x, dout = f32(rng.normal(size=n) * 3, rng.normal(size=n))
    if which == "dropout":
        _, mask = ops.dropout_forward(x, 0.3, seed=1)
        bwd = lambda dx, acc: ops.dropout_backward(dout, mask, 0.3, dx, accumulate=acc)
    else:
        fn = {"gelu": ops.gelu_backward, "gelu_erf": ops.gelu_erf_backward,
              "relu": ops.relu_backward, "silu": ops.silu_backward}[which]
        bwd = lambda dx, acc: fn(dout, x, dx, accumulate=acc)
    want = bwd(np.zeros(n, np.float32), True)
    got = bwd(np.full(n, np.nan, np.float32), False)
    assert np.array_equal(got, want)
    assert np.array_equal(bwd(None, True), want)  # a fresh buffer is written, not added to

# ---------------------------------------------------------------- loss


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("N,V", [(1, 1), (1, 7), (7, 13), (13, 64), (5, 1000), (3, 50257)])
def test_crossentropy(rng, N, V, smoothing):
    logits = f32(rng.normal(size=(N, V)) * 3)
    targets = rng.integers(0, V, size=N).astype(np.int32)
    if N > 2:
        targets[1] = -100
    losses, probs = ops.crossentropy_forward(logits, targets, smoothing=smoothing)
    want_l, want_p = ref.crossentropy_forward(logits.astype(np.float64), targets, smoothing=smoothing)
    assert_close(losses, want_l, rtol=1e-5, atol=1e-6)
    assert_close(probs, want_p, rtol=1e-5, atol=1e-7)
    dl = f32(rng.normal(size=N))
    d0 = nonzero_like(rng, logits)
    got = ops.crossentropy_backward(dl, probs, targets, dlogits=d0.copy(), smoothing=smoothing)
    want = ref.crossentropy_backward(dl.astype(np.float64), logits.astype(np.float64), targets,
                                     smoothing=smoothing)
    assert_close(got, d0 + want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_crossentropy_in_place(rng, smoothing):
    logits = f32(rng.normal(size=(6, 9)))
    targets = np.array([0, 8, -100, 3, 3, 1], np.int32)
    want_l, want_p = ref.crossentropy_forward(logits.astype(np.float64), targets, smoothing=smoothing)
    buf = logits.copy()
    losses, probs = ops.crossentropy_forward(buf, targets, probs=buf, smoothing=smoothing)
    assert probs is buf
    assert_close(losses, want_l, rtol=1e-5, atol=1e-6)
    dl = f32(np.full(6, 0.5))
    ops.crossentropy_backward(dl, buf, targets, dlogits=buf, smoothing=smoothing)
    assert_close(buf, ref.crossentropy_backward(dl.astype(np.float64), logits.astype(np.float64),
                                                targets, smoothing=smoothing), rtol=1e-5, atol=1e-6)


def test_crossentropy_smoothing_out_of_range():
    logits, targets = f32(np.zeros((2, 3))), np.array([0, 1], np.int32)
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="smoothing"):
            ops.crossentropy_forward(logits, targets, smoothing=bad)
        with pytest.raises(ValueError, match="smoothing"):
            ops.crossentropy_backward(np.ones(2, np.float32), logits, targets, smoothing=bad)


def test_crossentropy_nan_and_minus_inf_logits():
    """A NaN logit makes its own row's loss NaN (training stops on it) and
    leaves the other rows alone; a -inf logit gets probability exactly 0."""
    logits = f32(np.random.default_rng(0).normal(size=(3, 37)))
    logits[0, 20] = np.nan
    logits[1, 5] = -np.inf
    losses, probs = ops.crossentropy_forward(logits, np.array([1, 2, 3], np.int32))
    assert np.isnan(losses[0]) and np.all(np.isfinite(losses[1:]))
    assert probs[1, 5] == 0.0
    want_l, _ = ref.crossentropy_forward(logits[2:].astype(np.float64), np.array([3], np.int32))
    assert_close(losses[2:], want_l, rtol=1e-5, atol=1e-6)


def test_crossentropy_extreme_logits():
    logits = f32(np.array([[1000.0, -1000.0, 0.0], [-1e4, 1e4, 5.0]]))
    losses, _ = ops.crossentropy_forward(logits, np.array([1, 0], np.int32))
    assert np.all(np.isfinite(losses))
    assert_close(losses, [2000.0, 2e4], rtol=1e-6)

@pytest.mark.parametrize("R,V,nsets,per", [(1, 1, 0, 0), (3, 17, 4, 4), (5, 1000, 15, 64), (4, 58101, 907, 64),
                                          (2, 4097, 64, 64), (6, 33, 0, 0)])
def test_logits_stats(rng, R, V, nsets, per):
    """Row maxima, log-sums against float64 log_softmax, and the strided set
    maxima, exactly, with -inf entries and a row of equal values."""
    z = f32(rng.normal(size=(R, V)) * 4)
    if V > 1:
        z[0, V // 2] = -np.inf
    if R > 2:
        z[2] = 1.5
    zmax, lse, setmax = ops.logits_stats(z, nsets, per)
    z64 = z.astype(np.float64)
    assert np.array_equal(zmax, z.max(1))
    want = np.log(np.exp(z64 - z64.max(1, keepdims=True)).sum(1))
    assert_close(lse, want, rtol=1e-7, atol=1e-7)
    if nsets:
        assert np.array_equal(setmax, z[:, :nsets * per].reshape(R, per, nsets).max(1))
    else:
        assert setmax is None


def test_logits_stats_nan_and_errors():
    z = f32(np.random.default_rng(1).normal(size=(3, 40)))
    z[1, 7] = np.nan
    zmax, lse, setmax = ops.logits_stats(z, 10, 4)
    assert np.isnan(lse[1]) and np.isfinite(lse[[0, 2]]).all()
    assert zmax[1] == np.nanmax(z[1]) and setmax[1, 7] == np.nanmax(z[1, 7:40:10])
    with pytest.raises(ShapeError, match="do not fit"):
        ops.logits_stats(z, 11, 4)
    with pytest.raises(ShapeError):
        ops.logits_stats(z[0])

# ---------------------------------------------------------------- optimizer


@pytest.mark.parametrize("n", [1, 7, 1000, 100_003])
def test_global_norm(rng, n):
    g = f32(rng.normal(size=n))
    assert ops.global_norm(g) == pytest.approx(ref.global_norm(g), rel=1e-6)


def test_adamw(rng):
    n = 1001
    p, g = f32(rng.normal(size=n), rng.normal(size=n))
    m, v = f32(rng.normal(size=n) * 0.1, np.abs(rng.normal(size=n)) * 0.01)
    mask = (rng.random(n) < 0.5).astype(np.uint8)
    want = [a.astype(np.float64) for a in (p, m, v)]
    for t in range(1, 4):
        ops.adamw_update(p, g, m, v, t, lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8,
                         weight_decay=0.1, decay_mask=mask, grad_scale=0.5)
        want = ref.adamw_update(*want[:1], g.astype(np.float64), *want[1:], t, 1e-2, 0.9, 0.95,
                                1e-8, 0.1, mask, 0.5)
        want = list(want)
    for got, w, name in zip((p, m, v), want, "pmv"):
        assert_close(got, w, rtol=1e-5, atol=1e-6, what=name)


@pytest.mark.parametrize("with_mask", [True, False])
def test_adamw_lane_and_tail_agree(rng, with_mask):
    """The update is elementwise: an element gets the same bits whether the
    vector loop or the scalar tail handles it (the arrays shifted by 3 put
    every element on the other side of that line, or in another lane)."""
    n = 21
    arrs = [f32(rng.normal(size=n)), f32(rng.normal(size=n)), f32(rng.normal(size=n) * 0.1),
            f32(np.abs(rng.normal(size=n)) * 0.01)]
    mask = (rng.random(n) < 0.5).astype(np.uint8)
    outs = []
    for shift in (0, 3):
        p, g, m, v = (np.concatenate([f32(np.ones(shift)), a]) for a in arrs)
        mk = np.concatenate([np.ones(shift, np.uint8), mask])
        for t in (1, 2):
            ops.adamw_update(p, g, m, v, t, lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8,
                             weight_decay=0.1, decay_mask=mk if with_mask else None, grad_scale=0.5)
        outs.append([a[shift:] for a in (p, m, v)])
    for a, b in zip(*outs):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("n", [1, 21, 100_003])
def test_ema_update(rng, n):
    """avg = decay avg + (1 - decay) x: the float32 expression, bit for bit at
    any size (vector lanes, tail, threads); decay 0 copies x; x is read only."""
    avg, x = f32(rng.normal(size=n), rng.normal(size=n))
    x0 = x.copy()
    for decay in (0.9, 0.999):
        want = np.float32(decay) * avg + np.float32(1 - np.float32(decay)) * x
        ops.ema_update(avg, x, decay)
        assert np.array_equal(avg, want)
    ops.ema_update(avg, x, 0.0)
    assert np.array_equal(avg, x) and np.array_equal(x, x0)


def test_ema_update_rejects_bad_decay():
    a = f32(np.zeros(4))
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ShapeError, match="must be in \\[0, 1\\]"):
            ops.ema_update(a, a.copy(), bad)

# ---------------------------------------------------------------- determinism


def test_repeatable_bitwise(rng):
    x = f32(rng.normal(size=(64, 129)))
    w, b = f32(rng.normal(size=129), rng.normal(size=129))
    dout = f32(rng.normal(size=x.shape))
    runs = []
    for _ in range(3):
        out, mean, rstd = ops.layernorm_forward(x, w, b)
        grads = ops.layernorm_backward(dout, x, w, mean, rstd)
        runs.append([out, *grads, ops.gelu_forward(x)])
    for r in runs[1:]:
        for a, b_ in zip(runs[0], r):
            assert np.array_equal(a, b_)


def test_thread_count_independent(rng):
    """Kernels here split work by rows or channel blocks only, so even the
    thread count does not change a bit."""
    x = f32(rng.normal(size=(37, 200)))
    w, b = f32(rng.normal(size=200), rng.normal(size=200))
    dout = f32(rng.normal(size=x.shape))
    old = get_num_threads()
    results = []
    try:
        for nt in (1, 2):
            set_num_threads(nt)
            out, mean, rstd = ops.layernorm_forward(x, w, b)
            results.append([out, *ops.layernorm_backward(dout, x, w, mean, rstd)])
    finally:
        set_num_threads(old)
    for a, b_ in zip(*results):
        assert np.array_equal(a, b_)
