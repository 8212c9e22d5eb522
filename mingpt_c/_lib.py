"""Loads the compiled core and maps C statuses to exceptions.

Before the core (and its OpenMP runtime) loads, the threads' wait policy is
chosen: OpenMP's default spins between parallel regions, which on a machine
whose cores are all busy steals the time the partner threads need (training
ran 10-50x slower). When the load average is above the core count, and the
user set no OMP_WAIT_POLICY, the threads sleep instead (PASSIVE); `mingpt
env` says which policy is in force and why."""
from __future__ import annotations

import os

from mingpt_c.errors import CudaError, IndexRangeError, MinGPTError, OutOfMemory, ShapeError


def _wait_policy() -> str:
    """Sets OMP_WAIT_POLICY=PASSIVE on a busy machine; returns the policy
    in force and why (for `mingpt env`)."""
    if "OMP_WAIT_POLICY" in os.environ:
        return f"{os.environ['OMP_WAIT_POLICY'].lower()} (OMP_WAIT_POLICY is set)"
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return "OpenMP's default"
    cores = os.cpu_count() or 1
    if load > cores:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        return f"passive (load average {load:.1f} above {cores} cores at start)"
    return f"OpenMP's default (load average {load:.1f}, {cores} cores)"


WAIT_POLICY = _wait_policy()

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
        "wait_policy": WAIT_POLICY,
    }


def set_num_threads(n: int) -> None:
    check(lib.mg_set_num_threads(int(n)))


def get_num_threads() -> int:
    return lib.mg_get_num_threads()
