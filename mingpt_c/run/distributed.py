"""Data-parallel training over MPI (mpi4py), or nothing at all.

`mpiexec -n N mingpt train ...` starts N ranks. Each rank reads a disjoint
slice of every global batch, runs forward and backward on the C core, and
the ranks all-reduce the one flat gradient buffer in place (zero-copy on the
numpy view), the loss and the stop flag; the gradient norm, clipping and the
AdamW step then run identically on every rank, so the weights never
diverge. Rank 0 alone writes logs, progress and checkpoints.

mpi4py is imported only when an MPI launcher started this process with more
than one rank, so single-process runs pay nothing and need no MPI library.

A rank that dies leaves the others blocked in a collective. Collectives here
are non-blocking requests polled against a deadline (--dist-timeout): past
it, the surviving ranks print one clear line and abort the job, instead of
hanging; Open MPI's launcher usually ends the job even sooner. A rank that
raises inside the training loop (rank 0 alone writes checkpoints, so a full
disk fails rank 0 alone) prints its line and aborts the job at once
(run.scaffold.Run.__exit__), rather than leaving the others to wait for the
deadline.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from mingpt_c.errors import MinGPTError

_LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")


class DistributedError(MinGPTError):
    """A rank stopped answering, or MPI is missing where it is needed."""


class SingleProcess:
    """The world of one process: every collective is the identity."""

    rank, size, local_size = 0, 1, 1
    is_main = True

    def allreduce_mean_(self, buf: np.ndarray) -> np.ndarray:
        return buf

    def allreduce_sum(self, x: float) -> float:
        return x

    def allreduce_max(self, x: float) -> float:
        return x

    def any(self, flag: bool) -> bool:
        return flag

    def barrier(self) -> None:
        pass

    def broadcast(self, obj):
        return obj

    def abort(self, message: str) -> None:  # pragma: no cover - nothing to abort
        raise DistributedError(message)


class MPIWorld:
    """MPI COMM_WORLD with deadline-bounded collectives."""

    def __init__(self, timeout: float = 300.0):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.local_size = self.comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()
        self.is_main = self.rank == 0
        self.timeout = timeout

    def _wait(self, req, what: str) -> None:
        deadline = time.monotonic() + self.timeout
        pause = 1e-5
        while not req.Test():
            if time.monotonic() > deadline:
                self.abort(f"rank {self.rank}: no answer from the other ranks for {self.timeout:.0f} s "
                           f"during {what}; a rank has died or hangs, stopping the job")
            time.sleep(pause)
            pause = min(pause * 2, 1e-3)

    def allreduce_mean_(self, buf: np.ndarray) -> np.ndarray:
        """In place: buf = mean of buf over ranks (summed in rank order by MPI)."""
        self._wait(self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM), "the gradient all-reduce")
        buf *= np.float32(1.0 / self.size)
        return buf

    def allreduce_sum(self, x: float) -> float:
        a = np.array([x], np.float64)
        self._wait(self.comm.Iallreduce(self.MPI.IN_PLACE, a, op=self.MPI.SUM), "a scalar all-reduce")
        return float(a[0])

    def allreduce_max(self, x: float) -> float:
        a = np.array([x], np.float64)
        self._wait(self.comm.Iallreduce(self.MPI.IN_PLACE, a, op=self.MPI.MAX), "a scalar all-reduce")
        return float(a[0])

    def any(self, flag: bool) -> bool:
        return self.allreduce_sum(1.0 if flag else 0.0) > 0

    def barrier(self) -> None:
        self._wait(self.comm.Ibarrier(), "a barrier")

    def broadcast(self, obj):
        """Rank 0's obj (anything json writes) on every rank, rank 0's own
        included, as json reads it back: every rank holds the same value."""
        data = json.dumps(obj).encode() if self.is_main else b""
        n = np.array([len(data)], np.int64)
        self._wait(self.comm.Ibcast(n, root=0), "a broadcast")
        buf = np.frombuffer(data, np.uint8).copy() if self.is_main else np.empty(int(n[0]), np.uint8)
        self._wait(self.comm.Ibcast(buf, root=0), "a broadcast")
        return json.loads(buf.tobytes())

    def abort(self, message: str) -> None:
        print(f"Error: {message}", file=sys.stderr, flush=True)
        self.comm.Abort(1)


def launched_with_mpi() -> bool:
    for var in _LAUNCHER_VARS:
        try:
            if int(os.environ.get(var, "1")) > 1:
                return True
        except ValueError:
            pass
    return False


def get_world(timeout: float = 300.0):
    """MPIWorld under an MPI launcher with several ranks, else SingleProcess."""
    if not launched_with_mpi():
        return SingleProcess()
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        raise DistributedError("started by an MPI launcher with several ranks, but mpi4py is not "
                               "installed: pip install 'mingpt-c[mpi]'") from None
    return MPIWorld(timeout)


def mpi_available() -> str | None:
    """mpi4py's version and MPI library, or None (for `mingpt env`)."""
    try:
        import mpi4py
    except ImportError:
        return None
    return f"mpi4py {mpi4py.__version__}"


def default_threads(world) -> int:
    """Cores per node divided by the ranks on this node."""
    return max(1, (os.cpu_count() or 1) // max(1, world.local_size))
