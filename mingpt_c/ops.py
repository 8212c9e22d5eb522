"""Checked wrappers of the C kernels, one per kernel, for numpy arrays or
cuda.DeviceArrays.

Each wrapper checks dtype, C-contiguity and shapes (a float64 array handed to
C would be read as float32 garbage without any error), then calls C and turns
its status into an exception. The arrays of one call must all live on one
device: numpy arrays go to mg_<kernel>, DeviceArrays to its twin
mg_cuda_<kernel> (same arguments, device pointers). Outputs are allocated on
that device unless passed in (the model passes preallocated buffers);
backward wrappers ADD into the gradient buffers they are given, and allocate
zeroed ones otherwise. Token ids are range-checked on the host only: device
ids are checked before their upload.
"""
from __future__ import annotations

import numpy as np

from mingpt_c import cuda
from mingpt_c._lib import check, ffi, lib
from mingpt_c.cuda import DeviceArray
from mingpt_c.errors import DTypeError, IndexRangeError, ShapeError

F32 = np.float32
I32 = np.int32
U8 = np.uint8
IGNORE_INDEX = -100
CPU, CUDA = "cpu", "cuda"

# ---------------------------------------------------------------- checks


def _device(**arrays) -> str:
    """The one device ('cpu' or 'cuda') of a call's arrays, named as the
    wrapper's arguments; None and non-arrays are left to the dtype checks."""
    for a in arrays.values():   # the common case first: no DeviceArray at all
        if isinstance(a, DeviceArray):
            break
    else:
        return CPU
    first = first_dev = None
    for name, a in arrays.items():
        if isinstance(a, np.ndarray):
            dev = CPU
        elif isinstance(a, DeviceArray):
            dev = CUDA
        else:
            continue
        if first is None:
            first, first_dev = name, dev
        elif dev != first_dev:
            raise DTypeError(f"{name} is on {dev} but {first} is on {first_dev}: the arrays "
                             "of one call must be on one device (move them with "
                             "cuda.to_device or DeviceArray.numpy())")
    return first_dev


_FNS: dict[tuple[str, str], object] = {}


def _fn(dev: str, name: str):
    """The C function of a kernel on a device: mg_<name> or mg_cuda_<name>."""
    try:
        return _FNS[dev, name]
    except KeyError:
        fn = _FNS[dev, name] = getattr(lib, ("mg_cuda_" if dev == CUDA else "mg_") + name)
        return fn


def _arr(name: str, a, dtype, shape=None, writable=False):
    if isinstance(a, np.ndarray):
        if a.dtype != dtype:
            raise DTypeError(f"{name} must be {np.dtype(dtype).name}, got {a.dtype.name}")
        if not a.flags.c_contiguous:
            raise DTypeError(f"{name} must be C-contiguous (use np.ascontiguousarray)")
        if writable and not a.flags.writeable:
            raise DTypeError(f"{name} must be writable")
    elif isinstance(a, DeviceArray):  # always contiguous and writable
        if a.dtype != dtype:
            raise DTypeError(f"{name} must be {np.dtype(dtype).name}, got {a.dtype.name}")
    else:
        raise DTypeError(f"{name} must be a numpy array or a cuda.DeviceArray, "
                         f"got {type(a).__name__}")
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise ShapeError(f"{name} has shape {tuple(a.shape)}, expected {tuple(shape)}")
    return a


def _f32(name, a, shape=None, writable=False):
    return _arr(name, a, F32, shape, writable)


def _i32(name, a, shape=None):
    return _arr(name, a, I32, shape)


def _out(name, a, shape, zero=False, dev=CPU, dtype=F32):
    """An output buffer: the one given (checked) or a fresh one on dev."""
    if a is None:
        if dev == CUDA:
            return cuda.zeros(shape, dtype) if zero else cuda.empty(shape, dtype)
        return np.zeros(shape, dtype) if zero else np.empty(shape, dtype)
    return _arr(name, a, dtype, shape, writable=True)


def _p(a, ctype="float*"):
    """The C pointer of an array: its numpy buffer or its device address."""
    if a is None:
        return ffi.NULL
    if isinstance(a, DeviceArray):
        return ffi.cast(ctype, a.ptr)
    return ffi.from_buffer(ctype, a)


def check_ids(name: str, ids, hi: int, allow=None) -> None:
    """Every id in [0, hi) (ids equal to allow excepted); a model calls this
    on its host batch before uploading it, since device ids are not checked."""
    if not isinstance(ids, np.ndarray):  # device ids: checked before the upload
        return
    vals = ids if allow is None else ids[ids != allow]
    if vals.size:
        lo_v, hi_v = int(vals.min()), int(vals.max())
        if lo_v < 0 or hi_v >= hi:
            bad = lo_v if lo_v < 0 else hi_v
            raise IndexRangeError(f"{name} contains {bad}, outside [0, {hi})")


def _rows(x) -> tuple[int, int]:
    """(N, C) of an array whose last axis is C and leading axes are rows."""
    if x.ndim < 1:
        raise ShapeError("expected at least one dimension")
    C = x.shape[-1]
    return (x.size // C if C else 0), C

# ---------------------------------------------------------------- buffers


def fill(a, value):
    """a[...] = value, in place; returns a."""
    if isinstance(a, DeviceArray):
        return a.fill(value)
    _arr("a", a, getattr(a, "dtype", None), writable=True)
    a.fill(value)
    return a


def copy(dst, src):
    """dst[...] = src (same shape, dtype and device; on the GPU the two must
    not overlap); returns dst."""
    dev = _device(dst=dst, src=src)
    _arr("src", src, getattr(src, "dtype", None))
    _arr("dst", dst, src.dtype, src.shape, writable=True)
    if dev == CPU:
        np.copyto(dst, src)
    elif src.nbytes and dst.ptr != src.ptr:
        # a device copy between overlapping ranges has no defined result
        if dst.ptr < src.ptr + src.nbytes and src.ptr < dst.ptr + dst.nbytes:
            raise ShapeError("copy: dst and src overlap in device memory")
        check(lib.mg_cuda_memcpy(_p(dst, "void*"), _p(src, "void*"), src.nbytes,
                                 lib.MG_COPY_D2D))
    return dst


def total(a) -> float:
    """The sum of a float32 array, accumulated in float64."""
    dev = _device(a=a)
    _f32("a", a)
    if dev == CPU:
        return float(a.sum(dtype=np.float64))
    out = ffi.new("double*")
    check(lib.mg_cuda_sum(out, _p(a), a.size))
    return float(out[0])

# ---------------------------------------------------------------- matmul


def sgemm(a, b, trans_a=False, trans_b=False, c=None, accumulate=False):
    """c = a' @ b' (+ c if accumulate); a' = a.T if trans_a, b' likewise."""
    dev = _device(a=a, b=b, c=c)
    _f32("a", a), _f32("b", b)
    if a.ndim != 2 or b.ndim != 2:
        raise ShapeError("sgemm takes 2-D arrays")
    M, K = (a.shape[1], a.shape[0]) if trans_a else a.shape
    K2, N = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if K != K2:
        raise ShapeError(f"inner sizes differ: {K} vs {K2}")
    c = _out("c", c, (M, N), zero=accumulate, dev=dev)
    check(_fn(dev, "sgemm")(int(trans_a), int(trans_b), M, N, K, _p(a), a.shape[1],
                            _p(b), b.shape[1], 1.0 if accumulate else 0.0, _p(c), N))
    return c


def matmul_forward(x, w, b=None, out=None):
    """x (..., C) @ w.T (OC, C) + b (OC) -> (..., OC)."""
    dev = _device(inp=x, weight=w, bias=b, out=out)
    _f32("inp", x), _f32("weight", w)
    N, C = _rows(x)
    if w.ndim != 2 or w.shape[1] != C:
        raise ShapeError(f"weight has shape {w.shape}, expected (OC, {C})")
    OC = w.shape[0]
    if b is not None:
        _f32("bias", b, (OC,))
    out = _out("out", out, x.shape[:-1] + (OC,), dev=dev)
    check(_fn(dev, "matmul_forward")(_p(out), _p(x), _p(w), _p(b), N, C, OC))
    return out


def matmul_backward(dout, x, w, dx=None, dw=None, db=None, need_dx=True, need_db=True,
                    overwrite_dx=False):
    """dx += dout @ w, dw += dout.T @ x, db += column sums of dout; with
    overwrite_dx, dx = dout @ w (no zeroing pass over a given dx first; the
    same bits as zeroing and adding)."""
    dev = _device(dout=dout, inp=x, weight=w, dinp=dx, dweight=dw, dbias=db)
    _f32("dout", dout), _f32("inp", x), _f32("weight", w)
    N, C = _rows(x)
    OC = w.shape[0]
    if w.shape != (OC, C):
        raise ShapeError(f"weight has shape {w.shape}, expected (OC, {C})")
    if dout.shape != x.shape[:-1] + (OC,):
        raise ShapeError(f"dout has shape {dout.shape}, expected {x.shape[:-1] + (OC,)}")
    dx = _out("dinp", dx, x.shape, zero=True, dev=dev) if (need_dx or dx is not None) else None
    dw = _out("dweight", dw, w.shape, zero=True, dev=dev)
    db = _out("dbias", db, (OC,), zero=True, dev=dev) if (need_db or db is not None) else None
    check(_fn(dev, "matmul_backward")(_p(dx), _p(dw), _p(db), _p(dout), _p(x), _p(w),
                                      N, C, OC, int(overwrite_dx and dx is not None)))
    return dx, dw, db

# ---------------------------------------------------------------- embedding


def embedding_forward(tokens, wte, wpe, out=None):
    dev = _device(tokens=tokens, wte=wte, wpe=wpe, out=out)
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
    check_ids("tokens", tokens, V)
    out = _out("out", out, (B, T, C), dev=dev)
    check(_fn(dev, "embedding_forward")(_p(out), _p(tokens, "int32_t*"), _p(wte), _p(wpe),
                                        B, T, C, V, maxT))
    return out


def embedding_backward(dout, tokens, V, maxT, dwte=None, dwpe=None, need_dwpe=True):
    """dwte += dout scattered by token id; dwpe += dout summed by position
    (skipped, and None returned, with need_dwpe=False)."""
    dev = _device(dout=dout, tokens=tokens, dwte=dwte, dwpe=dwpe)
    _i32("tokens", tokens)
    if tokens.ndim != 2:
        raise ShapeError(f"tokens must be (B, T), got shape {tokens.shape}")
    B, T = tokens.shape
    C = dout.shape[-1]
    _f32("dout", dout, (B, T, C))
    check_ids("tokens", tokens, V)
    dwte = _out("dwte", dwte, (V, C), zero=True, dev=dev)
    dwpe = _out("dwpe", dwpe, (maxT, C), zero=True, dev=dev) if need_dwpe else None
    check(_fn(dev, "embedding_backward")(_p(dwte), _p(dwpe), _p(dout),
                                         _p(tokens, "int32_t*"), B, T, C, V, maxT))
    return dwte, dwpe

# ---------------------------------------------------------------- layernorm


def layernorm_forward(x, w, b, eps=1e-5, out=None, mean=None, rstd=None):
    dev = _device(inp=x, weight=w, bias=b, out=out, mean=mean, rstd=rstd)
    _f32("inp", x)
    N, C = _rows(x)
    _f32("weight", w, (C,)), _f32("bias", b, (C,))
    out = _out("out", out, x.shape, dev=dev)
    mean = _out("mean", mean, x.shape[:-1], dev=dev)
    rstd = _out("rstd", rstd, x.shape[:-1], dev=dev)
    check(_fn(dev, "layernorm_forward")(_p(out), _p(mean), _p(rstd), _p(x), _p(w), _p(b),
                                        N, C, float(eps)))
    return out, mean, rstd


def layernorm_backward(dout, x, w, mean, rstd, dx=None, dw=None, db=None):
    dev = _device(dout=dout, inp=x, weight=w, mean=mean, rstd=rstd, dinp=dx, dweight=dw,
                  dbias=db)
    _f32("inp", x)
    N, C = _rows(x)
    _f32("dout", dout, x.shape), _f32("weight", w, (C,))
    _f32("mean", mean, x.shape[:-1]), _f32("rstd", rstd, x.shape[:-1])
    dx = _out("dinp", dx, x.shape, zero=True, dev=dev)
    dw = _out("dweight", dw, (C,), zero=True, dev=dev)
    db = _out("dbias", db, (C,), zero=True, dev=dev)
    check(_fn(dev, "layernorm_backward")(_p(dx), _p(dw), _p(db), _p(dout), _p(x), _p(w),
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
    dev = _device(qkv=qkv, key_mask=key_mask, out=out, att=att)
    _f32("qkv", qkv)
    B, T, C = _attn_sizes(qkv, n_head)
    if key_mask is not None:
        _i32("key_mask", key_mask)
        if key_mask.shape != (B, T):
            raise ShapeError(f"key_mask has shape {key_mask.shape}, expected ({B}, {T})")
    out = _out("out", out, (B, T, C), dev=dev)
    att = _out("att", att, (B, n_head, T, T), dev=dev)
    check(_fn(dev, "attention_forward")(_p(out), _p(att), _p(qkv), _p(key_mask, "int32_t*"),
                                        B, T, C, n_head, int(bool(causal))))
    return out, att


def attention_backward(dout, qkv, att, n_head, causal=True, dqkv=None, scratch=None,
                       accumulate=True):
    """dqkv += the gradient (accumulate) or = it; a fresh dqkv is written."""
    dev = _device(dout=dout, qkv=qkv, att=att, dqkv=dqkv, scratch=scratch)
    _f32("qkv", qkv)
    B, T, C = _attn_sizes(qkv, n_head)
    _f32("dout", dout, (B, T, C)), _f32("att", att, (B, n_head, T, T))
    accumulate = accumulate and dqkv is not None
    dqkv = _out("dqkv", dqkv, qkv.shape, dev=dev)
    scratch = _out("scratch", scratch, (B, n_head, T, T), dev=dev)
    check(_fn(dev, "attention_backward")(_p(dqkv), _p(scratch), _p(dout), _p(qkv), _p(att),
                                         B, T, C, n_head, int(bool(causal)), int(accumulate)))
    return dqkv


def attention_decode(qkv, kcache, vcache, pos, n_head, out=None, scratch=None):
    """Appends the k, v of qkv (B, Tn, 3C) at pos..pos+Tn-1 of the caches
    (B, NH, maxT, hs) and returns causal attention of the new queries (B, Tn, C)."""
    dev = _device(qkv=qkv, kcache=kcache, vcache=vcache, out=out, scratch=scratch)
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
    out = _out("out", out, (B, Tn, C), dev=dev)
    scratch = _out("scratch", scratch, (B, n_head, maxT), dev=dev)
    check(_fn(dev, "attention_decode")(_p(out), _p(kcache), _p(vcache), _p(scratch), _p(qkv),
                                       B, Tn, int(pos), maxT, C, n_head))
    return out

# ---------------------------------------------------------------- elementwise


def _unary_forward(name, x, out):
    dev = _device(inp=x, out=out)
    _f32("inp", x)
    out = _out("out", out, x.shape, dev=dev)
    check(_fn(dev, name)(_p(out), _p(x), x.size))
    return out


def _unary_backward(name, dout, x, dx, accumulate):
    """dx += the gradient (accumulate) or = it; a fresh dx is written."""
    dev = _device(dout=dout, inp=x, dinp=dx)
    _f32("inp", x), _f32("dout", dout, x.shape)
    accumulate = accumulate and dx is not None
    dx = _out("dinp", dx, x.shape, dev=dev)
    check(_fn(dev, name)(_p(dx), _p(x), _p(dout), x.size, int(accumulate)))
    return dx


def gelu_forward(x, out=None):
    """GPT-2's tanh-approximated GELU."""
    return _unary_forward("gelu_forward", x, out)


def gelu_backward(dout, x, dx=None, accumulate=True):
    return _unary_backward("gelu_backward", dout, x, dx, accumulate)


def gelu_erf_forward(x, out=None):
    """The exact GELU, x * Phi(x) (BERT, ViT)."""
    return _unary_forward("gelu_erf_forward", x, out)


def gelu_erf_backward(dout, x, dx=None, accumulate=True):
    return _unary_backward("gelu_erf_backward", dout, x, dx, accumulate)


def residual_forward(a, b, out=None):
    dev = _device(inp1=a, inp2=b, out=out)
    _f32("inp1", a), _f32("inp2", b, a.shape)
    out = _out("out", out, a.shape, dev=dev)
    check(_fn(dev, "residual_forward")(_p(out), _p(a), _p(b), a.size))
    return out


def residual_backward(dout, da=None, db=None):
    dev = _device(dout=dout, dinp1=da, dinp2=db)
    _f32("dout", dout)
    da = _out("dinp1", da, dout.shape, zero=True, dev=dev)
    db = _out("dinp2", db, dout.shape, zero=True, dev=dev)
    check(_fn(dev, "residual_backward")(_p(da), _p(db), _p(dout), dout.size))
    return da, db


def dropout_forward(x, p, seed, out=None, mask=None):
    dev = _device(inp=x, out=out, mask=mask)
    _f32("inp", x)
    if not 0.0 <= p < 1.0:
        raise ShapeError(f"dropout probability {p} must be in [0, 1)")
    out = _out("out", out, x.shape, dev=dev)
    mask = _out("mask", mask, x.shape, dev=dev, dtype=U8)
    check(_fn(dev, "dropout_forward")(_p(out), _p(mask, "uint8_t*"), _p(x), x.size, float(p),
                                      int(seed) & 0xFFFFFFFFFFFFFFFF))
    return out, mask


def dropout_backward(dout, mask, p, dx=None, accumulate=True):
    """dx += the gradient (accumulate) or = it; a fresh dx is written."""
    dev = _device(dout=dout, mask=mask, dinp=dx)
    _f32("dout", dout), _arr("mask", mask, U8, dout.shape)
    accumulate = accumulate and dx is not None
    dx = _out("dinp", dx, dout.shape, dev=dev)
    check(_fn(dev, "dropout_backward")(_p(dx), _p(dout), _p(mask, "uint8_t*"), dout.size,
                                       float(p), int(accumulate)))
    return dx

# ---------------------------------------------------------------- loss


def crossentropy_forward(logits, targets, ignore_index=IGNORE_INDEX, losses=None, probs=None):
    """Per-row losses (N,) and softmax probs (N, V). probs may be logits (in place)."""
    dev = _device(logits=logits, targets=targets, losses=losses, probs=probs)
    _f32("logits", logits)
    N, V = _rows(logits)
    _i32("targets", targets)
    if targets.size != N:
        raise ShapeError(f"targets has {targets.size} entries, expected {N} (one per row)")
    check_ids("targets", targets, V, allow=ignore_index)
    losses = _out("losses", losses, logits.shape[:-1], dev=dev)
    probs = _out("probs", probs, logits.shape, dev=dev)
    check(_fn(dev, "crossentropy_forward")(_p(losses), _p(probs), _p(logits),
                                           _p(targets, "int32_t*"), N, V, int(ignore_index)))
    return losses, probs


def crossentropy_backward(dlosses, probs, targets, ignore_index=IGNORE_INDEX, dlogits=None):
    dev = _device(dlosses=dlosses, probs=probs, targets=targets, dlogits=dlogits)
    _f32("probs", probs)
    N, V = _rows(probs)
    _f32("dlosses", dlosses, probs.shape[:-1]), _i32("targets", targets)
    if targets.size != N:
        raise ShapeError(f"targets has {targets.size} entries, expected {N}")
    check_ids("targets", targets, V, allow=ignore_index)
    dlogits = _out("dlogits", dlogits, probs.shape, zero=True, dev=dev)
    check(_fn(dev, "crossentropy_backward")(_p(dlogits), _p(dlosses), _p(probs),
                                            _p(targets, "int32_t*"), N, V, int(ignore_index)))
    return dlogits

# ---------------------------------------------------------------- optimizer


def global_norm(grads) -> float:
    dev = _device(grads=grads)
    _f32("grads", grads)
    out = ffi.new("float*")
    check(_fn(dev, "global_norm")(out, _p(grads), grads.size))
    return float(out[0])


def adamw_update(params, grads, m, v, t, lr, beta1=0.9, beta2=0.999, eps=1e-8,
                 weight_decay=0.0, decay_mask=None, grad_scale=1.0):
    """One AdamW step over flat buffers, in place on params, m, v."""
    dev = _device(params=params, grads=grads, m=m, v=v, decay_mask=decay_mask)
    n = params.size
    _f32("params", params, writable=True), _f32("grads", grads, params.shape)
    _f32("m", m, params.shape, writable=True), _f32("v", v, params.shape, writable=True)
    if decay_mask is not None:
        _arr("decay_mask", decay_mask, U8, params.shape)
    check(_fn(dev, "adamw_update")(_p(params), _p(m), _p(v), _p(grads),
                                   _p(decay_mask, "uint8_t*"), n, float(lr), float(beta1),
                                   float(beta2), float(eps), float(weight_decay),
                                   float(grad_scale), int(t)))
