"""The exceptions of mingpt-c: one base class, a few precise kinds.

The binding raises these before calling C (dtype, contiguity, shapes, index
ranges) and after it (`check` turns a C status into the matching exception,
with the C message). The CLI turns any MinGPTError into one line on stderr.
"""
from __future__ import annotations


class MinGPTError(Exception):
    """Base class of every error mingpt-c raises on purpose."""


class ShapeError(MinGPTError, ValueError):
    """Sizes that do not fit together, or a bad value."""


class DTypeError(MinGPTError, TypeError):
    """An array of the wrong dtype or memory layout."""


class IndexRangeError(ShapeError, IndexError):
    """A token id, target or class index outside its range."""


class OutOfMemory(MinGPTError, MemoryError):
    """An allocation failed."""


class CudaError(MinGPTError, RuntimeError):
    """A CUDA error, or CUDA asked of a build without it."""


class CheckpointError(MinGPTError):
    """A checkpoint that is missing, truncated, corrupt or does not match."""


class DataError(MinGPTError, ValueError):
    """Input data that cannot be used (empty, binary, invalid UTF-8...)."""
