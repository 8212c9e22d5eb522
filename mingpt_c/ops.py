"""numpy-facing wrappers of the C kernels, one per kernel.

Each wrapper checks dtype, C-contiguity and shapes (a float64 array handed to
C would be read as float32 garbage without any error), then calls C and turns
its status into an exception. Outputs are allocated unless passed in (the
model passes preallocated buffers); backward wrappers ADD into the gradient
buffers they are given, and allocate zeroed ones otherwise.
"""
from __future__ import annotations

import numpy as np

from ._lib import check, ffi, lib
from .errors import DTypeError, IndexRangeError, ShapeError

F32 = np.float32
I32 = np.int32
IGNORE_INDEX = -100

# ---------------------------------------------------------------- checks


def _arr(name: str, a, dtype, shape=None, writable=False) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise DTypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype != dtype:
        raise DTypeError(f"{name} must be {np.dtype(dtype).name}, got {a.dtype.name}")
    if not a.flags.c_contiguous:
        raise DTypeError(f"{name} must be C-contiguous (use np.ascontiguousarray)")
    if writable and not a.flags.writeable:
        raise DTypeError(f"{name} must be writable")
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise ShapeError(f"{name} has shape {tuple(a.shape)}, expected {tuple(shape)}")
    return a


def _f32(name, a, shape=None, writable=False):
    return _arr(name, a, F32, shape, writable)


def _i32(name, a, shape=None):
    return _arr(name, a, I32, shape)


def _out(name, a, shape, zero=False):
    """An output buffer: the one given (checked) or a fresh one."""
    if a is None:
        return np.zeros(shape, F32) if zero else np.empty(shape, F32)
    return _f32(name, a, shape, writable=True)


def _p(a, ctype="float*"):
    return ffi.NULL if a is None else ffi.from_buffer(ctype, a)


def _ids_in_range(name: str, ids: np.ndarray, hi: int, allow=None) -> None:
    vals = ids if allow is None else ids[ids != allow]
    if vals.size:
        lo_v, hi_v = int(vals.min()), int(vals.max())
        if lo_v < 0 or hi_v >= hi:
            bad = lo_v if lo_v < 0 else hi_v
            raise IndexRangeError(f"{name} contains {bad}, outside [0, {hi})")


def _rows(x: np.ndarray) -> tuple[int, int]:
    """(N, C) of an array whose last axis is C and leading axes are rows."""
    if x.ndim < 1:
        raise ShapeError("expected at least one dimension")
    C = x.shape[-1]
    return (x.size // C if C else 0), C

# ---------------------------------------------------------------- matmul


def sgemm(a, b, trans_a=False, trans_b=False, c=None, accumulate=False):
    """c = a' @ b' (+ c if accumulate); a' = a.T if trans_a, b' likewise."""
    _f32("a", a), _f32("b", b)
    if a.ndim != 2 or b.ndim != 2:
        raise ShapeError("sgemm takes 2-D arrays")
    M, K = (a.shape[1], a.shape[0]) if trans_a else a.shape
    K2, N = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if K != K2:
        raise ShapeError(f"inner sizes differ: {K} vs {K2}")
    c = _out("c", c, (M, N), zero=accumulate)
    check(lib.mg_sgemm(int(trans_a), int(trans_b), M, N, K, _p(a), a.shape[1],
                       _p(b), b.shape[1], 1.0 if accumulate else 0.0, _p(c), N))
    return c


def matmul_forward(x, w, b=None, out=None):
    """x (..., C) @ w.T (OC, C) + b (OC) -> (..., OC)."""
    _f32("inp", x), _f32("weight", w)
    N, C = _rows(x)
    if w.ndim != 2 or w.shape[1] != C:
        raise ShapeError(f"weight has shape {w.shape}, expected (OC, {C})")
    OC = w.shape[0]
    if b is not None:
        _f32("bias", b, (OC,))
    out = _out("out", out, x.shape[:-1] + (OC,))
    check(lib.mg_matmul_forward(_p(out), _p(x), _p(w), _p(b), N, C, OC))
    return out


def matmul_backward(dout, x, w, dx=None, dw=None, db=None, need_dx=True, need_db=True,
                    overwrite_dx=False):
    """dx += dout @ w, dw += dout.T @ x, db += column sums of dout; with
    overwrite_dx, dx = dout @ w (no zeroing pass over a given dx first; the
    same bits as zeroing and adding)."""
    _f32("dout", dout), _f32("inp", x), _f32("weight", w)
    N, C = _rows(x)
    OC = w.shape[0]
    if w.shape != (OC, C):
        raise ShapeError(f"weight has shape {w.shape}, expected (OC, {C})")
    if dout.shape != x.shape[:-1] + (OC,):
        raise ShapeError(f"dout has shape {dout.shape}, expected {x.shape[:-1] + (OC,)}")
    dx = _out("dinp", dx, x.shape, zero=True) if (need_dx or dx is not None) else None
    dw = _out("dweight", dw, w.shape, zero=True)
    db = _out("dbias", db, (OC,), zero=True) if (need_db or db is not None) else None
    check(lib.mg_matmul_backward(_p(dx), _p(dw), _p(db), _p(dout), _p(x), _p(w), N, C, OC,
                                 int(overwrite_dx and dx is not None)))
    return dx, dw, db

# ---------------------------------------------------------------- embedding


def embedding_forward(tokens, wte, wpe, out=None):
    _i32("tokens", tokens), _f32("wte", wte), _f32("wpe", wpe)
    if tokens.ndim != 2:
        raise ShapeError(f"tokens must be (B, T), got shape {tokens.shape}")
    B, T = tokens.shape
    V, C = wte.shape
    maxT = wpe.shape[0]
    if wpe.shape != (maxT, C):
        raise ShapeError(f"wpe has shape {wpe.shape}, expected (maxT, {C})")
    if T > maxT:
        raise ShapeError(f"sequence length {T} exceeds the block size {maxT}")
    _ids_in_range("tokens", tokens, V)
    out = _out("out", out, (B, T, C))
    check(lib.mg_embedding_forward(_p(out), _p(tokens, "int32_t*"), _p(wte), _p(wpe),
                                   B, T, C, V, maxT))
    return out


def embedding_backward(dout, tokens, V, maxT, dwte=None, dwpe=None, need_dwpe=True):
    """dwte += dout scattered by token id; dwpe += dout summed by position
    (skipped, and None returned, with need_dwpe=False)."""
    _i32("tokens", tokens)
    B, T = tokens.shape
    C = dout.shape[-1]
    _f32("dout", dout, (B, T, C))
    _ids_in_range("tokens", tokens, V)
    dwte = _out("dwte", dwte, (V, C), zero=True)
    dwpe = _out("dwpe", dwpe, (maxT, C), zero=True) if need_dwpe else None
    check(lib.mg_embedding_backward(_p(dwte), _p(dwpe), _p(dout),
                                    _p(tokens, "int32_t*"), B, T, C, V, maxT))
    return dwte, dwpe

# ---------------------------------------------------------------- layernorm


def layernorm_forward(x, w, b, eps=1e-5, out=None, mean=None, rstd=None):
    _f32("inp", x)
    N, C = _rows(x)
    _f32("weight", w, (C,)), _f32("bias", b, (C,))
    out = _out("out", out, x.shape)
    mean = _out("mean", mean, x.shape[:-1])
    rstd = _out("rstd", rstd, x.shape[:-1])
    check(lib.mg_layernorm_forward(_p(out), _p(mean), _p(rstd), _p(x), _p(w), _p(b),
                                   N, C, float(eps)))
    return out, mean, rstd


def layernorm_backward(dout, x, w, mean, rstd, dx=None, dw=None, db=None):
    _f32("inp", x)
    N, C = _rows(x)
    _f32("dout", dout, x.shape), _f32("weight", w, (C,))
    _f32("mean", mean, x.shape[:-1]), _f32("rstd", rstd, x.shape[:-1])
    dx = _out("dinp", dx, x.shape, zero=True)
    dw = _out("dweight", dw, (C,), zero=True)
    db = _out("dbias", db, (C,), zero=True)
    check(lib.mg_layernorm_backward(_p(dx), _p(dw), _p(db), _p(dout), _p(x), _p(w),
                                    _p(mean), _p(rstd), N, C))
    return dx, dw, db

# ---------------------------------------------------------------- attention


def _attn_sizes(qkv, n_head):
    if qkv.ndim != 3 or qkv.shape[2] % 3:
        raise ShapeError(f"qkv must be (B, T, 3C), got shape {qkv.shape}")
    B, T, C3 = qkv.shape
    C = C3 // 3
    if n_head <= 0 or C % n_head:
        raise ShapeError(f"C={C} not divisible by n_head={n_head}")
    return B, T, C


def attention_forward(qkv, n_head, causal=True, key_mask=None, out=None, att=None):
    _f32("qkv", qkv)
    B, T, C = _attn_sizes(qkv, n_head)
    if key_mask is not None:
        _i32("key_mask", key_mask)
        if key_mask.shape != (B, T):
            raise ShapeError(f"key_mask has shape {key_mask.shape}, expected ({B}, {T})")
    out = _out("out", out, (B, T, C))
    att = _out("att", att, (B, n_head, T, T))
    check(lib.mg_attention_forward(_p(out), _p(att), _p(qkv), _p(key_mask, "int32_t*"),
                                   B, T, C, n_head, int(bool(causal))))
    return out, att


def attention_backward(dout, qkv, att, n_head, causal=True, dqkv=None, scratch=None,
                       accumulate=True):
    """dqkv += the gradient (accumulate) or = it; a fresh dqkv is written."""
    _f32("qkv", qkv)
    B, T, C = _attn_sizes(qkv, n_head)
    _f32("dout", dout, (B, T, C)), _f32("att", att, (B, n_head, T, T))
    accumulate = accumulate and dqkv is not None
    dqkv = _out("dqkv", dqkv, qkv.shape)
    scratch = _out("scratch", scratch, (B, n_head, T, T))
    check(lib.mg_attention_backward(_p(dqkv), _p(scratch), _p(dout), _p(qkv), _p(att),
                                    B, T, C, n_head, int(bool(causal)), int(accumulate)))
    return dqkv


def attention_decode(qkv, kcache, vcache, pos, n_head, out=None, scratch=None):
    """Appends the k, v of qkv (B, Tn, 3C) at pos..pos+Tn-1 of the caches
    (B, NH, maxT, hs) and returns causal attention of the new queries (B, Tn, C)."""
    _f32("qkv", qkv)
    B, Tn, C = _attn_sizes(qkv, n_head)
    _f32("kcache", kcache, writable=True), _f32("vcache", vcache, writable=True)
    if kcache.ndim != 4 or kcache.shape[:2] != (B, n_head) or kcache.shape[3] != C // n_head:
        raise ShapeError(f"kcache has shape {kcache.shape}, expected ({B}, {n_head}, maxT, {C // n_head})")
    if vcache.shape != kcache.shape:
        raise ShapeError("kcache and vcache shapes differ")
    maxT = kcache.shape[2]
    if pos < 0 or pos + Tn > maxT:
        raise ShapeError(f"positions {pos}..{pos + Tn - 1} do not fit a cache of {maxT}")
    out = _out("out", out, (B, Tn, C))
    scratch = _out("scratch", scratch, (B, n_head, maxT))
    check(lib.mg_attention_decode(_p(out), _p(kcache), _p(vcache), _p(scratch), _p(qkv),
                                  B, Tn, int(pos), maxT, C, n_head))
    return out

# ---------------------------------------------------------------- elementwise


def _unary_forward(fn, x, out):
    _f32("inp", x)
    out = _out("out", out, x.shape)
    check(fn(_p(out), _p(x), x.size))
    return out


def _unary_backward(fn, dout, x, dx, accumulate):
    """dx += the gradient (accumulate) or = it; a fresh dx is written."""
    _f32("inp", x), _f32("dout", dout, x.shape)
    accumulate = accumulate and dx is not None
    dx = _out("dinp", dx, x.shape)
    check(fn(_p(dx), _p(x), _p(dout), x.size, int(accumulate)))
    return dx


def gelu_forward(x, out=None):
    """GPT-2's tanh-approximated GELU."""
    return _unary_forward(lib.mg_gelu_forward, x, out)


def gelu_backward(dout, x, dx=None, accumulate=True):
    return _unary_backward(lib.mg_gelu_backward, dout, x, dx, accumulate)


def gelu_erf_forward(x, out=None):
    """The exact GELU, x * Phi(x) (BERT, ViT)."""
    return _unary_forward(lib.mg_gelu_erf_forward, x, out)


def gelu_erf_backward(dout, x, dx=None, accumulate=True):
    return _unary_backward(lib.mg_gelu_erf_backward, dout, x, dx, accumulate)


def residual_forward(a, b, out=None):
    _f32("inp1", a), _f32("inp2", b, a.shape)
    out = _out("out", out, a.shape)
    check(lib.mg_residual_forward(_p(out), _p(a), _p(b), a.size))
    return out


def residual_backward(dout, da=None, db=None):
    _f32("dout", dout)
    da = _out("dinp1", da, dout.shape, zero=True)
    db = _out("dinp2", db, dout.shape, zero=True)
    check(lib.mg_residual_backward(_p(da), _p(db), _p(dout), dout.size))
    return da, db


def dropout_forward(x, p, seed, out=None, mask=None):
    _f32("inp", x)
    if not 0.0 <= p < 1.0:
        raise ShapeError(f"dropout probability {p} must be in [0, 1)")
    out = _out("out", out, x.shape)
    mask = np.empty(x.shape, np.uint8) if mask is None else _arr("mask", mask, np.uint8, x.shape)
    check(lib.mg_dropout_forward(_p(out), _p(mask, "uint8_t*"), _p(x), x.size, float(p),
                                 int(seed) & 0xFFFFFFFFFFFFFFFF))
    return out, mask


def dropout_backward(dout, mask, p, dx=None, accumulate=True):
    """dx += the gradient (accumulate) or = it; a fresh dx is written."""
    _f32("dout", dout), _arr("mask", mask, np.uint8, dout.shape)
    accumulate = accumulate and dx is not None
    dx = _out("dinp", dx, dout.shape)
    check(lib.mg_dropout_backward(_p(dx), _p(dout), _p(mask, "uint8_t*"), dout.size, float(p),
                                  int(accumulate)))
    return dx

# ---------------------------------------------------------------- loss


def crossentropy_forward(logits, targets, ignore_index=IGNORE_INDEX, losses=None, probs=None):
    """Per-row losses (N,) and softmax probs (N, V). probs may be logits (in place)."""
    _f32("logits", logits)
    N, V = _rows(logits)
    _i32("targets", targets)
    if targets.size != N:
        raise ShapeError(f"targets has {targets.size} entries, expected {N} (one per row)")
    _ids_in_range("targets", targets, V, allow=ignore_index)
    losses = _out("losses", losses, logits.shape[:-1])
    probs = _out("probs", probs, logits.shape)
    check(lib.mg_crossentropy_forward(_p(losses), _p(probs), _p(logits),
                                      _p(targets, "int32_t*"), N, V, int(ignore_index)))
    return losses, probs


def crossentropy_backward(dlosses, probs, targets, ignore_index=IGNORE_INDEX, dlogits=None):
    _f32("probs", probs)
    N, V = _rows(probs)
    _f32("dlosses", dlosses, probs.shape[:-1]), _i32("targets", targets)
    if targets.size != N:
        raise ShapeError(f"targets has {targets.size} entries, expected {N}")
    _ids_in_range("targets", targets, V, allow=ignore_index)
    dlogits = _out("dlogits", dlogits, probs.shape, zero=True)
    check(lib.mg_crossentropy_backward(_p(dlogits), _p(dlosses), _p(probs),
                                       _p(targets, "int32_t*"), N, V, int(ignore_index)))
    return dlogits

# ---------------------------------------------------------------- optimizer


def global_norm(grads) -> float:
    _f32("grads", grads)
    out = ffi.new("float*")
    check(lib.mg_global_norm(out, _p(grads), grads.size))
    return float(out[0])


def adamw_update(params, grads, m, v, t, lr, beta1=0.9, beta2=0.999, eps=1e-8,
                 weight_decay=0.0, decay_mask=None, grad_scale=1.0):
    """One AdamW step over flat buffers, in place on params, m, v."""
    n = params.size
    _f32("params", params, writable=True), _f32("grads", grads, params.shape)
    _f32("m", m, params.shape, writable=True), _f32("v", v, params.shape, writable=True)
    if decay_mask is not None:
        _arr("decay_mask", decay_mask, np.uint8, params.shape)
    check(lib.mg_adamw_update(_p(params), _p(m), _p(v), _p(grads), _p(decay_mask, "uint8_t*"),
                              n, float(lr), float(beta1), float(beta2), float(eps),
                              float(weight_decay), float(grad_scale), int(t)))
