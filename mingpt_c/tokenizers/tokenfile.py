"""Token files: a training set's token ids on disk, memory-mapped for reading.

Layout (little-endian), a 32-byte header then the ids:
  0  magic     8 bytes  b"MGTOK\\0\\0\\0"
  8  version   u32      1
  12 dtype     u32      1 = uint16, 2 = uint32
  16 count     u64      number of ids
  24 vocab     u32      vocabulary size the ids were made with (0: unknown)
  28 reserved  u32      0
  32 ids       count * itemsize bytes

uint16 halves the file (and the page cache it needs) whenever the vocabulary
fits, which every tokenizer here but the largest BPEs does. Files are written
to a temporary name and renamed, so a reader never sees half a file, and
read_tokens checks magic, version, dtype and length before mapping.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Iterable

import numpy as np

from mingpt_c.errors import DataError
from mingpt_c.files import write_atomic

MAGIC = b"MGTOK\0\0\0"
VERSION = 1
HEADER = struct.Struct("<8sIIQII")  # 32 bytes
_DTYPES = {1: np.dtype("<u2"), 2: np.dtype("<u4")}
_CODES = {np.dtype("<u2"): 1, np.dtype("<u4"): 2}


def dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 65536 else np.dtype("<u4")


def write_tokens(path: str | os.PathLike, ids: np.ndarray | Iterable, vocab_size: int | None = None,
                 dtype=None) -> int:
    """Writes ids (an array, or an iterable of arrays/lists for streaming)
    atomically; returns the number of ids. dtype defaults to uint16 when
    vocab_size (or, without it, the largest id + 1) is at most 65536."""
    path = Path(path)
    if isinstance(ids, (list, tuple, range)) and (not ids or isinstance(ids[0], (int, np.integer))):
        ids = np.asarray(ids, dtype=np.int64)
    parts = [ids] if isinstance(ids, np.ndarray) else ids
    if dtype is None and vocab_size is None and not isinstance(ids, np.ndarray):
        parts = [np.asarray(p) for p in parts]  # need the largest id first
    if dtype is None:
        if vocab_size is None:
            vmax = max((int(np.max(p)) for p in parts if np.size(p)), default=-1)
            dt = dtype_for(vmax + 1)
        else:
            dt = dtype_for(int(vocab_size))
    else:
        dt = np.dtype(dtype).newbyteorder("<")
        if dt not in _CODES:
            raise DataError(f"token files hold uint16 or uint32 ids, not {np.dtype(dtype)}")
    limit = int(np.iinfo(dt).max) if vocab_size is None else int(vocab_size) - 1
    count = 0

    def write(f) -> None:
        nonlocal count
        f.write(b"\0" * HEADER.size)
        for p in parts:
            a = np.asarray(p)
            if a.size == 0:
                continue
            a = a.reshape(-1)
            if a.dtype.kind not in "iu":
                raise DataError(f"token ids must be integers, not {a.dtype}")
            lo, hi = int(a.min()), int(a.max())
            if lo < 0 or hi > limit:
                bad = lo if lo < 0 else hi
                raise DataError(f"token id {bad} does not fit the token file "
                                f"(0..{limit}, {dt.name})")
            f.write(a.astype(dt, copy=False).tobytes())
            count += a.size
        f.seek(0)
        f.write(HEADER.pack(MAGIC, VERSION, _CODES[dt], count, int(vocab_size or 0), 0))

    write_atomic(path, write)
    return count


def read_header(path: str | os.PathLike) -> dict:
    """The header as a dict (version, dtype, count, vocab_size), validated."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER.size)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise DataError(f"cannot read token file {path}: {e.strerror or e}") from None
    if len(head) < HEADER.size:
        raise DataError(f"{path} is too short to be a token file ({size} bytes)")
    magic, version, code, count, vocab, _ = HEADER.unpack(head)
    if magic != MAGIC:
        raise DataError(f"{path} is not a mingpt token file (bad magic {magic!r}); "
                        "make one with `mingpt tokenize encode -o`")
    if version != VERSION:
        raise DataError(f"{path}: token file version {version} is not supported (this build reads {VERSION})")
    if code not in _DTYPES:
        raise DataError(f"{path}: unknown dtype code {code}")
    dt = _DTYPES[code]
    want = HEADER.size + count * dt.itemsize
    if size != want:
        raise DataError(f"{path} is truncated or padded: {size} bytes, the header says "
                        f"{count} ids = {want} bytes")
    return {"version": version, "dtype": dt, "count": count, "vocab_size": vocab or None}


def read_tokens(path: str | os.PathLike) -> np.ndarray:
    """The ids as a read-only np.memmap (uint16 or uint32), shape (count,)."""
    h = read_header(path)
    if h["count"] == 0:
        return np.zeros(0, h["dtype"])
    return np.memmap(path, dtype=h["dtype"], mode="r", offset=HEADER.size, shape=(h["count"],))
