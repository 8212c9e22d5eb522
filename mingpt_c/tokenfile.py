"""Token files: a 32-byte header, then the token ids, memory-mapped on read.

Header (little-endian):
    bytes 0-7    magic b"MGTOKENS"
    bytes 8-11   uint32 version (1)
    bytes 12-15  uint32 bytes per token (2: uint16, 4: uint32)
    bytes 16-23  uint64 token count
    bytes 24-31  reserved, zero
uint16 is used whenever the vocabulary fits (< 65536 ids), halving the file.
Files are written to a temporary name and renamed, so a reader never sees a
half-written file; the count is checked against the file size on read.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from .errors import DataError

MAGIC = b"MGTOKENS"
VERSION = 1
HEADER = struct.Struct("<8sIIQ8x")
assert HEADER.size == 32


def dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class TokenWriter:
    """Appends id arrays to a token file; commits it atomically on close."""

    def __init__(self, path: str | Path, vocab_size: int):
        self.path = Path(path)
        self.vocab_size = vocab_size
        self.dtype = dtype_for(vocab_size)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        self.count = 0
        self.fh = open(self.tmp, "wb")
        self.fh.write(HEADER.pack(MAGIC, VERSION, self.dtype.itemsize, 0))

    def write(self, ids) -> None:
        ids = np.asarray(ids)
        if ids.size == 0:
            return
        if int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size:
            raise DataError(f"token id outside [0, {self.vocab_size})")
        self.fh.write(ids.astype(self.dtype, copy=False).tobytes())
        self.count += ids.size

    def close(self) -> None:
        self.fh.seek(0)
        self.fh.write(HEADER.pack(MAGIC, VERSION, self.dtype.itemsize, self.count))
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.fh.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_tokens(path: str | Path, ids, vocab_size: int) -> None:
    with TokenWriter(path, vocab_size) as w:
        w.write(ids)


def read_tokens(path: str | Path) -> np.ndarray:
    """The ids of a token file as a read-only memory map."""
    p = Path(path)
    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            head = fh.read(HEADER.size)
    except OSError as e:
        raise DataError(f"{p}: cannot read token file ({e.strerror})") from None
    if len(head) < HEADER.size:
        raise DataError(f"{p}: not a token file (too short for its header)")
    magic, version, width, count = HEADER.unpack(head)
    if magic != MAGIC:
        raise DataError(f"{p}: not a token file (bad magic {magic!r})")
    if version != VERSION:
        raise DataError(f"{p}: token file version {version} is not supported (expected {VERSION})")
    if width not in (2, 4):
        raise DataError(f"{p}: bad token width {width}")
    if size != HEADER.size + count * width:
        raise DataError(f"{p}: truncated token file: header says {count} tokens, "
                        f"the file holds {(size - HEADER.size) // width}")
    if count == 0:
        return np.zeros(0, np.uint16 if width == 2 else np.uint32)
    return np.memmap(p, dtype=np.uint16 if width == 2 else np.uint32, mode="r",
                     offset=HEADER.size, shape=(count,))
