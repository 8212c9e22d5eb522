"""GPU memory for the CUDA path: device facts, the math mode, and DeviceArray.

A DeviceArray is a contiguous float32, int32 or uint8 array in GPU memory
(cudaMalloc through mg_cuda_malloc). ops.py takes DeviceArrays wherever it
takes numpy arrays and then calls the mg_cuda_* twin of each kernel, so a
model written against ops runs on either device. Views (reshape, 1-D slices)
share one allocation, which is freed when the last view is gone.

This module owns the runtime and memory entry points of the C API
(mg_cuda_get_info, set_math, malloc, free, memcpy, memset, fill, synchronize);
ops.py owns the kernels. Without a GPU, or in a build without CUDA (`make`
rather than `make cuda`), `available()` is False and everything else raises
CudaError with one line saying why.

Gotchas:
  - work is queued on the runtime's one stream: a kernel's failure may only
    show at the next call that waits (numpy(), ops.total, synchronize());
  - numpy() and copy_from() are the only host <-> device traffic; nothing
    converts implicitly (np.asarray of a DeviceArray is not a copy of it).
"""
from __future__ import annotations

import weakref
from math import prod

import numpy as np

from mingpt_c._lib import check, ffi, lib
from mingpt_c.errors import CudaError, DTypeError, ShapeError

DEVICE = "cuda"
DTYPES = (np.dtype(np.float32), np.dtype(np.int32), np.dtype(np.uint8))
MATH_MODES = {"fp32": lib.MG_MATH_FP32, "tf32": lib.MG_MATH_TF32, "bf16": lib.MG_MATH_BF16}
_MATH_NAMES = {v: k for k, v in MATH_MODES.items()}

# ---------------------------------------------------------------- device facts

_why_not: str | None = None   # None: not probed yet; "": available
_NO_BUILD = ("this build has no CUDA path: run `make cuda` on a machine with nvcc "
             "and a GPU (`make` builds the CPU path only)")


def _probe() -> str:
    """'' when a GPU is usable, else the reason (one line); probed once."""
    global _why_not
    if _why_not is None:
        if not lib.mg_has_cuda():
            _why_not = _NO_BUILD
        else:
            info = ffi.new("mg_cuda_info*")
            if lib.mg_cuda_get_info(info) == lib.MG_OK:
                _why_not = ""
            else:
                msg = ffi.string(lib.mg_last_error()).decode("utf-8", "replace")
                _why_not = " ".join(msg.split()) or "no usable CUDA GPU"
    return _why_not


def available() -> bool:
    """True when this build has the CUDA path and a GPU is usable."""
    return _probe() == ""


def require() -> None:
    """Raises CudaError (one line: what is missing, what to do) unless available()."""
    why = _probe()
    if why:
        raise CudaError(why)


def _version(v: int) -> str:
    """13000 -> '13.0' (CUDA encodes 1000 * major + 10 * minor)."""
    return f"{v // 1000}.{(v % 1000) // 10}"


def info() -> dict:
    """The GPU in use: name, compute capability ('9.0'), multiprocessors,
    memory in bytes, CUDA runtime and driver versions ('13.0'), math mode."""
    require()
    i = ffi.new("mg_cuda_info*")
    check(lib.mg_cuda_get_info(i))
    return {
        "name": ffi.string(i.name).decode("utf-8", "replace"),
        "device": i.device,
        "device_count": i.device_count,
        "capability": f"{i.major}.{i.minor}",
        "multiprocessors": i.multiprocessors,
        "total_memory": int(i.total_mem),
        "free_memory": int(i.free_mem),
        "runtime_version": _version(i.runtime_version),
        "driver_version": _version(i.driver_version),
        "math": _MATH_NAMES.get(i.math_mode, str(i.math_mode)),
    }


def set_math(name: str) -> None:
    """Precision of every matrix product on the GPU (attention's included):
    'fp32' (IEEE, the parity reference), 'tf32' or 'bf16' (tensor cores,
    fp32 accumulation). Other kernels always compute in fp32."""
    if name not in MATH_MODES:
        raise ShapeError(f"math mode {name!r} is not one of {', '.join(MATH_MODES)}")
    require()
    check(lib.mg_cuda_set_math(MATH_MODES[name]))


def get_math() -> str:
    return info()["math"]


def synchronize() -> None:
    """Waits for every queued kernel and copy; reports a fault among them."""
    require()
    check(lib.mg_cuda_synchronize())

# ---------------------------------------------------------------- memory


def _free(ptr: int) -> None:
    # A finalizer cannot usefully raise; a failed free leaves the memory to
    # the process's end, which frees it anyway.
    lib.mg_cuda_free(ffi.cast("void*", ptr))


class _Allocation:
    """One cudaMalloc'd block; every view of it holds a reference."""

    __slots__ = ("__weakref__", "nbytes", "ptr")

    def __init__(self, nbytes: int):
        p = ffi.new("void**")
        check(lib.mg_cuda_malloc(p, nbytes))
        self.ptr = int(ffi.cast("uintptr_t", p[0]))
        self.nbytes = nbytes
        f = weakref.finalize(self, _free, self.ptr)
        # At exit the CUDA runtime may already be torn down; the process's end
        # returns the memory anyway.
        f.atexit = False


def _dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in DTYPES:
        raise DTypeError(f"a DeviceArray holds float32, int32 or uint8, not {dt.name}")
    return dt


def _shape(shape) -> tuple[int, ...]:
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ShapeError(f"negative size in shape {shape}")
    return shape


class DeviceArray:
    """A C-contiguous array in GPU memory (float32, int32 or uint8).

    Make one with empty / zeros / to_device; reshape and 1-D slices are views
    of the same memory. `ptr` is the device address of element 0.
    """

    device = DEVICE
    __slots__ = ("_owner", "dtype", "nbytes", "ptr", "shape", "size")

    def __init__(self, shape, dtype, owner: _Allocation, ptr: int):
        self.shape = shape                          # tuple of ints
        self.dtype = dtype                          # np.dtype
        self.size = prod(shape)
        self.nbytes = self.size * dtype.itemsize
        self.ptr = ptr                              # int device address
        self._owner = owner                         # keeps the memory alive

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d DeviceArray")
        return self.shape[0]

    def __repr__(self) -> str:
        return (f"DeviceArray(shape={self.shape}, dtype={self.dtype.name}, "
                f"device='{DEVICE}', ptr={self.ptr:#x})")

    def __array__(self, *args, **kwargs):
        # np.asarray would otherwise wrap the object, silently, in a 0-d array
        raise TypeError("a DeviceArray lives in GPU memory: copy it to the host "
                        "with .numpy() (or cuda.to_host)")

    # ---------------------------------------------------------------- views

    def reshape(self, *shape) -> DeviceArray:
        """A view with another shape of the same size; one size may be -1."""
        if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
            shape = tuple(shape[0])
        shape = tuple(int(s) for s in shape)
        if shape.count(-1) > 1:
            raise ShapeError("reshape: only one size may be -1")
        if -1 in shape:
            known = prod(s for s in shape if s != -1)
            if known == 0 or self.size % known:
                raise ShapeError(f"cannot reshape size {self.size} into {shape}")
            shape = tuple(self.size // known if s == -1 else s for s in shape)
        if any(s < 0 for s in shape) or prod(shape) != self.size:
            raise ShapeError(f"cannot reshape size {self.size} into {shape}")
        return DeviceArray(shape, self.dtype, self._owner, self.ptr)

    def __getitem__(self, key) -> DeviceArray:
        """a[i:j] of a 1-D array: a view (how named parameter views are cut
        from the flat buffer: buf[off:off + n].reshape(shape))."""
        if self.ndim != 1 or not isinstance(key, slice):
            raise ShapeError("a DeviceArray takes only 1-D slices a[i:j]; "
                             "reshape(-1) first, or copy to the host with numpy()")
        start, stop, step = key.indices(self.shape[0])
        if step != 1:
            raise ShapeError("a DeviceArray slice must have step 1 (memory stays contiguous)")
        n = max(stop - start, 0)
        return DeviceArray((n,), self.dtype, self._owner, self.ptr + start * self.dtype.itemsize)

    # ---------------------------------------------------------------- copies

    def _void(self):
        return ffi.cast("void*", self.ptr)

    def numpy(self) -> np.ndarray:
        """A fresh host copy (waits for the queued work that writes it)."""
        out = np.empty(self.shape, self.dtype)
        if self.nbytes:
            check(lib.mg_cuda_memcpy(ffi.from_buffer(out), self._void(), self.nbytes,
                                     lib.MG_COPY_D2H))
        return out

    def copy_from(self, host) -> DeviceArray:
        """Uploads a host array of the same dtype and size into this one."""
        host = np.ascontiguousarray(host)
        if host.dtype != self.dtype:
            raise DTypeError(f"copy_from: host array is {host.dtype.name}, "
                             f"the DeviceArray is {self.dtype.name}")
        if host.size != self.size:
            raise ShapeError(f"copy_from: host array has {host.size} elements "
                             f"(shape {host.shape}), the DeviceArray {self.size} "
                             f"(shape {self.shape})")
        if self.nbytes:
            check(lib.mg_cuda_memcpy(self._void(), ffi.from_buffer(host), self.nbytes,
                                     lib.MG_COPY_H2D))
        return self

    def fill(self, value) -> DeviceArray:
        """Sets every element to value (a kernel for float32 and for 0)."""
        if self.dtype == np.float32:
            check(lib.mg_cuda_fill(ffi.cast("float*", self.ptr), float(value), self.size))
        elif value == 0:
            check(lib.mg_cuda_memset(self._void(), 0, self.nbytes))
        else:  # rare (int32 / uint8 constants): an upload
            self.copy_from(np.full(self.shape, value, self.dtype))
        return self


# ---------------------------------------------------------------- constructors


def empty(shape, dtype=np.float32) -> DeviceArray:
    """An uninitialised device array."""
    require()
    shape, dtype = _shape(shape), _dtype(dtype)
    owner = _Allocation(prod(shape) * dtype.itemsize)
    return DeviceArray(shape, dtype, owner, owner.ptr)


def zeros(shape, dtype=np.float32) -> DeviceArray:
    a = empty(shape, dtype)
    if a.nbytes:
        check(lib.mg_cuda_memset(a._void(), 0, a.nbytes))
    return a


def to_device(host) -> DeviceArray:
    """A device copy of a host array, same dtype and shape."""
    host = np.asarray(host)
    return empty(host.shape, host.dtype).copy_from(host)


def to_host(a) -> np.ndarray:
    """A host copy of a DeviceArray (a numpy array is returned as it is)."""
    if isinstance(a, np.ndarray):
        return a
    if not isinstance(a, DeviceArray):
        raise DTypeError(f"to_host takes a DeviceArray or numpy array, got {type(a).__name__}")
    return a.numpy()
