"""Text checks, chunked reading, token files and batches."""
import numpy as np
import pytest

from mingpt_c import data
from mingpt_c.errors import DataError
from mingpt_c.tokenizers.tokenfile import write_tokens
from mingpt_c.tokenizers.tokenizer import CharTokenizer


def test_streamed_write_is_atomic(tmp_path):
    p = tmp_path / "t.tokens"

    def parts():
        yield np.array([1, 2, 3])
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_tokens(p, parts(), vocab_size=10)
    assert not p.exists() and list(tmp_path.iterdir()) == []


def test_chunked_reading_equals_whole(tmp_path, monkeypatch):
    text = "".join(f"line {i} é✓\n" for i in range(500)) + "no newline at end"
    p = tmp_path / "t.txt"
    p.write_text(text, encoding="utf-8")
    monkeypatch.setattr(data, "CHUNK_BYTES", 37)
    assert "".join(data.iter_text([data.check_text_file(p)])) == text
    tok = CharTokenizer.from_text(text)
    toks = data.tokenize_to_file(data.iter_text([p]), tok, tmp_path / "t.tokens")
    assert tok.decode(toks) == text


def test_invalid_utf8_position(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "CHUNK_BYTES", 16)
    p = tmp_path / "u.txt"
    p.write_bytes(b"a" * 40 + b"\nb\n\xc3(")
    with pytest.raises(DataError, match=r"invalid UTF-8 at byte 43 \(line 3\)"):
        data.check_text_file(p)


def test_default_corpus():
    name, text = data.default_corpus()
    assert len(text) > 100_000 and "Python" in text


def test_batches_are_shifted_windows():
    toks = np.arange(100, dtype=np.uint16)
    x, y = data.get_batch(toks, 4, 10, data.batch_rng(1, 0, 0))
    assert x.dtype == np.int32 and x.shape == (4, 10)
    assert np.array_equal(y, x + 1)
    x2, _ = data.get_batch(toks, 4, 10, data.batch_rng(1, 0, 0))
    assert np.array_equal(x, x2)
