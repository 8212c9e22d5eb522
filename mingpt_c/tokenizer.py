"""Tokenizers: char, byte, gpt2 (tiktoken) — one small interface.

    tok.encode(text) -> list[int]     tok.decode(ids) -> str
    tok.vocab_size, tok.eot_token (id or None), tok.name
    tok.save(path) / load_tokenizer(path)     a JSON file, {"type": ...}
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import DataError, MinGPTError


class CharTokenizer:
    """One id per distinct character of the training text, in code-point order."""

    name = "char"
    eot_token = None

    def __init__(self, chars):
        self.chars = sorted(set(chars))
        if not self.chars:
            raise DataError("no characters to build a char vocabulary from (empty text)")
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            bad = sorted({c for c in text if c not in self.stoi})
            shown = ", ".join(repr(c) for c in bad[:10])
            raise DataError(f"{len(bad)} character(s) not in the char vocabulary: {shown}"
                            + (" ..." if len(bad) > 10 else "")) from None

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def to_json(self) -> dict:
        return {"type": "char", "chars": "".join(self.chars)}


class ByteTokenizer:
    """The 256 byte values of the UTF-8 encoding."""

    name = "byte"
    eot_token = None
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def to_json(self) -> dict:
        return {"type": "byte"}


class TiktokenTokenizer:
    """A tiktoken encoding (gpt2); <|endoftext|> is the end-of-text token."""

    def __init__(self, encoding_name: str = "gpt2"):
        import tiktoken

        try:
            self.enc = tiktoken.get_encoding(encoding_name)
        except Exception as e:
            raise MinGPTError(f"cannot load the {encoding_name} encoding ({e}); offline, set "
                              f"TIKTOKEN_CACHE_DIR to a folder holding its files") from None
        self.name = encoding_name
        self.eot_token = self.enc.eot_token
        self.vocab_size = self.enc.n_vocab

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def decode(self, ids) -> str:
        return self.enc.decode([int(i) for i in ids])

    def to_json(self) -> dict:
        return {"type": "tiktoken", "encoding": self.name}


def _save(self, path) -> None:
    Path(path).write_text(json.dumps(self.to_json(), ensure_ascii=False) + "\n", encoding="utf-8")


for _cls in (CharTokenizer, ByteTokenizer, TiktokenTokenizer):
    _cls.save = _save


def from_json(d: dict):
    kind = d.get("type")
    if kind == "char":
        return CharTokenizer(d["chars"])
    if kind == "byte":
        return ByteTokenizer()
    if kind == "tiktoken":
        return TiktokenTokenizer(d.get("encoding", "gpt2"))
    raise DataError(f"unknown tokenizer type {kind!r}")


def load_tokenizer(path) -> object:
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read tokenizer file ({e})") from None
    return from_json(d)


def build_tokenizer(spec: str, pieces):
    """spec: char | byte | gpt2 | path to a tokenizer file. pieces() yields
    the training text (only char needs it)."""
    if spec == "char":
        chars = set()
        for piece in pieces():
            chars.update(piece)
        return CharTokenizer(chars)
    if spec == "byte":
        return ByteTokenizer()
    if spec == "gpt2":
        return TiktokenTokenizer("gpt2")
    p = Path(spec)
    if p.is_file():
        return load_tokenizer(p)
    raise DataError(f"unknown tokenizer {spec!r}: use char, byte, gpt2 or a tokenizer file path")
