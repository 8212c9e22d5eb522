"""The checked wrappers of the BPE trainer's C functions (ops.bpe_split,
ops.bpe_train_chunks, ops.bpe_train_text): they give what bpe_train gives,
and refuse wrong dtypes, sizes that do not match the counts passed, offsets
outside the buffer and ids out of range before any C function is reached."""
from collections import Counter

import numpy as np
import pytest

from mingpt_c import ops
from mingpt_c._lib import lib
from mingpt_c.errors import DTypeError, ShapeError
from mingpt_c.tokenizers import bpe_train

TEXT = "The cat's 12 hats  sat. The cat's hat!\nA hat, a cat, 345 cats.\n" * 20


@pytest.fixture(scope="module")
def classes():
    return bpe_train.codepoint_classes()


class _NoKernel:
    """Stands in for the C library in ops: constants pass through; reaching
    any C function fails the test."""

    def __init__(self, real):
        self.real = real

    def __getattr__(self, name):
        if name.startswith("mg_"):
            raise AssertionError(f"{name} was called: the wrapper should have refused first")
        return getattr(self.real, name)


@pytest.fixture
def no_kernel(monkeypatch):
    monkeypatch.setattr(ops, "lib", _NoKernel(lib))


def chunk_args(counts: dict):
    chunks = list(counts)
    offsets = np.zeros(len(chunks) + 1, np.int64)
    np.cumsum([len(c) for c in chunks], out=offsets[1:])
    return b"".join(chunks), offsets, np.asarray(list(counts.values()), np.int64)

# ---------------------------------------------------------------- results


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4", "none"])
def test_split_ends(classes, pattern):
    data = TEXT.encode()
    ends = ops.bpe_split(data, classes, pattern)
    assert ends.dtype == np.int64 and ends[-1] == len(data) and np.all(np.diff(ends) > 0)
    assert [data[a:b] for a, b in zip([0, *ends[:-1]], ends)] == bpe_train.split(TEXT, pattern)
    assert ops.bpe_split(b"", classes, pattern).size == 0
    assert np.array_equal(ops.bpe_split(bytearray(data), classes, pattern), ends)


def test_train_wrappers_agree(classes):
    counts = dict(Counter(bpe_train.split(TEXT)))
    chunks = ops.bpe_train_chunks(*chunk_args(counts), 40, 2)
    data = TEXT.encode()
    text, n_unique = ops.bpe_train_text(data, np.array([0, len(data)], np.int64), classes,
                                        "gpt2", 40, 2)
    assert chunks.dtype == np.int32 and 10 < len(chunks) < 40   # no pair left to merge twice
    assert np.array_equal(chunks, text) and n_unique == len(counts)
    assert np.array_equal(chunks, bpe_train.learn_merges(counts, 40))
    again = ops.bpe_train_chunks(*chunk_args(counts), 40, 2, init_merges=chunks[:7].copy())
    assert np.array_equal(again, chunks)   # replaying a prefix continues the same run

# ---------------------------------------------------------------- bad input


def test_split_refuses_before_c(classes, no_kernel):
    with pytest.raises(DTypeError, match="text must be bytes or bytearray, got str"):
        ops.bpe_split("text", classes)
    with pytest.raises(DTypeError, match="classes must be uint8, got int8"):
        ops.bpe_split(b"text", classes.view(np.int8))
    with pytest.raises(ShapeError, match=r"classes has shape \(256,\)"):
        ops.bpe_split(b"text", classes[:256])
    with pytest.raises(ShapeError, match="unknown pattern 'gpt3'"):
        ops.bpe_split(b"text", classes, "gpt3")


CHUNKS = {b"abab": 3, b"ab": 2, b"ba": 1}


@pytest.mark.parametrize("change,exc,match", [
    ({"chunks": "abab"}, DTypeError, "chunks must be bytes"),
    ({"offsets": np.array([0, 4, 6, 8], np.int32)}, DTypeError, "offsets must be int64"),
    ({"offsets": np.array([0, 4, 6], np.int64)}, ShapeError, r"expected \(4,\) for 3 chunks"),
    ({"offsets": np.array([0, 4, 6, 9], np.int64)}, ShapeError, "outside the 8 bytes given"),
    ({"offsets": np.array([-1, 4, 6, 8], np.int64)}, ShapeError, "outside the 8 bytes given"),
    ({"offsets": np.array([0, 6, 4, 8], np.int64)}, ShapeError, "must not decrease"),
    ({"counts": np.array([3, 2, 1], np.float64)}, DTypeError, "counts must be int64"),
    ({"counts": np.array([3, -2, 1], np.int64)}, ShapeError, "chunk 1 has a negative count"),
    ({"counts": np.array([[3, 2, 1]], np.int64)}, ShapeError, "counts must be 1-D"),
    ({"n_merges": -1}, ShapeError, "n_merges=-1 must be in"),
    ({"n_merges": ops.BPE_MAX_VOCAB}, ShapeError, "must be in"),
    ({"n_merges": 5.0}, DTypeError, "n_merges must be an integer"),
    ({"min_frequency": -1}, ShapeError, "min_frequency -1 must be >= 0"),
    ({"init_merges": np.array([[97, 98]], np.int64)}, DTypeError, "init_merges must be int32"),
    ({"init_merges": np.array([97, 98], np.int32)}, ShapeError, r"must be \(k, 2\)"),
    ({"init_merges": np.array([[97, 98]] * 6, np.int32)}, ShapeError, "6 given merges exceed the 5"),
    ({"init_merges": np.array([[97, 98], [256, 257]], np.int32)}, ShapeError,
     "given merge 1 names token 257, which does not exist yet"),
    ({"init_merges": np.array([[97, -1]], np.int32)}, ShapeError, "names token -1"),
])
def test_train_chunks_refuses_before_c(no_kernel, change, exc, match):
    chunks, offsets, counts = chunk_args(CHUNKS)
    args = dict(chunks=chunks, offsets=offsets, counts=counts, n_merges=5, min_frequency=2,
                init_merges=None)
    args.update(change)
    with pytest.raises(exc, match=match):
        ops.bpe_train_chunks(**args)


@pytest.mark.parametrize("change,exc,match", [
    ({"text": list(b"ab ab")}, DTypeError, "text must be bytes"),
    ({"doc_offsets": np.array([0, 5], np.int32)}, DTypeError, "doc_offsets must be int64"),
    ({"doc_offsets": np.array([0, 6], np.int64)}, ShapeError, "outside the 5 bytes given"),
    ({"doc_offsets": np.array([0, 4, 2, 5], np.int64)}, ShapeError, r"must not decrease \(document 1\)"),
    ({"doc_offsets": np.zeros(0, np.int64)}, ShapeError, "n \\+ 1 >= 1 entries"),
    ({"doc_offsets": np.array([[0, 5]], np.int64)}, ShapeError, "must be 1-D"),
    ({"classes": np.zeros(10, np.uint8)}, ShapeError, "classes has shape"),
    ({"pattern": "gpt3"}, ShapeError, "unknown pattern"),
    ({"n_merges": 1 << 21}, ShapeError, "must be in"),
    ({"init_merges": [[97, 98]]}, DTypeError, "init_merges must be a numpy array"),
])
def test_train_text_refuses_before_c(classes, no_kernel, change, exc, match):
    args = dict(text=b"ab ab", doc_offsets=np.array([0, 5], np.int64), classes=classes,
                pattern="gpt2", n_merges=5, min_frequency=2)
    args.update(change)
    with pytest.raises(exc, match=match):
        ops.bpe_train_text(**args)
