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
ids are checked before their upload. The one-call decode step (DecodeStep),
a weight packed ahead (PackedWeight), the sinusoidal position table and the
BPE trainer (bpe_*) have no device twin and take host arrays only; the fused
attention (flash_attention_*) has no host twin and takes DeviceArrays only.
"""
from __future__ import annotations

import operator
from typing import Mapping, Sequence

import numpy as np

from mingpt_c import cuda
from mingpt_c._lib import check, ffi, lib
from mingpt_c.cuda import DeviceArray
from mingpt_c.errors import DTypeError, IndexRangeError, ShapeError

F32 = np.float32
I32 = np.int32
I64 = np.int64
U8 = np.uint8
IGNORE_INDEX = -100
GEMV_ROWS = lib.MG_GEMV_ROWS      # products of this many rows or fewer do not use a PackedWeight
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


def _index(name: str, x) -> int:
    """x as a Python int: an int or a numpy integer, nothing that would be
    truncated on the way to C."""
    try:
        return operator.index(x)
    except TypeError:
        raise DTypeError(f"{name} must be an integer, got {type(x).__name__}") from None


def _host(**arrays) -> None:
    """Refuses device arrays for kernels that exist on the CPU only."""
    for name, a in arrays.items():
        if isinstance(a, DeviceArray):
            raise DTypeError(f"{name} is on cuda, but this kernel runs on the CPU only "
                             "(move it with DeviceArray.numpy())")


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


class PackedWeight:
    """A host weight (OC, C) packed once the way the C core's product packs
    it on every call, for the many products of a decoding loop. A snapshot:
    after the weight changes, pack it again. The layout belongs to this
    build's SIMD kernel, so it is kept in memory only."""

    def __init__(self, w: np.ndarray):
        _host(weight=w)
        _f32("weight", w)
        if w.ndim != 2:
            raise ShapeError(f"weight has shape {w.shape}, expected (OC, C)")
        OC, C = w.shape
        n = ffi.new("size_t*")
        check(lib.mg_matmul_packed_size(n, C, OC))
        raw = np.empty(n[0] + 16, F32)                         # 64-byte aligned within
        start = (-raw.ctypes.data % 64) // 4
        self.weight, self.data = w, raw[start:start + n[0]]
        check(lib.mg_matmul_pack(_p(self.data), self.data.size, _p(w), C, OC))


def matmul_forward(x, w, b=None, out=None, packed: PackedWeight | None = None):
    """x (..., C) @ w.T (OC, C) + b (OC) -> (..., OC). packed: w packed
    ahead (host arrays only), the same bits without packing w again."""
    dev = _device(inp=x, weight=w, bias=b, out=out)
    _f32("inp", x), _f32("weight", w)
    N, C = _rows(x)
    if w.ndim != 2 or w.shape[1] != C:
        raise ShapeError(f"weight has shape {w.shape}, expected (OC, {C})")
    OC = w.shape[0]
    if b is not None:
        _f32("bias", b, (OC,))
    out = _out("out", out, x.shape[:-1] + (OC,), dev=dev)
    if packed is None:
        check(_fn(dev, "matmul_forward")(_p(out), _p(x), _p(w), _p(b), N, C, OC))
    else:
        _host(inp=x, bias=b, out=out)
        if packed.weight is not w:
            raise ShapeError("packed holds another weight than w")
        check(lib.mg_matmul_forward_packed(_p(out), _p(x), _p(w), _p(packed.data), packed.data.size, _p(b),
                                           N, C, OC))
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


def _scale(scale) -> float:
    """An embedding scale as a finite float."""
    s = float(scale)
    if not np.isfinite(s):
        raise ShapeError(f"embedding scale {scale} must be finite")
    return s


def embedding_forward(tokens, wte, wpe, out=None, scale=1.0):
    """out (B, T, C) = scale * wte[tokens] + wpe[:T] (scale 1: the plain sum,
    bit for bit; sqrt(C) for the Transformer's and Marian's embeddings)."""
    dev = _device(tokens=tokens, wte=wte, wpe=wpe, out=out)
    scale = _scale(scale)
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
                                        scale, B, T, C, V, maxT))
    return out


def embedding_backward(dout, tokens, V, maxT, dwte=None, dwpe=None, need_dwpe=True,
                       scale=1.0):
    """dwte += scale * dout scattered by token id; dwpe += dout summed by
    position (skipped, and None returned, with need_dwpe=False)."""
    dev = _device(dout=dout, tokens=tokens, dwte=dwte, dwpe=dwpe)
    scale = _scale(scale)
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
                                         _p(tokens, "int32_t*"), scale, B, T, C, V, maxT))
    return dwte, dwpe


def sinusoid_table(maxT, C, interleaved=True) -> np.ndarray:
    """The fixed sinusoidal position table (maxT, C) float32, angle
    t / 10000^(2i/C): interleaved (the paper's: sin, cos, sin, ...) or not
    (Marian's: all the sins, then all the cosines). A host array (upload it
    for the GPU)."""
    maxT, C = _index("maxT", maxT), _index("C", C)
    if maxT <= 0 or C <= 0:
        raise ShapeError(f"sinusoid table ({maxT}, {C}): both sizes must be positive")
    pe = np.empty((maxT, C), F32)
    check(lib.mg_sinusoid_table(_p(pe), maxT, C, int(bool(interleaved))))
    return pe

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


FLASH_HEAD_SIZES = (16, 32, 48, 64)


def _device_only(**arrays) -> None:
    """Refuses host arrays for kernels that exist on the GPU only."""
    for name, a in arrays.items():
        if isinstance(a, np.ndarray):
            raise DTypeError(f"{name} is a host array, but this kernel runs on the GPU only "
                             "(move it with cuda.to_device)")


def flash_attention_forward(qkv, n_head, causal=True, key_mask=None, out=None, lse=None):
    """Fused self-attention on the GPU (DeviceArrays only): out (B, T, C) and
    lse (B, NH, T), each query's log-sum-exp, instead of the (B, NH, T, T)
    probabilities; head sizes FLASH_HEAD_SIZES."""
    _device_only(qkv=qkv, key_mask=key_mask, out=out, lse=lse)
    _f32("qkv", qkv)
    B, T, C = _attn_sizes(qkv, n_head)
    if key_mask is not None:
        _i32("key_mask", key_mask, (B, T))
    out = _out("out", out, (B, T, C), dev=CUDA)
    lse = _out("lse", lse, (B, n_head, T), dev=CUDA)
    check(lib.mg_cuda_flash_attention_forward(_p(out), _p(lse), _p(qkv), _p(key_mask, "int32_t*"),
                                              B, T, C, n_head, int(bool(causal))))
    return out, lse


def flash_attention_backward(dout, qkv, out, lse, n_head, causal=True, key_mask=None, dqkv=None,
                             accumulate=True):
    """The fused backward from flash_attention_forward's out and lse: dqkv
    += the gradient (accumulate) or = it; a fresh dqkv is written."""
    _device_only(dout=dout, qkv=qkv, out=out, lse=lse, key_mask=key_mask, dqkv=dqkv)
    _f32("qkv", qkv)
    B, T, C = _attn_sizes(qkv, n_head)
    _f32("dout", dout, (B, T, C)), _f32("out", out, (B, T, C)), _f32("lse", lse, (B, n_head, T))
    if key_mask is not None:
        _i32("key_mask", key_mask, (B, T))
    accumulate = accumulate and dqkv is not None
    dqkv = _out("dqkv", dqkv, qkv.shape, dev=CUDA)
    check(lib.mg_cuda_flash_attention_backward(_p(dqkv), _p(dout), _p(out), _p(lse), _p(qkv),
                                               _p(key_mask, "int32_t*"), B, T, C, n_head,
                                               int(bool(causal)), int(accumulate)))
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

def gather_rows(buf: np.ndarray, src, length: int, scratch: np.ndarray) -> None:
    """Beam search's cache reorder, in place: row r < len(src) of buf (B,
    NH, maxT, hs) takes row src[r]'s first `length` positions; scratch:
    float32 with room for B * NH * length * hs floats (rows that are read
    and overwritten pass through it)."""
    _host(buf=buf, scratch=scratch)
    _f32("buf", buf, writable=True), _f32("scratch", scratch, writable=True)
    if buf.ndim != 4:
        raise ShapeError(f"buf must be (B, NH, maxT, hs), got shape {buf.shape}")
    B, NH, maxT, hs = buf.shape
    if not 0 <= length <= maxT:
        raise ShapeError(f"length {length} outside [0, {maxT}]")
    if scratch.size < B * NH * length * hs:
        raise ShapeError(f"scratch has {scratch.size} floats, needs {B * NH * length * hs}")
    src = np.ascontiguousarray(src, I32)
    check(lib.mg_gather_rows(_p(buf), _p(scratch), _p(src, "int32_t*"), len(src), B, NH, NH * maxT * hs,
                             maxT * hs, length * hs))


# ---------------------------------------------------------------- cross-attention


def _cross_sizes(q, kv, n_head):
    """(B, Tq, Tk, C) of decoder queries q (B, Tq, C) and encoder keys and
    values kv (B, Tk, 2C)."""
    if q.ndim != 3:
        raise ShapeError(f"q must be (B, Tq, C), got shape {q.shape}")
    B, Tq, C = q.shape
    if kv.ndim != 3 or kv.shape[0] != B or kv.shape[2] != 2 * C:
        raise ShapeError(f"kv has shape {kv.shape}, expected ({B}, Tk, {2 * C}) for q of "
                         f"shape {q.shape}")
    if n_head <= 0 or C % n_head:
        raise ShapeError(f"C={C} not divisible by n_head={n_head}")
    return B, Tq, kv.shape[1], C


def cross_attention_forward(q, kv, n_head, key_mask=None, out=None, att=None):
    """Decoder queries q (B, Tq, C) over encoder keys and values kv (B, Tk, 2C)
    = [k | v]; key_mask (B, Tk) int32, 0 = a padded key. Returns out
    (B, Tq, C) and the probabilities att (B, NH, Tq, Tk)."""
    dev = _device(q=q, kv=kv, key_mask=key_mask, out=out, att=att)
    _f32("q", q), _f32("kv", kv)
    n_head = _index("n_head", n_head)
    B, Tq, Tk, C = _cross_sizes(q, kv, n_head)
    if key_mask is not None:
        _i32("key_mask", key_mask)
        if key_mask.shape != (B, Tk):
            raise ShapeError(f"key_mask has shape {key_mask.shape}, expected ({B}, {Tk})")
    out = _out("out", out, (B, Tq, C), dev=dev)
    att = _out("att", att, (B, n_head, Tq, Tk), dev=dev)
    check(_fn(dev, "cross_attention_forward")(_p(out), _p(att), _p(q), _p(kv),
                                              _p(key_mask, "int32_t*"), B, Tq, Tk, C, n_head))
    return out, att


def cross_attention_backward(dout, q, kv, att, n_head, dq=None, dkv=None, scratch=None,
                             accumulate=True):
    """dq (B, Tq, C) and dkv (B, Tk, 2C) += the gradient (accumulate) or = it.
    A buffer not given is allocated: when neither is, both are written, not
    added to; when one is given with accumulate, the other starts at zero."""
    dev = _device(dout=dout, q=q, kv=kv, att=att, dq=dq, dkv=dkv, scratch=scratch)
    _f32("q", q), _f32("kv", kv)
    n_head = _index("n_head", n_head)
    B, Tq, Tk, C = _cross_sizes(q, kv, n_head)
    _f32("dout", dout, (B, Tq, C)), _f32("att", att, (B, n_head, Tq, Tk))
    accumulate = bool(accumulate) and (dq is not None or dkv is not None)
    dq = _out("dq", dq, q.shape, zero=accumulate, dev=dev)
    dkv = _out("dkv", dkv, kv.shape, zero=accumulate, dev=dev)
    scratch = _out("scratch", scratch, (B, n_head, Tq, Tk), dev=dev)
    check(_fn(dev, "cross_attention_backward")(_p(dq), _p(dkv), _p(scratch), _p(dout), _p(q),
                                               _p(kv), _p(att), B, Tq, Tk, C, n_head,
                                               int(accumulate)))
    return dq, dkv

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


def relu_forward(x, out=None):
    """max(x, 0) (NaN and -0 pass, as in PyTorch); out may be x."""
    return _unary_forward("relu_forward", x, out)


def relu_backward(dout, x, dx=None, accumulate=True):
    """dx += the gradient (accumulate) or = it: dout where x > 0 (and where x
    is NaN), 0 where x <= 0, as in PyTorch."""
    return _unary_backward("relu_backward", dout, x, dx, accumulate)


def silu_forward(x, out=None):
    """SiLU ("swish", MarianMT): x * sigmoid(x); out may be x. NaN propagates
    and -inf gives NaN, as in PyTorch's F.silu."""
    return _unary_forward("silu_forward", x, out)


def silu_backward(dout, x, dx=None, accumulate=True):
    """dx += the gradient (accumulate) or = it: dout * s * (1 + x * (1 - s)),
    s = sigmoid(x) (NaN at x = +-inf, as in PyTorch)."""
    return _unary_backward("silu_backward", dout, x, dx, accumulate)


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


def logits_stats(z, nsets: int = 0, per: int = 0):
    """Of logits z (R, V) float32, host: each row's maximum zmax (R,) float32
    and lse = log(sum_j exp(z_j - zmax)) (R,) float64, so that
    log_softmax(z)_j = (z_j - zmax) - lse; with nsets > 0 also setmax
    (R, nsets), the maxima of the strided sets {j, j + nsets, ..., j +
    (per - 1) * nsets} (else None). One C pass; NaNs are skipped by the
    maxima and make lse NaN (as a row without a finite maximum does)."""
    _host(z=z)
    _f32("z", z)
    if z.ndim != 2:
        raise ShapeError(f"z must be (R, V), got shape {z.shape}")
    R, V = z.shape
    zmax, lse = np.empty(R, F32), np.empty(R, np.float64)
    setmax = np.empty((R, nsets), F32) if nsets > 0 else None
    check(lib.mg_logits_stats(_p(zmax), _p(lse, "double*"), _p(setmax), _p(z), R, V,
                              int(nsets), int(per)))
    return zmax, lse, setmax


def crossentropy_forward(logits, targets, ignore_index=IGNORE_INDEX, losses=None, probs=None,
                         smoothing=0.0):
    """Per-row losses (N,) and softmax probs (N, V). probs may be logits (in
    place). smoothing: label smoothing eps in [0, 1), the target (1 - eps)
    onehot + eps / V (PyTorch's label_smoothing); ignored rows lose 0."""
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
                                           _p(targets, "int32_t*"), N, V, int(ignore_index),
                                           float(smoothing)))
    return losses, probs


def crossentropy_backward(dlosses, probs, targets, ignore_index=IGNORE_INDEX, dlogits=None,
                          smoothing=0.0):
    """dlogits (N, V) += dlosses * (probs - the smoothed target); in place
    (written, not added to) when dlogits is probs."""
    dev = _device(dlosses=dlosses, probs=probs, targets=targets, dlogits=dlogits)
    _f32("probs", probs)
    N, V = _rows(probs)
    _f32("dlosses", dlosses, probs.shape[:-1]), _i32("targets", targets)
    if targets.size != N:
        raise ShapeError(f"targets has {targets.size} entries, expected {N}")
    check_ids("targets", targets, V, allow=ignore_index)
    dlogits = _out("dlogits", dlogits, probs.shape, zero=True, dev=dev)
    check(_fn(dev, "crossentropy_backward")(_p(dlogits), _p(dlosses), _p(probs),
                                            _p(targets, "int32_t*"), N, V, int(ignore_index),
                                            float(smoothing)))
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


def ema_update(avg, x, decay: float):
    """avg = decay * avg + (1 - decay) * x over flat buffers, in place on avg:
    one step of an exponential moving average of the weights."""
    dev = _device(avg=avg, x=x)
    _f32("avg", avg, writable=True), _f32("x", x, avg.shape)
    check(_fn(dev, "ema_update")(_p(avg), _p(x), avg.size, float(decay)))

# ---------------------------------------------------------------- decode

# The fields of mg_decode_layer that hold one block's weights, in order.
DECODE_LAYER_FIELDS = ("ln_1_w", "ln_1_b", "attn_w", "attn_b", "proj_w", "proj_b",
                       "ln_2_w", "ln_2_b", "fc_w", "fc_b", "fcproj_w", "fcproj_b")


def decode_workspace(C: int, n_head: int, maxT: int) -> int:
    """The floats of scratch the one-call decode step needs (C counts them)."""
    n = ffi.new("size_t*")
    check(lib.mg_gpt_decode_workspace(n, _index("C", C), _index("n_head", n_head),
                                      _index("maxT", maxT)))
    return int(n[0])


class DecodeStep:
    """mg_gpt_decode_step prepared once per KV cache: one position of a
    pre-LN GPT for one sequence, the whole stack in one C call. Every array
    is checked and every pointer taken here; a call checks only the token id
    and the position, so it costs one C call a token.

    layers: per block a mapping of DECODE_LAYER_FIELDS to its weights (linear
    weights (out, in)); kcaches, vcaches: per block (1, NH, maxT, hs), written
    at each call's position; wte (V, C), wpe (maxT, C), lnf_w, lnf_b (C).
    work: scratch of at least decode_workspace(C, NH, maxT) floats (allocated
    if not given). CPU arrays only. The arrays are held, not copied: the
    step sees later changes to the weights and fills the given caches."""

    def __init__(self, layers: Sequence[Mapping[str, np.ndarray]], kcaches, vcaches, wte, wpe,
                 lnf_w, lnf_b, n_head: int, eps: float = 1e-5, work=None):
        _host(wte=wte, wpe=wpe, lnf_w=lnf_w, lnf_b=lnf_b, work=work)
        _f32("wte", wte), _f32("wpe", wpe)
        if wte.ndim != 2 or wpe.ndim != 2 or wpe.shape[1] != wte.shape[1]:
            raise ShapeError(f"wte (V, C) and wpe (maxT, C) do not fit: shapes {wte.shape}, "
                             f"{wpe.shape}")
        (V, C), maxT, NH = wte.shape, wpe.shape[0], _index("n_head", n_head)
        if min(V, C, maxT) <= 0:
            raise ShapeError(f"empty embedding: wte {wte.shape}, wpe {wpe.shape}")
        if NH <= 0 or C % NH:
            raise ShapeError(f"C={C} not divisible by n_head={NH}")
        if not eps > 0:
            raise ShapeError(f"eps={eps} must be positive")
        L = len(layers)
        if L == 0 or len(kcaches) != L or len(vcaches) != L:
            raise ShapeError(f"{L} layers, {len(kcaches)} kcaches and {len(vcaches)} vcaches: "
                             "need one of each per block, at least one block")
        _f32("lnf_w", lnf_w, (C,)), _f32("lnf_b", lnf_b, (C,))
        shapes = dict(zip(DECODE_LAYER_FIELDS, [(C,), (C,), (3 * C, C), (3 * C,), (C, C), (C,),
                                               (C,), (C,), (4 * C, C), (4 * C,), (C, 4 * C), (C,)]))
        cache_shape = (1, NH, maxT, C // NH)
        for i, (lw, k, v) in enumerate(zip(layers, kcaches, vcaches)):
            missing = set(DECODE_LAYER_FIELDS) - set(lw)
            if missing:
                raise ShapeError(f"layer {i} lacks {sorted(missing)}")
            for f in DECODE_LAYER_FIELDS:
                _host(**{f"layer {i} {f}": lw[f]})
                _f32(f"layer {i} {f}", lw[f], shapes[f])
            _host(kcache=k, vcache=v)
            _f32(f"kcache {i}", k, cache_shape, writable=True)
            _f32(f"vcache {i}", v, cache_shape, writable=True)
        need = decode_workspace(C, NH, maxT)
        if work is None:
            work = np.zeros(need, F32)
        _f32("work", work, writable=True)
        if work.size < need:
            raise ShapeError(f"work has {work.size} floats, needs {need} "
                             "(size it with decode_workspace)")
        self.V, self.maxT = V, maxT
        self.logits = np.zeros((1, V), F32)   # each call's result, overwritten by the next
        self.work = work
        self._keep = []   # the struct holds raw pointers: keep their buffers' cdata alive

        def P(a, ctype="float*"):
            self._keep.append(p := _p(a, ctype))
            return p

        self.layers = ffi.new("mg_decode_layer[]", L)
        for layer, lw, k, v in zip(self.layers, layers, kcaches, vcaches):
            for f in DECODE_LAYER_FIELDS:
                setattr(layer, f, P(lw[f]))
            layer.kcache, layer.vcache = P(k), P(v)
        self.args = (P(self.logits), P(work), work.size, self.layers, P(wte), P(wpe), P(lnf_w),
                     P(lnf_b))
        self.sizes = (L, maxT, C, NH, V, float(eps))

    def __call__(self, token: int, pos: int) -> np.ndarray:
        """token at position pos -> logits (1, V), in a buffer the next call
        overwrites; the block caches get the position's k and v."""
        token, pos = _index("token", token), _index("pos", pos)
        if not 0 <= token < self.V:
            raise IndexRangeError(f"token id {token} outside [0, {self.V})")
        if not 0 <= pos < self.maxT:
            raise ShapeError(f"position {pos} does not fit a cache of {self.maxT} "
                             "(reset the cache)")
        check(lib.mg_gpt_decode_step(*self.args, token, pos, *self.sizes))
        return self.logits

# ---------------------------------------------------------------- bpe

BPE_PATTERNS = {"gpt2": lib.MG_BPE_PATTERN_GPT2, "gpt4": lib.MG_BPE_PATTERN_GPT4,
                "none": lib.MG_BPE_PATTERN_LINES}
BPE_MAX_VOCAB = int(lib.MG_BPE_MAX_VOCAB)        # token ids, specials included
BPE_N_CODEPOINTS = int(lib.MG_BPE_N_CODEPOINTS)  # entries of the class table
BPE_CLASS_LETTER = int(lib.MG_BPE_CLASS_LETTER)  # \p{L}
BPE_CLASS_NUMBER = int(lib.MG_BPE_CLASS_NUMBER)  # \p{N}
BPE_CLASS_SPACE = int(lib.MG_BPE_CLASS_SPACE)    # \s


def bpe_pattern(pattern: str) -> int:
    """The C id of a pre-split pattern name ("gpt2", "gpt4", "none")."""
    if not isinstance(pattern, str) or pattern not in BPE_PATTERNS:
        raise ShapeError(f"unknown pattern {pattern!r}: use one of {sorted(BPE_PATTERNS)}")
    return BPE_PATTERNS[pattern]


def _bytes(name: str, data) -> int:
    """The length of a bytes or bytearray argument."""
    if not isinstance(data, (bytes, bytearray)):
        raise DTypeError(f"{name} must be bytes or bytearray, got {type(data).__name__}")
    return len(data)


def _classes(classes) -> None:
    _host(classes=classes)
    _arr("classes", classes, U8, (BPE_N_CODEPOINTS,))


def _bounds(name: str, offsets, n: int | None, nbytes: int, what: str) -> int:
    """Checks offsets (n + 1,) int64: non-decreasing bounds inside a buffer of
    nbytes; returns n (taken from offsets when None)."""
    _host(**{name: offsets})
    _arr(name, offsets, I64)
    if offsets.ndim != 1 or offsets.size < 1:
        raise ShapeError(f"{name} must be 1-D with n + 1 >= 1 entries, got shape {offsets.shape}")
    if n is None:
        n = offsets.size - 1
    elif offsets.shape != (n + 1,):
        raise ShapeError(f"{name} has shape {offsets.shape}, expected ({n + 1},) for {n} {what}s")
    lo, hi = int(offsets[0]), int(offsets[-1])
    if lo < 0 or hi > nbytes:
        raise ShapeError(f"{name} span {lo}..{hi}, outside the {nbytes} bytes given")
    if n and int(np.diff(offsets).min()) < 0:
        k = int(np.argmax(np.diff(offsets) < 0))
        raise ShapeError(f"{name} must not decrease ({what} {k})")
    return n


def _merges_buffer(n_merges, min_frequency, init_merges) -> tuple[np.ndarray, int, int, int]:
    """Checks the training sizes; returns the (n_merges, 2) int32 in/out
    buffer (at least one row), its first rows the given merges, and n_init,
    n_merges, min_frequency as ints."""
    n_merges, min_frequency = _index("n_merges", n_merges), _index("min_frequency", min_frequency)
    if not 0 <= n_merges <= BPE_MAX_VOCAB - 256:
        raise ShapeError(f"n_merges={n_merges} must be in [0, {BPE_MAX_VOCAB - 256}]")
    if min_frequency < 0:
        raise ShapeError(f"min_frequency {min_frequency} must be >= 0")
    merges = np.zeros((max(n_merges, 1), 2), I32)
    if init_merges is None:
        return merges, 0, n_merges, min_frequency
    _host(init_merges=init_merges)
    _arr("init_merges", init_merges, I32)
    if init_merges.ndim != 2 or init_merges.shape[1] != 2:
        raise ShapeError(f"init_merges must be (k, 2), got shape {init_merges.shape}")
    k = init_merges.shape[0]
    if k > n_merges:
        raise ShapeError(f"{k} given merges exceed the {n_merges} to learn")
    # merge i may name the bytes and the tokens of merges before it: ids < 256 + i
    bad = (init_merges < 0) | (init_merges >= 256 + np.arange(k, dtype=np.int64)[:, None])
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ShapeError(f"given merge {i} names token {init_merges[i, j]}, which does not "
                         "exist yet")
    merges[:k] = init_merges
    return merges, k, n_merges, min_frequency


def bpe_split(text, classes, pattern: str = "gpt2") -> np.ndarray:
    """The end offsets (n_chunks,) int64 of the pre-split chunks of text
    (bytes); chunk k is text[ends[k-1]:ends[k]]. classes: the (0x110000,)
    uint8 code point class table."""
    n = _bytes("text", text)
    _classes(classes)
    pid = bpe_pattern(pattern)
    ends = np.empty(max(n, 1), I64)   # one chunk per byte at most
    n_chunks = ffi.new("int64_t*")
    check(lib.mg_bpe_split(_p(ends, "int64_t*"), n_chunks, _p(text, "uint8_t*"), n,
                           _p(classes, "uint8_t*"), pid))
    return ends[:n_chunks[0]]


def bpe_train_chunks(chunks, offsets, counts, n_merges: int, min_frequency: int = 2,
                     init_merges=None) -> np.ndarray:
    """Merges (n_done, 2) int32 learned from weighted chunks: chunk k is
    chunks[offsets[k]:offsets[k+1]] (bytes; offsets (n + 1,) int64) with
    count counts[k] (n,) int64 >= 0. init_merges (k, 2) int32, if given, are
    replayed as the first k merges, not learned."""
    nbytes = _bytes("chunks", chunks)
    _host(counts=counts)
    _arr("counts", counts, I64)
    if counts.ndim != 1:
        raise ShapeError(f"counts must be 1-D, got shape {counts.shape}")
    n = _bounds("offsets", offsets, counts.size, nbytes, "chunk")
    if n and int(np.diff(offsets).max()) >= 2**31 - 1:
        raise ShapeError("a chunk is 2 GiB or longer")
    if n and int(counts.min()) < 0:
        raise ShapeError(f"chunk {int(np.argmax(counts < 0))} has a negative count")
    merges, n_init, n_merges, min_frequency = _merges_buffer(n_merges, min_frequency, init_merges)
    n_done = ffi.new("int32_t*")
    check(lib.mg_bpe_train_chunks(_p(merges, "int32_t*"), n_done, _p(chunks, "uint8_t*"),
                                  _p(offsets, "int64_t*"), _p(counts, "int64_t*"), n, n_init,
                                  n_merges, min_frequency))
    return merges[:n_done[0]].copy()


def bpe_train_text(text, doc_offsets, classes, pattern: str, n_merges: int,
                   min_frequency: int = 2, init_merges=None) -> tuple[np.ndarray, int]:
    """Pre-splits and counts documents (document d is
    text[doc_offsets[d]:doc_offsets[d+1]], doc_offsets (n_docs + 1,) int64;
    no chunk crosses a document end), then learns merges as bpe_train_chunks.
    Returns merges (n_done, 2) int32 and the number of distinct chunks."""
    nbytes = _bytes("text", text)
    n_docs = _bounds("doc_offsets", doc_offsets, None, nbytes, "document")
    _classes(classes)
    pid = bpe_pattern(pattern)
    merges, n_init, n_merges, min_frequency = _merges_buffer(n_merges, min_frequency, init_merges)
    n_done = ffi.new("int32_t*")
    n_unique = ffi.new("int64_t*")
    check(lib.mg_bpe_train_text(_p(merges, "int32_t*"), n_done, n_unique, _p(text, "uint8_t*"),
                                _p(doc_offsets, "int64_t*"), n_docs, _p(classes, "uint8_t*"),
                                pid, n_init, n_merges, min_frequency))
    return merges[:n_done[0]].copy(), int(n_unique[0])
