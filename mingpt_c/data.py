"""Text data: checked reading, tokenizing into memory-mapped token files,
and batch sampling.

Text files are read in chunks cut at line ends and tokenized chunk by chunk,
so a 1 GB corpus trains in bounded memory: only the token file, which is
memory-mapped, is ever whole. The tokenizer carries the end of a chunk that
the next one could still change (a BPE's pre-split of a run of white space
depends on what follows it) into the next, so the ids are exactly those of
the whole text (Tokenizer.encode_pieces). Batches are drawn from a generator seeded by
(seed, iteration, micro-step): the data position of a run is its iteration
number, so resuming needs no sampler state and continues exactly.
"""
from __future__ import annotations

import codecs
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from mingpt_c.errors import DataError
from mingpt_c.tokenizers.tokenfile import read_tokens, write_tokens

CHUNK_BYTES = 8 << 20  # text read per tokenizer call


def default_corpus() -> tuple[str, str]:
    """The embedded offline corpus: the standard library's documentation
    topics (pydoc_data), English prose about Python that ships with every
    Python installation. Returns (name, text)."""
    try:
        from pydoc_data.topics import topics
    except ImportError as e:  # pragma: no cover - a stripped Python
        raise DataError("this Python installation lacks pydoc_data; pass a text FILE to train on") from e
    text = "\n\n".join(topics[k].strip() for k in sorted(topics))
    return "pydoc_data.topics (Python's documentation topics)", text


def check_text_file(path: str | Path) -> Path:
    """Raises DataError with one clear line unless path is a readable,
    non-empty UTF-8 text file."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file")
    if p.is_dir():
        raise DataError(f"{p}: is a directory, expected a text file")
    try:
        size = p.stat().st_size
        fh = open(p, "rb")
    except OSError as e:
        raise DataError(f"{p}: cannot read ({e.strerror})") from None
    if size == 0:
        fh.close()
        raise DataError(f"{p}: the file is empty")
    with fh:
        dec = codecs.getincrementaldecoder("utf-8-sig")("strict")
        offset, line = 0, 1
        while True:
            block = fh.read(CHUNK_BYTES)
            if not block:
                break
            nul = block.find(b"\0")
            if nul >= 0:
                raise DataError(f"{p}: looks like a binary file (NUL byte at offset {offset + nul}), "
                                f"expected UTF-8 text")
            try:
                dec.decode(block)
            except UnicodeDecodeError as e:
                bad = offset + e.start
                line_at = line + block[:e.start].count(b"\n")
                raise DataError(f"{p}: invalid UTF-8 at byte {bad} (line {line_at}): "
                                f"{block[e.start:e.start + 4]!r}") from None
            line += block.count(b"\n")
            offset += len(block)
        try:
            dec.decode(b"", final=True)
        except UnicodeDecodeError:
            raise DataError(f"{p}: invalid UTF-8 at the end of the file (truncated character)") from None
    return p


def iter_text(paths: list[Path]) -> Iterator[str]:
    """Yields the files' text in pieces cut at line ends (valid UTF-8 assumed:
    call check_text_file first). Files are joined with a newline. Encode the
    pieces with tokenizer.encode_pieces (or encode_text_pieces), not one by
    one: a piece ending in white space may encode differently alone."""
    for i, p in enumerate(paths):
        with open(p, "r", encoding="utf-8-sig", newline="") as fh:
            carry = ""
            while True:
                block = fh.read(CHUNK_BYTES)
                if not block:
                    break
                block = carry + block
                cut = block.rfind("\n") + 1
                if cut == 0:
                    carry = block
                    continue
                carry = block[cut:]
                yield block[:cut]
            if carry:
                yield carry
        if i + 1 < len(paths):
            yield "\n"


def encode_text_pieces(pieces, tokenizer) -> Iterator[np.ndarray]:
    """int32 ids of a text given in consecutive pieces: concatenated, exactly
    the ids of the whole text. Special-token strings in a text are text, not
    control tokens."""
    return tokenizer.encode_pieces(pieces, disallowed_special=())


def tokenize_to_file(pieces, tokenizer, out: Path) -> np.ndarray:
    """Encodes text pieces into a token file; returns it memory-mapped."""
    write_tokens(out, encode_text_pieces(pieces, tokenizer), vocab_size=tokenizer.vocab_size)
    return read_tokens(out)


def split_tokens(tokens: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """First (1 - f) for training, the last f for validation, as nanoGPT."""
    n = len(tokens)
    cut = int(n * (1.0 - val_fraction))
    return tokens[:cut], tokens[cut:]


def require_length(tokens: np.ndarray, block_size: int, what: str) -> None:
    if len(tokens) < block_size + 1:
        raise DataError(f"the {what} text has {len(tokens)} tokens, fewer than one block "
                        f"({block_size} + 1): use a longer text or a smaller --block-size")


def get_batch(tokens: np.ndarray, B: int, T: int, rng: np.random.Generator):
    """x, y (B, T) int32: random windows and the same windows shifted by one."""
    ix = rng.integers(0, len(tokens) - T, size=B)
    x = np.stack([tokens[i:i + T] for i in ix]).astype(np.int32)
    y = np.stack([tokens[i + 1:i + 1 + T] for i in ix]).astype(np.int32)
    return x, y


def batch_rng(seed: int, it: int, micro: int, stream: int = 0) -> np.random.Generator:
    """A generator fixed by (seed, iteration, micro-step, stream)."""
    return np.random.default_rng([seed, it, micro, stream])


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
