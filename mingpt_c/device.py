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

    def __repr__(self) -> str:
        return f"Device({self.name!r})"


CPU = Device("cpu")


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
