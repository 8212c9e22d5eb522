"""Loads the compiled core and maps C statuses to exceptions."""
from __future__ import annotations

from mingpt_c.errors import CudaError, IndexRangeError, MinGPTError, OutOfMemory, ShapeError

try:
    from mingpt_c import _C  # built by `make` (mingpt_c/_build.py)
except ImportError as e:  # pragma: no cover - depends on the build
    raise ImportError(
        "the mingpt-c C core is not built: run `make` in the project root "
        f"(or `pip install -e .`) first ({e})") from None

ffi = _C.ffi
lib = _C.lib

_STATUS = {
    lib.MG_ERR_SHAPE: ShapeError,
    lib.MG_ERR_VALUE: ShapeError,
    lib.MG_ERR_INDEX: IndexRangeError,
    lib.MG_ERR_NOMEM: OutOfMemory,
    lib.MG_ERR_NULL: ShapeError,
    lib.MG_ERR_CUDA: CudaError,
    lib.MG_ERR_NO_CUDA: CudaError,
}


def check(rc: int) -> None:
    """Raises the exception matching a non-zero mg_status, with C's message."""
    if rc != lib.MG_OK:
        msg = ffi.string(lib.mg_last_error()).decode("utf-8", "replace")
        raise _STATUS.get(rc, MinGPTError)(msg or f"mingpt C core returned status {rc}")


def build_info() -> dict:
    return {
        "version": ffi.string(lib.mg_version()).decode(),
        "compiler": ffi.string(lib.mg_compiler()).decode(),
        "simd": ffi.string(lib.mg_simd()).decode(),
        "openmp": bool(lib.mg_has_openmp()),
        "threads": lib.mg_get_num_threads(),
        "cuda": bool(lib.mg_has_cuda()),
    }


def set_num_threads(n: int) -> None:
    check(lib.mg_set_num_threads(int(n)))


def get_num_threads() -> int:
    return lib.mg_get_num_threads()
