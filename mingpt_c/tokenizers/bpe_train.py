"""Training byte-level BPE vocabularies (the numpy-facing side of csrc/bpe.c).

Pipeline: texts -> UTF-8 bytes (special tokens cut out, documents kept apart)
-> pre-split with the GPT-2 or GPT-4 regex and count the distinct chunks (C,
all threads) -> learn merges with incrementally updated pair counts (C) ->
a BPETokenizer whose tiktoken.Encoding does the encoding.

Why the split is in C: Python's `regex` needs about 6 s to split and count
the 33 MB IMDB corpus, more than everything else together. csrc/bpe.c
hand-codes the two patterns over a table of code point classes (\\p{L},
\\p{N}, \\s) built here by the `regex` package (a dependency of tiktoken), so
both engines classify characters alike. tests/test_tokenizer.py checks the C
split against regex.findall.

Vocabulary: ids 0..255 are the bytes, 256 + i is merge i, then the special
tokens. vocab_size counts all three, so it must be at least 256 + the
number of specials. Tie rule (csrc/mingpt.h): the most frequent pair is
merged; among equal counts the smallest left id, then the smallest right id.
A pair whose bytes already form a token is never merged. Training stops
early when no pair reaches min_frequency; the tokenizer is then smaller.
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from mingpt_c import ops
from mingpt_c.errors import DataError, ShapeError
from mingpt_c.files import write_atomic
from mingpt_c.tokenizers.tokenizer import BPETokenizer

MAX_VOCAB = ops.BPE_MAX_VOCAB


# ---------------------------------------------------------------- code point classes

def _class_table() -> np.ndarray:
    import regex

    table = np.zeros(ops.BPE_N_CODEPOINTS, np.uint8)  # (0x110000,)
    every = "".join(map(chr, range(ops.BPE_N_CODEPOINTS)))
    for bit, pat in ((ops.BPE_CLASS_LETTER, r"\p{L}+"), (ops.BPE_CLASS_NUMBER, r"\p{N}+"),
                     (ops.BPE_CLASS_SPACE, r"\s+")):
        for m in regex.finditer(pat, every):
            table[m.start():m.end()] |= bit
    return table


@functools.lru_cache(maxsize=None)
def codepoint_classes() -> np.ndarray:
    """uint8 (0x110000,): bit 1 \\p{L}, 2 \\p{N}, 4 \\s, as the regex package
    sees them. Building takes ~0.2 s, so it is cached on disk per regex
    version (a cache that cannot be written is simply skipped)."""
    import regex

    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = Path(base) / "mingpt-c" / f"codepoint-classes-regex-{regex.__version__}.bin"
    try:
        data = np.fromfile(path, dtype=np.uint8)
        if data.size == ops.BPE_N_CODEPOINTS:
            return data
    except OSError:
        pass
    table = _class_table()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, table.tobytes())
    except OSError:
        pass
    return table


# ---------------------------------------------------------------- C calls (through ops)

def split(text: str | bytes, pattern: str = "gpt2") -> list[bytes]:
    """The pre-split chunks of one text, as the trainer sees them."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    ends = ops.bpe_split(data, codepoint_classes(), pattern).tolist()
    return [data[a:b] for a, b in zip([0, *ends[:-1]], ends)]


def _given(init_merges) -> np.ndarray | None:
    """init_merges (any (k, 2) sequence of ids) as the int32 array C reads."""
    return None if init_merges is None else np.ascontiguousarray(np.reshape(init_merges, (-1, 2)), np.int32)


def learn_merges(chunk_counts: Mapping[bytes, int], n_merges: int,
                 min_frequency: int = 2, init_merges=None) -> np.ndarray:
    """Merges (n_done, 2) int32 learned from given chunk counts; the
    init_merges (k, 2), if given, are its first k rows, replayed, not learned."""
    chunks = list(chunk_counts)
    counts = np.asarray([chunk_counts[c] for c in chunks], np.int64)
    offsets = np.zeros(len(chunks) + 1, np.int64)  # (n_chunks + 1,)
    np.cumsum([len(c) for c in chunks], out=offsets[1:])
    data = b"".join(chunks)
    return ops.bpe_train_chunks(data, offsets, counts, n_merges, min_frequency, _given(init_merges))


def learn_merges_from_docs(docs: Sequence[bytes], n_merges: int, pattern: str = "gpt2",
                           min_frequency: int = 2, init_merges=None) -> tuple[np.ndarray, int]:
    """Splits, counts and learns from UTF-8 documents (no chunk crosses a
    document end), after replaying init_merges as learn_merges does.
    Returns merges (n_done, 2) int32 and the distinct chunk count."""
    offsets = np.zeros(len(docs) + 1, np.int64)  # (n_docs + 1,)
    np.cumsum([len(d) for d in docs], out=offsets[1:])
    data = docs[0] if len(docs) == 1 else b"".join(docs)
    return _learn_from_buffer(data, offsets, n_merges, pattern, min_frequency, init_merges)


def _learn_from_buffer(data, offsets: np.ndarray, n_merges: int, pattern: str,
                       min_frequency: int, init_merges=None) -> tuple[np.ndarray, int]:
    """data: all documents back to back; offsets (n_docs + 1,) int64 bounds."""
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    return ops.bpe_train_text(data, offsets, codepoint_classes(), pattern, n_merges, min_frequency,
                              _given(init_merges))


# ---------------------------------------------------------------- training

def check_train_args(vocab_size: int, special_tokens: Sequence[str], pattern: str,
                     min_frequency: int) -> int:
    """Validates the arguments; returns the number of merges to learn."""
    ops.bpe_pattern(pattern)
    specials = list(special_tokens)
    seen = set()
    for s in specials:
        if not s:
            raise ShapeError("a special token cannot be the empty string")
        if s in seen:
            raise ShapeError(f"special token {s!r} is given twice")
        seen.add(s)
    low, high = 256 + len(specials), int(MAX_VOCAB)
    if not isinstance(vocab_size, (int, np.integer)) or not low <= vocab_size <= high:
        raise ShapeError(f"vocab size {vocab_size} must be in [{low}, {high}]: 256 byte tokens"
                         f" + {len(specials)} special token(s) + the merges to learn")
    if min_frequency < 0:
        raise ShapeError(f"min_frequency {min_frequency} must be >= 0")
    return int(vocab_size) - low


def _without_specials(doc: bytes, specials: Sequence[bytes]) -> list[bytes]:
    parts = [doc]
    for s in specials:
        parts = [q for p in parts for q in p.split(s)]
    return parts


def _utf8(i: int, t: str | bytes) -> bytes:
    if isinstance(t, str):
        try:
            return t.encode("utf-8")
        except UnicodeEncodeError as e:
            raise DataError(f"training text {i} holds a lone surrogate at {e.start}") from None
    b = bytes(t)
    try:
        b.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"training text {i} is not valid UTF-8 (byte {e.start})") from None
    return b


def train(texts: Iterable[str | bytes], vocab_size: int, pattern: str = "gpt2",
          special_tokens: Sequence[str] = (), min_frequency: int = 2,
          phrases_after: int | None = None) -> BPETokenizer:
    """Learns a BPE vocabulary from documents (str, or UTF-8 bytes). Special
    token strings found in the texts are cut out, never learned from.

    phrases_after: two stages. The first phrases_after merges are learned
    on the pattern's split (within words); the rest on whole lines, so they
    join frequent words into phrase tokens (" waste of", " one of the").
    The tokenizer then encodes with pattern "none"."""
    n_merges = check_train_args(vocab_size, special_tokens, pattern, min_frequency)
    if phrases_after is not None and not 0 <= phrases_after <= n_merges:
        raise ShapeError(f"phrases_after={phrases_after} must be in [0, {n_merges}] (the merges to learn)")
    sp = [s.encode("utf-8") for s in special_tokens]
    texts = list(texts) if not isinstance(texts, (list, tuple)) else texts
    if len(texts) == 1 and not sp:  # one document (a file): no copy
        data = _utf8(0, texts[0])
        offsets = [0, len(data)]
    else:  # one buffer grown in place: the corpus is held once more, not twice
        data, offsets = bytearray(), [0]
        for i, t in enumerate(texts):
            for part in _without_specials(_utf8(i, t), sp) if sp else [_utf8(i, t)]:
                data += part
                offsets.append(len(data))
    if not data:
        raise DataError("the training corpus is empty: nothing to learn merges from")
    offsets = np.asarray(offsets, np.int64)
    if phrases_after is None:
        merges, n_unique = _learn_from_buffer(data, offsets, n_merges, pattern, min_frequency)
    else:
        words, _ = _learn_from_buffer(data, offsets, phrases_after, pattern, min_frequency)
        pattern = "none"
        merges, n_unique = _learn_from_buffer(data, offsets, n_merges, pattern, min_frequency, words)
    tok = BPETokenizer.from_merges(merges.tolist(), pattern=pattern, special_tokens=special_tokens)
    tok.train_stats = {"requested_merges": n_merges, "merges": len(merges),
                       "distinct_chunks": n_unique, "bytes": len(data)}
    return tok


def read_corpus(paths: Sequence[str | os.PathLike]) -> list[bytes]:
    """The files' bytes, checked to be UTF-8; clear errors for unreadable ones."""
    if not paths:
        raise DataError("no training files given")
    docs = []
    for p in paths:
        try:
            data = Path(p).read_bytes()
        except OSError as e:
            raise DataError(f"cannot read {p}: {e.strerror or e}") from None
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{p} is not UTF-8 text (invalid byte at offset {e.start})") from None
        docs.append(data)
    return docs


def train_files(paths: Sequence[str | os.PathLike], vocab_size: int, pattern: str = "gpt2",
                special_tokens: Sequence[str] = (), min_frequency: int = 2,
                phrases_after: int | None = None) -> BPETokenizer:
    """train() on text files, each file one document."""
    check_train_args(vocab_size, special_tokens, pattern, min_frequency)
    return train(read_corpus(paths), vocab_size, pattern, special_tokens, min_frequency, phrases_after)


if __name__ == "__main__":  # pragma: no cover - manual check
    tok = train_files(sys.argv[1:], 1000)
    print(tok, tok.train_stats)
