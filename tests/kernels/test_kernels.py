"""C kernels against the float64 references (tests/reference.py).

Inputs are random float32; shapes include 1, odd sizes and sizes that are not
multiples of the vector width. Backward calls start from non-zero gradient
buffers, so accumulation (+=) is tested too. Both GELUs (tanh and exact) share
their tests; PyTorch parity is skipped without torch. Matmul and attention
have their own files (test_matmul.py, test_attention.py).
"""
import numpy as np
import pytest

import reference as ref
from conftest import assert_close, f32
from mingpt_c import ops
from mingpt_c._lib import get_num_threads, set_num_threads
from mingpt_c.errors import DTypeError

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



@pytest.mark.parametrize("which", ["gelu", "gelu_erf", "dropout"])
@pytest.mark.parametrize("n", [1, 13, 70_000])
def test_elementwise_backward_overwrites(rng, which, n):
    """accumulate=False writes the gradient over whatever the buffer held
    (NaN here): the same bits as adding it into zeros."""
    x, dout = f32(rng.normal(size=n) * 3, rng.normal(size=n))
    if which == "dropout":
        _, mask = ops.dropout_forward(x, 0.3, seed=1)
        bwd = lambda dx, acc: ops.dropout_backward(dout, mask, 0.3, dx, accumulate=acc)
    else:
        fn = ops.gelu_backward if which == "gelu" else ops.gelu_erf_backward
        bwd = lambda dx, acc: fn(dout, x, dx, accumulate=acc)
    want = bwd(np.zeros(n, np.float32), True)
    got = bwd(np.full(n, np.nan, np.float32), False)
    assert np.array_equal(got, want)
    assert np.array_equal(bwd(None, True), want)  # a fresh buffer is written, not added to

# ---------------------------------------------------------------- loss


@pytest.mark.parametrize("N,V", [(1, 1), (1, 7), (7, 13), (13, 64), (5, 1000), (3, 50257)])
def test_crossentropy(rng, N, V):
    logits = f32(rng.normal(size=(N, V)) * 3)
    targets = rng.integers(0, V, size=N).astype(np.int32)
    if N > 2:
        targets[1] = -100
    losses, probs = ops.crossentropy_forward(logits, targets)
    want_l, want_p = ref.crossentropy_forward(logits.astype(np.float64), targets)
    assert_close(losses, want_l, rtol=1e-5, atol=1e-6)
    assert_close(probs, want_p, rtol=1e-5, atol=1e-7)
    dl = f32(rng.normal(size=N))
    d0 = nonzero_like(rng, logits)
    got = ops.crossentropy_backward(dl, probs, targets, dlogits=d0.copy())
    want = ref.crossentropy_backward(dl.astype(np.float64), logits.astype(np.float64), targets)
    assert_close(got, d0 + want, rtol=1e-5, atol=1e-6)


def test_crossentropy_in_place(rng):
    logits = f32(rng.normal(size=(6, 9)))
    targets = np.array([0, 8, -100, 3, 3, 1], np.int32)
    want_l, want_p = ref.crossentropy_forward(logits.astype(np.float64), targets)
    buf = logits.copy()
    losses, probs = ops.crossentropy_forward(buf, targets, probs=buf)
    assert probs is buf
    assert_close(losses, want_l, rtol=1e-5, atol=1e-6)
    dl = f32(np.full(6, 0.5))
    ops.crossentropy_backward(dl, buf, targets, dlogits=buf)
    assert_close(buf, ref.crossentropy_backward(dl.astype(np.float64), logits.astype(np.float64),
                                                targets), rtol=1e-5, atol=1e-6)


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
