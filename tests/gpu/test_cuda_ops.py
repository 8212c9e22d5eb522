"""Every CUDA kernel against its CPU twin, through the same ops wrappers.

The same random float32 inputs go to ops.X as numpy arrays (mg_X) and as
DeviceArrays (mg_cuda_X). Outputs the op overwrites start as NaN on the
device, so an element left unwritten shows; backward calls start from
non-zero gradient buffers, so accumulation (+=) is tested, and accumulate=0 /
overwrite_dx variants write over NaN. Sizes: 1, odd (7, 13, 65, 127) and
transformer-like (B=2, T=64, C=128, NH=4; matmul N=256, C=384, OC=1152);
cross-attention with Tq != Tk, Tq = 1 and Tk = 1.

Tolerances: fp32 within rtol 1e-5, with atol = 1e-5 * max(1, max|want|)
where a sum may cancel (conftest.close); purely elementwise results are held
to a small absolute atol instead. TF32 and bf16 products: rtol 1e-3 and 2e-2,
with atol 5e-3 and 2e-2 of the largest magnitude (conftest.MATH_MODES says
why). Determinism: a repeated fp32 call gives the same bits.
"""
import numpy as np
import pytest
from conftest import f32

from mingpt_c import cuda, ops

from .conftest import close, gpu, key_mask, nan_like, rand, same_bits

pytestmark = gpu
D = cuda.to_device
NAN = np.float32(np.nan)


# ---------------------------------------------------------------- matmul

SGEMM_SHAPES = [(1, 1, 1), (7, 13, 65), (65, 127, 13), (127, 65, 256), (256, 1152, 384)]


@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("M,N,K", SGEMM_SHAPES)
def test_sgemm(rng, ta, tb, M, N, K):
    a = rand(rng, *((K, M) if ta else (M, K)))
    b = rand(rng, *((N, K) if tb else (K, N)))
    want = ops.sgemm(a, b, trans_a=ta, trans_b=tb)
    got = ops.sgemm(D(a), D(b), trans_a=ta, trans_b=tb, c=nan_like((M, N)))
    close(got, want, what="c = a'b'")
    c0 = rand(rng, M, N)
    want = ops.sgemm(a, b, trans_a=ta, trans_b=tb, c=c0.copy(), accumulate=True)
    got = ops.sgemm(D(a), D(b), trans_a=ta, trans_b=tb, c=D(c0), accumulate=True)
    close(got, want, what="c += a'b'")


# (shape of x, OC): x (..., C) @ w.T (OC, C)
MATMUL_SHAPES = [((1, 1), 1), ((7, 13), 65), ((13, 127), 7), ((65, 7), 127),
                 ((2, 128, 384), 1152)]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("xshape,OC", MATMUL_SHAPES)
def test_matmul_forward(rng, xshape, OC, bias):
    x, w = rand(rng, *xshape), rand(rng, OC, xshape[-1])
    b = rand(rng, OC) if bias else None
    want = ops.matmul_forward(x, w, b)
    got = ops.matmul_forward(D(x), D(w), D(b) if bias else None,
                             out=nan_like(xshape[:-1] + (OC,)))
    assert isinstance(got, cuda.DeviceArray)
    close(got, want, what="out")


@pytest.mark.parametrize("xshape,OC", MATMUL_SHAPES)
def test_matmul_backward(rng, xshape, OC):
    C = xshape[-1]
    x, w, dout = rand(rng, *xshape), rand(rng, OC, C), rand(rng, *xshape[:-1], OC)
    d0 = [rand(rng, *xshape), rand(rng, OC, C), rand(rng, OC)]   # dinp, dweight, dbias
    want = ops.matmul_backward(dout, x, w, *[a.copy() for a in d0])
    got = ops.matmul_backward(D(dout), D(x), D(w), *[D(a) for a in d0])
    for g, wt, name in zip(got, want, ("dinp", "dweight", "dbias")):
        close(g, wt, what=name)
    # overwrite_dx: dinp's NaN is never read; dweight and dbias still add
    want = ops.matmul_backward(dout, x, w, np.full_like(x, NAN), d0[1].copy(), d0[2].copy(),
                               overwrite_dx=True)
    got = ops.matmul_backward(D(dout), D(x), D(w), nan_like(xshape), D(d0[1]), D(d0[2]),
                              overwrite_dx=True)
    for g, wt, name in zip(got, want, ("dinp (overwritten)", "dweight", "dbias")):
        close(g, wt, what=name)
    # unwanted gradients are NULL pointers
    dx, dw, db = ops.matmul_backward(D(dout), D(x), D(w), dw=D(d0[1]), need_dx=False,
                                     need_db=False)
    assert dx is None and db is None
    close(dw, want[1], what="dweight alone")

# ---------------------------------------------------------------- embedding


@pytest.mark.parametrize("B,T,C,V", [(1, 1, 1, 1), (2, 7, 13, 5), (3, 13, 64, 50),
                                     (2, 64, 128, 7), (4, 65, 7, 3)])
def test_embedding(rng, B, T, C, V):
    """Small V: every token repeats, so the backward's scatter meets collisions."""
    maxT = T + 3
    tokens = rng.integers(0, V, size=(B, T)).astype(np.int32)
    wte, wpe = rand(rng, V, C), rand(rng, maxT, C)
    want = ops.embedding_forward(tokens, wte, wpe)
    got = ops.embedding_forward(D(tokens), D(wte), D(wpe), out=nan_like((B, T, C)))
    close(got, want, rtol=1e-6, what="out")

    dout = rand(rng, B, T, C)
    dwte0, dwpe0 = rand(rng, V, C), rand(rng, maxT, C)
    want = ops.embedding_backward(dout, tokens, V, maxT, dwte0.copy(), dwpe0.copy())
    got = ops.embedding_backward(D(dout), D(tokens), V, maxT, D(dwte0), D(dwpe0))
    close(got[0], want[0], what="dwte")
    close(got[1], want[1], what="dwpe")
    only_te, none = ops.embedding_backward(D(dout), D(tokens), V, maxT, D(dwte0),
                                           need_dwpe=False)
    assert none is None
    close(only_te, want[0], what="dwte without dwpe")


@pytest.mark.parametrize("scale", [8.0, -0.37])
@pytest.mark.parametrize("B,T,C,V", [(1, 1, 1, 1), (2, 13, 64, 7), (2, 65, 127, 50)])
def test_embedding_scaled(rng, B, T, C, V, scale):
    """scale * wte[tokens] + wpe[t]; the backward scales dwte only."""
    maxT = T + 1
    tokens = rng.integers(0, V, size=(B, T)).astype(np.int32)
    wte, wpe = rand(rng, V, C), rand(rng, maxT, C)
    want = ops.embedding_forward(tokens, wte, wpe, scale=scale)
    got = ops.embedding_forward(D(tokens), D(wte), D(wpe), out=nan_like((B, T, C)), scale=scale)
    close(got, want, rtol=1e-6, what="out")
    dout = rand(rng, B, T, C)
    dwte0, dwpe0 = rand(rng, V, C), rand(rng, maxT, C)
    want = ops.embedding_backward(dout, tokens, V, maxT, dwte0.copy(), dwpe0.copy(), scale=scale)
    got = ops.embedding_backward(D(dout), D(tokens), V, maxT, D(dwte0), D(dwpe0), scale=scale)
    close(got[0], want[0], what="dwte")
    close(got[1], want[1], what="dwpe")

# ---------------------------------------------------------------- layernorm


@pytest.mark.parametrize("N,C", [(1, 1), (7, 13), (13, 65), (65, 127), (128, 128), (64, 768)])
def test_layernorm(rng, N, C):
    x = f32(rng.standard_normal((N, C)) * 3 + 2)   # an offset mean tests the variance's form
    w, b = rand(rng, C), rand(rng, C)
    want = ops.layernorm_forward(x, w, b)
    got = ops.layernorm_forward(D(x), D(w), D(b), out=nan_like((N, C)), mean=nan_like((N,)),
                                rstd=nan_like((N,)))
    for g, wt, name in zip(got, want, ("out", "mean", "rstd")):
        close(g, wt, what=name)

    _, mean, rstd = want   # both backwards read the same saved statistics
    dout = rand(rng, N, C)
    d0 = [rand(rng, N, C), rand(rng, C), rand(rng, C)]
    want = ops.layernorm_backward(dout, x, w, mean, rstd, *[a.copy() for a in d0])
    got = ops.layernorm_backward(D(dout), D(x), D(w), D(mean), D(rstd), *[D(a) for a in d0])
    for g, wt, name in zip(got, want, ("dinp", "dweight", "dbias")):
        close(g, wt, what=name)

# ---------------------------------------------------------------- attention

# (B, T, NH, hs): T in {1, 7, 13, 64, 65, 127}, odd head sizes included
ATTENTION_SHAPES = [(1, 1, 1, 1), (2, 7, 1, 3), (2, 13, 4, 8), (1, 65, 2, 17), (2, 64, 4, 32),
                    (1, 127, 2, 64)]



@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("B,T,NH,hs", ATTENTION_SHAPES)
def test_attention(rng, B, T, NH, hs, causal, masked):
    C = NH * hs
    qkv, dout = rand(rng, B, T, 3 * C), rand(rng, B, T, C)
    mask = key_mask(rng, B, T) if masked else None
    want_out, want_att = ops.attention_forward(qkv, NH, causal=causal, key_mask=mask)
    out, att = ops.attention_forward(D(qkv), NH, causal=causal,
                                     key_mask=D(mask) if masked else None,
                                     out=nan_like((B, T, C)), att=nan_like((B, NH, T, T)))
    close(att, want_att, what="att")    # every entry, the masked zeros included
    close(out, want_out, what="out")
    if masked and B > 1:
        assert np.all(out.numpy()[1] == 0.0) and np.all(att.numpy()[1] == 0.0)

    # both backwards read the CPU's att
    d0 = rand(rng, B, T, 3 * C)
    want = ops.attention_backward(dout, qkv, want_att, NH, causal=causal, dqkv=d0.copy())
    got = ops.attention_backward(D(dout), D(qkv), D(want_att), NH, causal=causal, dqkv=D(d0),
                                 scratch=nan_like((B, NH, T, T)))
    close(got, want, what="dqkv += grad")
    want = ops.attention_backward(dout, qkv, want_att, NH, causal=causal,
                                  dqkv=np.full_like(qkv, NAN), accumulate=False)
    got = ops.attention_backward(D(dout), D(qkv), D(want_att), NH, causal=causal,
                                 dqkv=nan_like(qkv.shape), scratch=nan_like((B, NH, T, T)),
                                 accumulate=False)
    close(got, want, what="dqkv = grad")


@pytest.mark.parametrize("chunk", [1, 3, 8])
@pytest.mark.parametrize("B,T,NH,hs", [(2, 13, 2, 8), (1, 20, 4, 3), (2, 9, 1, 64)])
def test_attention_decode(rng, B, T, NH, hs, chunk):
    """Chunks of new positions appended to a KV cache, against the CPU decode;
    cache rows not yet written are NaN on both sides and must not be read."""
    C, maxT = NH * hs, T + 3
    qkv = rand(rng, B, T, 3 * C)
    kc = np.full((B, NH, maxT, hs), NAN, np.float32)
    vc = np.full((B, NH, maxT, hs), NAN, np.float32)
    dkc, dvc = nan_like(kc.shape), nan_like(vc.shape)
    for pos in range(0, T, chunk):
        x = np.ascontiguousarray(qkv[:, pos:pos + chunk])   # (B, Tn, 3C)
        Tn = x.shape[1]
        want = ops.attention_decode(x, kc, vc, pos, NH)
        got = ops.attention_decode(D(x), dkc, dvc, pos, NH, out=nan_like((B, Tn, C)),
                                   scratch=nan_like((B, NH, maxT)))
        close(got, want, what=f"out at pos {pos}")
    gk, gv = dkc.numpy(), dvc.numpy()
    assert same_bits(gk[:, :, :T], kc[:, :, :T]) and same_bits(gv[:, :, :T], vc[:, :, :T])
    assert np.all(np.isnan(gk[:, :, T:])) and np.all(np.isnan(gv[:, :, T:]))

# ---------------------------------------------------------------- cross-attention

# (B, Tq, Tk, NH, hs): Tq != Tk, Tq = 1 (decoding), Tk = 1, odd head sizes
CROSS_SHAPES = [(1, 1, 1, 1, 1), (2, 1, 13, 2, 8), (2, 7, 1, 1, 3), (2, 13, 65, 4, 8),
                (1, 65, 7, 2, 17), (2, 64, 127, 4, 32)]


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("B,Tq,Tk,NH,hs", CROSS_SHAPES)
def test_cross_attention(rng, B, Tq, Tk, NH, hs, masked):
    C = NH * hs
    q, kv, dout = rand(rng, B, Tq, C), rand(rng, B, Tk, 2 * C), rand(rng, B, Tq, C)
    mask = key_mask(rng, B, Tk) if masked else None
    if masked:
        mask[0, 0] = 1       # no causal limit here: only the padded row sees no key
    want_out, want_att = ops.cross_attention_forward(q, kv, NH, key_mask=mask)
    out, att = ops.cross_attention_forward(D(q), D(kv), NH, key_mask=D(mask) if masked else None,
                                           out=nan_like((B, Tq, C)), att=nan_like((B, NH, Tq, Tk)))
    close(att, want_att, what="att")    # every entry, the masked zeros included
    close(out, want_out, what="out")
    if masked and B > 1:
        assert np.all(out.numpy()[1] == 0.0) and np.all(att.numpy()[1] == 0.0)

    # both backwards read the CPU's att
    d0 = (rand(rng, B, Tq, C), rand(rng, B, Tk, 2 * C))
    want = ops.cross_attention_backward(dout, q, kv, want_att, NH, dq=d0[0].copy(),
                                        dkv=d0[1].copy())
    got = ops.cross_attention_backward(D(dout), D(q), D(kv), D(want_att), NH, dq=D(d0[0]),
                                       dkv=D(d0[1]), scratch=nan_like((B, NH, Tq, Tk)))
    close(got[0], want[0], what="dq += grad")
    close(got[1], want[1], what="dkv += grad")
    want = ops.cross_attention_backward(dout, q, kv, want_att, NH, dq=np.full_like(q, NAN),
                                        dkv=np.full_like(kv, NAN), accumulate=False)
    got = ops.cross_attention_backward(D(dout), D(q), D(kv), D(want_att), NH,
                                       dq=nan_like(q.shape), dkv=nan_like(kv.shape),
                                       scratch=nan_like((B, NH, Tq, Tk)), accumulate=False)
    close(got[0], want[0], what="dq = grad")
    close(got[1], want[1], what="dkv = grad")

# ---------------------------------------------------------------- elementwise

SIZES = [1, 7, 13, 65, 127, 100_003]
GELUS = {"gelu": (ops.gelu_forward, ops.gelu_backward),
         "gelu_erf": (ops.gelu_erf_forward, ops.gelu_erf_backward)}


@pytest.mark.parametrize("which", list(GELUS))
@pytest.mark.parametrize("n", SIZES)
def test_gelu(rng, which, n):
    fwd, bwd = GELUS[which]
    x, dout, d0 = rand(rng, n, scale=4.0), rand(rng, n), rand(rng, n)
    # elementwise: a few ulp apart, and ~1e-6 absolute in the negative tail
    close(fwd(D(x), out=nan_like((n,))), fwd(x), atol=1e-5, what="out")
    close(bwd(D(dout), D(x), D(d0)), bwd(dout, x, d0.copy()), atol=1e-5, what="dinp += grad")
    close(bwd(D(dout), D(x), nan_like((n,)), accumulate=False),
          bwd(dout, x, np.full(n, NAN, np.float32), accumulate=False), atol=1e-5,
          what="dinp = grad")
    y = D(x.copy())
    assert fwd(y, out=y) is y   # out may equal inp
    close(y, fwd(x), atol=1e-5, what="in place")


@pytest.mark.parametrize("which", list(GELUS))
def test_gelu_extremes(which):
    fwd, bwd = GELUS[which]
    x = f32([-1e4, -30.0, -5.0, -1e-30, 0.0, 1e-30, 5.0, 30.0, 1e4])
    got, dgot = fwd(D(x)).numpy(), bwd(D(np.ones_like(x)), D(x)).numpy()
    assert np.all(np.isfinite(got)) and np.all(np.isfinite(dgot))
    close(got, fwd(x), atol=1e-6, what="out")
    close(dgot, bwd(np.ones_like(x), x), atol=1e-6, what="dinp")


@pytest.mark.parametrize("n", SIZES)
def test_relu(rng, n):
    """No arithmetic but a compare and 0 + g: the CPU's bits exactly."""
    x, dout, d0 = rand(rng, n, scale=4.0), rand(rng, n), rand(rng, n)
    x[::7] = 0.0
    assert same_bits(ops.relu_forward(D(x), out=nan_like((n,))), ops.relu_forward(x))
    assert same_bits(ops.relu_backward(D(dout), D(x), D(d0)), ops.relu_backward(dout, x, d0.copy()))
    assert same_bits(ops.relu_backward(D(dout), D(x), nan_like((n,)), accumulate=False),
                     ops.relu_backward(dout, x, np.full(n, NAN, np.float32), accumulate=False))
    y = D(x.copy())
    assert ops.relu_forward(y, out=y) is y   # out may equal inp
    assert same_bits(y, ops.relu_forward(x))


def test_relu_specials():
    x = f32([-np.inf, -1.0, -0.0, 0.0, 1e-30, 2.0, np.inf, np.nan])
    g = f32(np.full(x.shape, 3.0))
    assert same_bits(ops.relu_forward(D(x)), ops.relu_forward(x))
    assert same_bits(ops.relu_backward(D(g), D(x)), ops.relu_backward(g, x))


@pytest.mark.parametrize("n", SIZES)
def test_silu(rng, n):
    """Elementwise exp and divide: a few ulp apart (expf against the CPU's
    vector exp), ~1e-7 absolute near the gradient's root."""
    x, dout, d0 = rand(rng, n, scale=4.0), rand(rng, n), rand(rng, n)
    x[:min(n, 6)] = f32([100.0, -100.0, 1e4, -1e4, 0.0, -1.2785])[:min(n, 6)]
    close(ops.silu_forward(D(x), out=nan_like((n,))), ops.silu_forward(x), rtol=1e-6, atol=1e-6,
          what="out")
    close(ops.silu_backward(D(dout), D(x), D(d0)), ops.silu_backward(dout, x, d0.copy()),
          atol=1e-6, what="dinp += grad")
    close(ops.silu_backward(D(dout), D(x), nan_like((n,)), accumulate=False),
          ops.silu_backward(dout, x, np.full(n, NAN, np.float32), accumulate=False), atol=1e-6,
          what="dinp = grad")
    y = D(x.copy())
    assert ops.silu_forward(y, out=y) is y   # out may equal inp
    close(y, ops.silu_forward(x), rtol=1e-6, atol=1e-6, what="in place")


def test_silu_specials():
    """NaN where the CPU (and PyTorch) has NaN: NaN in, -inf forward, +-inf
    gradient; saturated values exact."""
    x = f32([np.nan, -np.inf, np.inf, -3e38, -1e4, -0.0, 0.0, 1e4, 3e38])
    g = f32(np.full(x.shape, 3.0))
    got, dgot = ops.silu_forward(D(x)).numpy(), ops.silu_backward(D(g), D(x)).numpy()
    want, dwant = ops.silu_forward(x), ops.silu_backward(g, x)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.array_equal(np.isnan(dgot), np.isnan(dwant))
    assert np.array_equal(got[3:], want[3:]) and np.array_equal(dgot[3:], dwant[3:])


@pytest.mark.parametrize("n", SIZES)
def test_residual(rng, n):
    a, b, dout = rand(rng, n), rand(rng, n), rand(rng, n)
    close(ops.residual_forward(D(a), D(b), out=nan_like((n,))), ops.residual_forward(a, b),
          rtol=1e-6, atol=0.0, what="out")
    da0, db0 = rand(rng, n), rand(rng, n)
    got = ops.residual_backward(D(dout), D(da0), D(db0))
    want = ops.residual_backward(dout, da0.copy(), db0.copy())
    close(got[0], want[0], rtol=1e-6, atol=0.0, what="dinp1")
    close(got[1], want[1], rtol=1e-6, atol=0.0, what="dinp2")


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("n", [1, 13, 65, 100_003])
def test_dropout(rng, n, p):
    """The mask comes from a hash of (seed, index): the GPU's bits are the CPU's."""
    x, dout, d0 = rand(rng, n), rand(rng, n), rand(rng, n)
    for seed in (7, (1 << 63) + 12345):   # the seed's high bits count too
        want, wmask = ops.dropout_forward(x, p, seed)
        got, gmask = ops.dropout_forward(D(x), p, seed, out=nan_like((n,)),
                                         mask=cuda.empty((n,), np.uint8).fill(255))
        assert same_bits(gmask, wmask), f"seed {seed}: masks differ"
        close(got, want, rtol=1e-6, atol=0.0, what="out")
    close(ops.dropout_backward(D(dout), D(wmask), p, D(d0)),
          ops.dropout_backward(dout, wmask, p, d0.copy()), rtol=1e-6, atol=0.0,
          what="dinp += grad")
    close(ops.dropout_backward(D(dout), D(wmask), p, nan_like((n,)), accumulate=False),
          ops.dropout_backward(dout, wmask, p, np.full(n, NAN, np.float32), accumulate=False),
          rtol=1e-6, atol=0.0, what="dinp = grad")

# ---------------------------------------------------------------- loss

CE_SHAPES = [(1, 1), (1, 7), (7, 13), (13, 65), (5, 127), (5, 1000), (3, 50257), (4, 50304)]


def targets_for(rng, N, V):
    t = rng.integers(0, V, size=N).astype(np.int32)
    if N > 2:
        t[1] = ops.IGNORE_INDEX   # an ignored row: loss 0, no gradient
    return t


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("N,V", CE_SHAPES)
def test_crossentropy(rng, N, V, smoothing):
    logits, targets = rand(rng, N, V, scale=3.0), targets_for(rng, N, V)
    want_l, want_p = ops.crossentropy_forward(logits, targets, smoothing=smoothing)
    got_l, got_p = ops.crossentropy_forward(D(logits), D(targets), losses=nan_like((N,)),
                                            probs=nan_like((N, V)), smoothing=smoothing)
    close(got_l, want_l, what="losses")
    close(got_p, want_p, atol=1e-30, what="probs")   # relative, tiny ones included
    if N > 2:
        assert got_l.numpy()[1] == 0.0

    dl, d0 = rand(rng, N), rand(rng, N, V)
    close(ops.crossentropy_backward(D(dl), D(want_p), D(targets), dlogits=D(d0), smoothing=smoothing),
          ops.crossentropy_backward(dl, want_p, targets, dlogits=d0.copy(), smoothing=smoothing),
          what="dlogits +=")
    fresh = ops.crossentropy_backward(D(dl), D(want_p), D(targets), smoothing=smoothing)
    assert isinstance(fresh, cuda.DeviceArray)
    close(fresh, ops.crossentropy_backward(dl, want_p, targets, smoothing=smoothing), atol=1e-7,
          what="dlogits")


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("V", [9, 50257])
def test_crossentropy_in_place(rng, V, smoothing):
    """probs is logits, then dlogits is probs: one buffer the whole way
    (an ignored row's gradient is written as zeros there)."""
    N = 6
    logits, targets = rand(rng, N, V, scale=3.0), targets_for(rng, N, V)
    dl = f32(np.full(N, 0.5))
    cpu = logits.copy()
    want_l, _ = ops.crossentropy_forward(cpu, targets, probs=cpu, smoothing=smoothing)
    want_p = cpu.copy()
    ops.crossentropy_backward(dl, cpu, targets, dlogits=cpu, smoothing=smoothing)

    buf = D(logits)
    losses, probs = ops.crossentropy_forward(buf, D(targets), probs=buf, smoothing=smoothing)
    assert probs is buf
    close(losses, want_l, what="losses")
    close(buf, want_p, atol=1e-30, what="probs in place")
    assert ops.crossentropy_backward(D(dl), buf, D(targets), dlogits=buf, smoothing=smoothing) is buf
    close(buf, cpu, atol=1e-7, what="dlogits in place")
    assert np.all(buf.numpy()[1] == 0.0)

# ---------------------------------------------------------------- optimizer


@pytest.mark.parametrize("masked", [True, False])
def test_adamw(rng, masked):
    """Three steps over an odd-sized flat buffer, with and without a decay mask."""
    n = 100_003
    p, g = rand(rng, n), rand(rng, n)
    m, v = rand(rng, n, scale=0.1), f32(np.abs(rng.standard_normal(n)) * 0.01)
    mask = (rng.random(n) < 0.5).astype(np.uint8) if masked else None
    dev = [D(a) for a in (p, g, m, v)]
    dmask = D(mask) if masked else None
    kw = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.1,
          "grad_scale": 0.5}
    for t in (1, 2, 3):
        ops.adamw_update(p, g, m, v, t, decay_mask=mask, **kw)
        ops.adamw_update(*dev, t, decay_mask=dmask, **kw)
    for got, want, name in zip((dev[0], dev[2], dev[3]), (p, m, v), ("params", "m", "v")):
        # elementwise: judged against each array's own scale
        close(got, want, atol=1e-5 * float(np.abs(want).max()), what=name)
    assert same_bits(dev[1], g)   # grads are read only


def test_ema_update(rng):
    """The weight average's step: the CPU's bits (both round each float op)."""
    n = 100_003
    avg, x = rand(rng, n), rand(rng, n)
    davg, dx = D(avg), D(x)
    for decay in (0.0, 0.9, 0.999):
        ops.ema_update(avg, x, decay)
        ops.ema_update(davg, dx, decay)
    assert same_bits(davg, avg) and same_bits(dx, x)


@pytest.mark.parametrize("n", [1, 7, 100_003, (1 << 20) + 3])
def test_global_norm(rng, n):
    g = rand(rng, n)
    assert ops.global_norm(D(g)) == pytest.approx(ops.global_norm(g), rel=1e-6)

# ---------------------------------------------------------------- buffers and views


@pytest.mark.parametrize("n", [1, 13, 100_003])
def test_fill_copy_total(rng, n):
    a = rand(rng, n)
    d = D(a)
    assert ops.total(d) == pytest.approx(ops.total(a), rel=1e-12, abs=1e-9)
    c = ops.copy(cuda.empty((n,)), d)
    assert same_bits(c, a)
    assert same_bits(ops.fill(c, 2.5), np.full(n, 2.5, np.float32))
    assert np.all(np.isnan(ops.fill(c, np.nan).numpy()))
    assert same_bits(ops.fill(cuda.empty((n,), np.int32), 0), np.zeros(n, np.int32))
    assert ops.total(ops.fill(c, 0.0)) == 0.0


def test_odd_offset_views(rng):
    """Named views of a flat buffer start at any float offset (a bias of 13
    floats shifts everything after it): kernels take them as they come."""
    N, C = 7, 13
    layout = (("w", (C,)), ("b", (C,)), ("x", (N, C)), ("out", (N, C)))
    n = 3 + sum(int(np.prod(s)) for _, s in layout)
    flat = rand(rng, n)
    buf = D(flat)
    dev, host, off = {}, {}, 3   # the first view starts 12 bytes in
    for name, shape in layout:
        size = int(np.prod(shape))
        dev[name] = buf[off:off + size].reshape(shape)
        host[name] = flat[off:off + size].reshape(shape)
        off += size
    assert ops.global_norm(buf[3:]) == pytest.approx(ops.global_norm(flat[3:]), rel=1e-6)
    assert ops.total(buf[1:]) == pytest.approx(ops.total(flat[1:]), rel=1e-12, abs=1e-9)
    out, _, _ = ops.layernorm_forward(dev["x"], dev["w"], dev["b"], out=dev["out"])
    close(out, ops.layernorm_forward(host["x"], host["w"], host["b"])[0], what="layernorm")
    close(ops.gelu_forward(dev["x"]), ops.gelu_forward(host["x"]), atol=1e-5, what="gelu")
    close(ops.matmul_forward(dev["x"], dev["x"], dev["w"][:N]),
          ops.matmul_forward(host["x"], host["x"], host["w"][:N]), what="matmul")

# ---------------------------------------------------------------- TF32 and bf16


@pytest.mark.parametrize("xshape,OC", [((65, 127), 13), ((2, 128, 384), 1152)])
def test_matmul_reduced_precision(rng, math_mode, xshape, OC):
    mode, rtol, atol_rel = math_mode
    C = xshape[-1]
    x, w, b = rand(rng, *xshape), rand(rng, OC, C), rand(rng, OC)
    dout = rand(rng, *xshape[:-1], OC)
    close(ops.matmul_forward(D(x), D(w), D(b)), ops.matmul_forward(x, w, b), rtol=rtol, atol_rel=atol_rel,
          what=f"{mode} out")
    got = ops.matmul_backward(D(dout), D(x), D(w))
    want = ops.matmul_backward(dout, x, w)
    for g, wt, name in zip(got, want, ("dinp", "dweight", "dbias")):
        close(g, wt, rtol=rtol, atol_rel=atol_rel, what=f"{mode} {name}")


@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_sgemm_reduced_precision(rng, math_mode, ta, tb):
    mode, rtol, atol_rel = math_mode
    M, N, K = 127, 65, 256
    a = rand(rng, *((K, M) if ta else (M, K)))
    b = rand(rng, *((N, K) if tb else (K, N)))
    close(ops.sgemm(D(a), D(b), trans_a=ta, trans_b=tb), ops.sgemm(a, b, trans_a=ta, trans_b=tb),
          rtol=rtol, atol_rel=atol_rel, what=f"{mode} sgemm")


@pytest.mark.parametrize("causal", [True, False])
def test_attention_reduced_precision(rng, math_mode, causal):
    mode, rtol, atol_rel = math_mode
    B, T, NH, hs = 2, 64, 4, 32
    C = NH * hs
    qkv, dout = rand(rng, B, T, 3 * C), rand(rng, B, T, C)
    want_out, want_att = ops.attention_forward(qkv, NH, causal=causal)
    out, att = ops.attention_forward(D(qkv), NH, causal=causal)
    close(att, want_att, rtol=rtol, atol_rel=atol_rel, what=f"{mode} att")
    close(out, want_out, rtol=rtol, atol_rel=atol_rel, what=f"{mode} out")
    close(ops.attention_backward(D(dout), D(qkv), D(want_att), NH, causal=causal),
          ops.attention_backward(dout, qkv, want_att, NH, causal=causal), rtol=rtol, atol_rel=atol_rel,
          what=f"{mode} dqkv")

def test_cross_attention_reduced_precision(rng, math_mode):
    mode, rtol, atol_rel = math_mode
    B, Tq, Tk, NH, hs = 2, 33, 64, 4, 32
    C = NH * hs
    q, kv, dout = rand(rng, B, Tq, C), rand(rng, B, Tk, 2 * C), rand(rng, B, Tq, C)
    want_out, want_att = ops.cross_attention_forward(q, kv, NH)
    out, att = ops.cross_attention_forward(D(q), D(kv), NH)
    close(att, want_att, rtol=rtol, atol_rel=atol_rel, what=f"{mode} att")
    close(out, want_out, rtol=rtol, atol_rel=atol_rel, what=f"{mode} out")
    got = ops.cross_attention_backward(D(dout), D(q), D(kv), D(want_att), NH)
    want = ops.cross_attention_backward(dout, q, kv, want_att, NH)
    close(got[0], want[0], rtol=rtol, atol_rel=atol_rel, what=f"{mode} dq")
    close(got[1], want[1], rtol=rtol, atol_rel=atol_rel, what=f"{mode} dkv")

# ---------------------------------------------------------------- determinism


def test_fp32_repeatable_bits(rng):
    """The same fp32 call twice: the same bits (fixed reduction orders, no
    atomics, one cuBLAS algorithm), so a resumed run matches an unbroken one."""
    def twice(fn):
        a, b = fn(), fn()
        a, b = (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))
        for i, (x, y) in enumerate(zip(a, b)):
            if x is not None:
                assert same_bits(x, y), f"{fn.__name__}: output {i} differs between runs"

    N, C, OC = 256, 384, 1152
    x, w, dout = D(rand(rng, N, C)), D(rand(rng, OC, C)), D(rand(rng, N, OC))
    def matmul_bwd(): return ops.matmul_backward(dout, x, w)
    twice(matmul_bwd)

    xl = rand(rng, 128, 768)
    wl, bl = D(rand(rng, 768)), D(rand(rng, 768))
    _, mean, rstd = ops.layernorm_forward(D(xl), wl, bl)
    dl = D(rand(rng, 128, 768))
    def layernorm_bwd(): return ops.layernorm_backward(dl, D(xl), wl, mean, rstd)
    twice(layernorm_bwd)

    B, T, V = 2, 64, 7
    tokens = D(rng.integers(0, V, size=(B, T)).astype(np.int32))
    de = D(rand(rng, B, T, 128))
    def embedding_bwd(): return ops.embedding_backward(de, tokens, V, T)
    twice(embedding_bwd)

    NH = 4
    qkv, da = D(rand(rng, B, T, 3 * 128)), D(rand(rng, B, T, 128))
    _, att = ops.attention_forward(qkv, NH)
    def attention_fwd(): return ops.attention_forward(qkv, NH)
    def attention_bwd(): return ops.attention_backward(da, qkv, att, NH)
    twice(attention_fwd)
    twice(attention_bwd)

    xq, xkv = D(rand(rng, B, 17, 128)), D(rand(rng, B, T, 256))
    dxq = D(rand(rng, B, 17, 128))
    _, xatt = ops.cross_attention_forward(xq, xkv, NH)
    def cross_attention_fwd(): return ops.cross_attention_forward(xq, xkv, NH)
    def cross_attention_bwd(): return ops.cross_attention_backward(dxq, xq, xkv, xatt, NH)
    twice(cross_attention_fwd)
    twice(cross_attention_bwd)

    g = D(rand(rng, (1 << 20) + 3))
    norms = {ops.global_norm(g) for _ in range(3)}
    assert len(norms) == 1
    totals = {ops.total(g) for _ in range(3)}
    assert len(totals) == 1
