"""The one-call decode step (mg_gpt_decode_step through ops.DecodeStep).

It must give the bits of the separate kernels called in the block's layer
order (x += proj(attn(ln_1(x))); x += fcproj(gelu(fc(ln_2(x)))); ln_f; wte^T)
on any thread count, and fill the KV caches alike; tests/gpt/test_sample.py
checks the same against a GPT's forward_cached(one_call=False). Bad input is
refused by the wrapper before any kernel runs, and by C when called directly.
"""
import numpy as np
import pytest

from conftest import f32
from mingpt_c import _lib, ops
from mingpt_c._lib import check, lib
from mingpt_c.errors import DTypeError, IndexRangeError, MinGPTError, ShapeError

SHAPES = [  # L, C, NH, maxT, V
    (2, 16, 2, 12, 31),
    (1, 24, 3, 9, 50),     # hs = 8, 3C = 72: tails of the vector loops
    (3, 64, 4, 20, 97),
]


def weights(rng, L, C, NH, maxT, V):
    """Random weights and zeroed caches of an L-block GPT, as DecodeStep takes them."""
    shapes = {"ln_1_w": (C,), "ln_1_b": (C,), "attn_w": (3 * C, C), "attn_b": (3 * C,),
              "proj_w": (C, C), "proj_b": (C,), "ln_2_w": (C,), "ln_2_b": (C,),
              "fc_w": (4 * C, C), "fc_b": (4 * C,), "fcproj_w": (C, 4 * C), "fcproj_b": (C,)}
    layers = [{f: f32(rng.normal(size=s) * (1.0 if f.startswith("ln") else 0.3))
               for f, s in shapes.items()} for _ in range(L)]
    caches = lambda: [np.zeros((1, NH, maxT, C // NH), np.float32) for _ in range(L)]
    return dict(layers=layers, kcaches=caches(), vcaches=caches(),
                wte=f32(rng.normal(size=(V, C))), wpe=f32(rng.normal(size=(maxT, C))),
                lnf_w=f32(rng.normal(size=C)), lnf_b=f32(rng.normal(size=C)), n_head=NH)


def separate(w, token, pos, eps=1e-5):
    """The same position through the kernels one by one, in the layer order."""
    x = (w["wte"][token] + w["wpe"][pos]).reshape(1, 1, -1)   # (1, 1, C)
    for lw, k, v in zip(w["layers"], w["kcaches"], w["vcaches"]):
        h, _, _ = ops.layernorm_forward(x, lw["ln_1_w"], lw["ln_1_b"], eps)
        qkv = ops.matmul_forward(h, lw["attn_w"], lw["attn_b"])
        y = ops.attention_decode(qkv, k, v, pos, w["n_head"])
        x = ops.residual_forward(x, ops.matmul_forward(y, lw["proj_w"], lw["proj_b"]))
        h, _, _ = ops.layernorm_forward(x, lw["ln_2_w"], lw["ln_2_b"], eps)
        h = ops.gelu_forward(ops.matmul_forward(h, lw["fc_w"], lw["fc_b"]))
        x = ops.residual_forward(x, ops.matmul_forward(h, lw["fcproj_w"], lw["fcproj_b"]))
    h, _, _ = ops.layernorm_forward(x.reshape(1, -1), w["lnf_w"], w["lnf_b"], eps)
    return ops.matmul_forward(h, w["wte"])   # (1, V)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("L,C,NH,maxT,V", SHAPES)
def test_step_equals_separate_kernels(rng, L, C, NH, maxT, V, threads):
    one = weights(rng, L, C, NH, maxT, V)
    sep = {**one, "kcaches": [k.copy() for k in one["kcaches"]],
           "vcaches": [v.copy() for v in one["vcaches"]]}
    n = _lib.get_num_threads()
    try:
        _lib.set_num_threads(threads)
        step = ops.DecodeStep(**one)
        for pos, tok in enumerate(rng.integers(0, V, size=maxT).tolist()):
            got = step(tok, pos)
            assert got.shape == (1, V)
            assert np.array_equal(got, separate(sep, tok, pos))
    finally:
        _lib.set_num_threads(n)
    for a, b in zip(one["kcaches"] + one["vcaches"], sep["kcaches"] + sep["vcaches"]):
        assert np.array_equal(a, b)


def test_given_workspace(rng):
    """A given work buffer of exactly the size C asks for is enough; a larger
    one gives the same bits; numpy integers pass as token and position."""
    L, C, NH, maxT, V = SHAPES[0]
    need = ops.decode_workspace(C, NH, maxT)
    outs = []
    for size in (need, need + 5):
        w = weights(np.random.default_rng(3), L, C, NH, maxT, V)
        step = ops.DecodeStep(**w, work=np.zeros(size, np.float32))
        outs.append([step(np.int32(t), np.int64(p)).copy() for p, t in enumerate([3, 1, 4])])
    assert all(np.array_equal(a, b) for a, b in zip(*outs))

# ---------------------------------------------------------------- bad input


class _NoKernel:
    """Stands in for the C library in ops: constants and the workspace size
    query pass through; reaching any other C function fails the test."""

    def __init__(self, real):
        self.real = real

    def __getattr__(self, name):
        if name.startswith("mg_") and name != "mg_gpt_decode_workspace":
            raise AssertionError(f"{name} was called: the wrapper should have refused first")
        return getattr(self.real, name)


@pytest.fixture
def no_kernel(monkeypatch):
    monkeypatch.setattr(ops, "lib", _NoKernel(lib))


@pytest.fixture
def w(rng):
    return weights(rng, *SHAPES[0])


def test_refuses_bad_calls_before_c(w, no_kernel):
    L, C, NH, maxT, V = SHAPES[0]
    step = ops.DecodeStep(**w)
    with pytest.raises(IndexRangeError, match=r"token id 31 outside \[0, 31\)"):
        step(V, 0)
    with pytest.raises(IndexRangeError, match="token id -1"):
        step(-1, 0)
    with pytest.raises(ShapeError, match="position 12 does not fit a cache of 12"):
        step(1, maxT)
    with pytest.raises(ShapeError, match="position -1"):
        step(1, -1)
    with pytest.raises(DTypeError, match="token must be an integer"):
        step(1.0, 0)
    with pytest.raises(DTypeError, match="pos must be an integer"):
        step(1, 0.5)


def _edit(w, **change):
    """A copy of the weights with some entries replaced; a key layer_<i>_<field>
    replaces one weight of block i."""
    out = {**w, "layers": [dict(lw) for lw in w["layers"]]}
    for key, val in change.items():
        if key.startswith("layer_"):
            _, i, field = key.split("_", 2)
            out["layers"][int(i)][field] = val
        else:
            out[key] = val
    return out


@pytest.mark.parametrize("change,exc,match", [
    (lambda w: {"layer_1_attn_w": w["layers"][1]["attn_w"].astype(np.float64)},
     DTypeError, "layer 1 attn_w must be float32, got float64"),
    (lambda w: {"layer_0_fc_w": np.asfortranarray(w["layers"][0]["fc_w"])},
     DTypeError, "C-contiguous"),
    (lambda w: {"layer_0_proj_w": w["layers"][0]["proj_w"][:, :-1].copy()},
     ShapeError, r"layer 0 proj_w has shape \(16, 15\), expected \(16, 16\)"),
    (lambda w: {"layer_1_fcproj_b": w["layers"][1]["fcproj_b"][:-1].copy()},
     ShapeError, "layer 1 fcproj_b has shape"),
    (lambda w: {"layer_0_attn_b": None}, DTypeError, "must be a numpy array"),
    (lambda w: {"lnf_b": w["lnf_b"][:-1].copy()}, ShapeError, "lnf_b has shape"),
    (lambda w: {"wte": w["wte"].astype(np.float64)}, DTypeError, "wte must be float32"),
    (lambda w: {"wpe": w["wpe"][:, :-1].copy()}, ShapeError, "do not fit"),
    (lambda w: {"n_head": 3}, ShapeError, "C=16 not divisible by n_head=3"),
    (lambda w: {"n_head": 2.0}, DTypeError, "n_head must be an integer"),
    (lambda w: {"eps": 0.0}, ShapeError, "eps=0.0 must be positive"),
    (lambda w: {"kcaches": w["kcaches"][:1]}, ShapeError, "one of each per block"),
    (lambda w: {"layers": []}, ShapeError, "at least one block"),
    (lambda w: {"vcaches": [v[0].copy() for v in w["vcaches"]]},
     ShapeError, r"vcache 0 has shape \(2, 12, 8\), expected \(1, 2, 12, 8\)"),
    (lambda w: {"kcaches": [np.broadcast_to(np.float32(0), k.shape) for k in w["kcaches"]]},
     DTypeError, "C-contiguous|writable"),
    (lambda w: {"work": np.zeros(ops.decode_workspace(16, 2, 12) - 1, np.float32)},
     ShapeError, "work has 265 floats, needs 266"),
    (lambda w: {"work": np.zeros(1000, np.float64)}, DTypeError, "work must be float32"),
])
def test_refuses_bad_arrays_before_c(w, no_kernel, change, exc, match):
    with pytest.raises(exc, match=match):
        ops.DecodeStep(**_edit(w, **change(w)))


def test_refuses_missing_layer_weight(w, no_kernel):
    del w["layers"][0]["ln_2_b"]
    with pytest.raises(ShapeError, match=r"layer 0 lacks \['ln_2_b'\]"):
        ops.DecodeStep(**w)


def test_read_only_cache_refused(w, no_kernel):
    w["vcaches"][1].flags.writeable = False
    with pytest.raises(DTypeError, match="vcache 1 must be writable"):
        ops.DecodeStep(**w)


def test_workspace_query():
    """The size comes from C, which checks its own arguments."""
    assert ops.decode_workspace(16, 2, 12) == ops.decode_workspace(16, 2, 11) + 2
    with pytest.raises(ShapeError, match="C=0 must be positive"):
        ops.decode_workspace(0, 2, 12)


def test_c_refuses_what_the_wrapper_would(w):
    """A caller that skips the wrapper still gets a status, never a crash."""
    step = ops.DecodeStep(**w)
    call = lambda args, tok, pos, sizes=step.sizes: check(lib.mg_gpt_decode_step(*args, tok, pos,
                                                                                  *sizes))
    with pytest.raises(IndexRangeError, match="token id 31 outside"):
        call(step.args, 31, 0)
    with pytest.raises(ShapeError, match="position 12 does not fit"):
        call(step.args, 1, 12)
    short = list(step.args)
    short[2] = step.work.size - 1
    with pytest.raises(ShapeError, match=f"work has {step.work.size - 1} floats"):
        call(short, 1, 0)
    with pytest.raises(MinGPTError, match="not divisible"):
        call(step.args, 1, 0, (*step.sizes[:3], 3, *step.sizes[4:]))
