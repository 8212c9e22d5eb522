"""Where a model's buffers live: "cpu" (numpy arrays) or "cuda" (DeviceArrays
in GPU memory, mingpt_c.cuda).

A model picks its device once, at construction, and allocates every buffer
(parameters, gradients, optimizer moments, activations) through it; the ops
wrappers then call the C kernels of the device their arguments are on. Only
the token batch goes in and one loss scalar comes out per step.
"""
from __future__ import annotations

import numpy as np

from mingpt_c.errors import ShapeError

DEVICES = ("cpu", "cuda")
DTYPES = ("fp32", "tf32", "bf16")   # precision of the GPU's matrix products

F32 = np.float32


class Device:
    """An allocator for one device: empty, zeros, put (a host array onto it)."""

    def __init__(self, name: str = "cpu", dtype: str | None = None):
        if name not in DEVICES:
            raise ShapeError(f"device {name!r} is not one of {', '.join(DEVICES)}")
        self.name = name
        self.is_cuda = name == "cuda"
        if self.is_cuda:
            from mingpt_c import cuda
            cuda.require()
            self._cuda = cuda
            if dtype is not None:
                cuda.set_math(dtype)
        elif dtype not in (None, "fp32"):
            raise ShapeError(f"--dtype {dtype} needs --device cuda (the CPU computes in fp32)")

    def empty(self, shape, dtype=F32):
        shape = tuple(shape)
        return self._cuda.empty(shape, dtype) if self.is_cuda else np.empty(shape, dtype)

    def zeros(self, shape, dtype=F32):
        shape = tuple(shape)
        return self._cuda.zeros(shape, dtype) if self.is_cuda else np.zeros(shape, dtype)

    def put(self, a: np.ndarray):
        """a on this device (the array itself on the CPU, a copy on the GPU)."""
        return self._cuda.to_device(np.ascontiguousarray(a)) if self.is_cuda else a

    def available_bytes(self) -> int | None:
        """Memory a new allocation can have: the GPU's free memory, or the
        host's MemAvailable (None where the system does not say)."""
        if self.is_cuda:
            return self._cuda.info()["free_memory"]
        try:
            with open("/proc/meminfo") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    def check_fits(self, need: int, what: str) -> None:
        """OutOfMemory, before anything is allocated, when an estimate of
        need bytes is above what this device has available."""
        have = self.available_bytes()
        if have is not None and need > have:
            from mingpt_c.errors import OutOfMemory

            where = "GPU" if self.is_cuda else "machine"
            raise OutOfMemory(f"{what} needs about {_size(need)} ({need:,} bytes); the {where} has "
                              f"{_size(have)} ({have:,} bytes) available: choose a smaller model or batch")

    def __repr__(self) -> str:
        return f"Device({self.name!r})"


def _size(n: int) -> str:
    for unit, k in (("TiB", 40), ("GiB", 30), ("MiB", 20)):
        if n >= 1 << k:
            return f"{n / (1 << k):.1f} {unit}"
    return f"{n / 1024:.1f} KiB"


CPU = Device("cpu")


class Arena:
    """An allocator for a set of activation buffers that is built again
    and again at other shapes (a seq2seq model's: bucketed batches change
    their lengths almost every step). A build calls rewind() and then asks
    for its buffers in its fixed order; the i-th request gets a view of the
    i-th buffer of the previous builds, which grows (a fresh allocation on
    the device) only when the new shape needs more. So after the largest
    shape has been seen a build allocates nothing: no malloc and first-touch
    page faults on the CPU, no cudaMalloc (and cudaFree's synchronisation)
    on the GPU. rewind() makes every view of the previous build invalid:
    only one set is alive at a time. zeros() clears its view; constants
    (put) are allocated as the device does."""

    def __init__(self, device: Device):
        self.device = device
        self.name, self.is_cuda = device.name, device.is_cuda
        self._bufs: list = []
        self._next = 0

    def rewind(self) -> "Arena":
        self._next = 0
        return self

    def empty(self, shape, dtype=F32):
        shape, dtype = tuple(shape), np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64))
        i, self._next = self._next, self._next + 1
        if i == len(self._bufs):
            self._bufs.append(None)
        buf = self._bufs[i]
        if buf is None or buf.dtype != dtype or buf.size < n:
            buf = self._bufs[i] = self.device.empty((max(n, 1),), dtype)
        return buf[:n].reshape(shape)

    def zeros(self, shape, dtype=F32):
        from mingpt_c import ops

        return ops.fill(self.empty(shape, dtype), 0)

    def put(self, a: np.ndarray):
        return self.device.put(a)


def to_host(a) -> np.ndarray:
    """A numpy array with a's values (a itself when it already is one)."""
    return a if isinstance(a, np.ndarray) else a.numpy()


def default_dtype(device: str) -> str:
    """bf16 products where the GPU has bf16 tensor cores (compute
    capability 8.0 and later), else TF32, else fp32; the CPU: fp32."""
    if device != "cuda":
        return "fp32"
    from mingpt_c import cuda
    major = int(cuda.info()["capability"].split(".")[0])
    return "bf16" if major >= 8 else "fp32"
