"""Vocabularies of the encoder-decoder: text of one side (or of both, when
shared) <-> token ids, with the four special tokens first.

    id  0 <pad>   padding, never a target
        1 <s>     begin of sequence: the decoder's first input
        2 </s>    end of sequence: the decoder's last target
        3 <unk>   a character or symbol the vocabulary has not seen

Kinds
  char     every character is a symbol, spaces included ("hello" -> h e l l o).
  symbols  whitespace-separated symbols, e.g. phonemes "HH AH L OW"; decode
           joins them with one space.
  bpe      a byte-level BPE trained by mingpt_c.tokenizers.bpe_train on the
           texts (GPT-2 pre-split by default), its ids shifted up by the four
           specials. Every text encodes (bytes are tokens): no <unk>.
  marian   a Marian (opus-mt) sentencepiece tokenizer with its own special ids:
           seq2seq/marian_vocab.py. Vocab.load and Vocab.from_json return one
           when the file says kind "marian".

Model code reads the special ids from the vocabulary (pad_id, bos_id, eos_id,
unk_id, and src_eos: whether encoded sources end with </s>) rather than
assuming 0..3, since a Marian vocabulary numbers them differently.

char and symbols ids: the symbols seen at least min_count times, sorted by
count (most frequent first) then by the symbol itself, so the same texts
give the same ids on any machine; at most vocab_size - 4 of them are kept.
For bpe, vocab_size counts the specials too, so it must be at least 260
(the 256 bytes + 4); merges need a pair seen max(2, min_count) times, and
training stops early when none is, giving a smaller vocabulary.

File: UTF-8 JSON, written atomically (temporary file, then rename):
  {"format": "mingpt-seq2seq-vocab", "version": 1, "kind": "char" | "symbols",
   "specials": ["<pad>", "<s>", "</s>", "<unk>"], "symbols": [<id 4>, <id 5>, ...]}
  {"format": "mingpt-seq2seq-vocab", "version": 1, "kind": "bpe",
   "specials": [...], "bpe": <a mingpt-bpe object (tokenizers/tokenizer.py)>}
  {"format": "mingpt-seq2seq-vocab", "version": 1, "kind": "marian", ...}
"""
from __future__ import annotations

import json
import operator
import os
from collections import Counter
from pathlib import Path
from typing import Iterable

from mingpt_c.errors import CheckpointError, DataError, IndexRangeError, ShapeError
from mingpt_c.tokenizers.tokenizer import BPETokenizer, Tokenizer, write_json

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
PAD, BOS, EOS, UNK = 0, 1, 2, 3
KINDS = ("char", "symbols", "bpe")
FORMAT = "mingpt-seq2seq-vocab"
_N = len(SPECIALS)


def _show(s: str) -> str:
    """A piece as a one-line axis label: a space shows as ␣, control characters escaped."""
    s = s.replace(" ", "␣")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


class Vocab:
    """One side's tokenizer. Build with Vocab.build, read with Vocab.load."""

    def __init__(self, kind: str, symbols: list[str] | None = None, bpe: BPETokenizer | None = None):
        if kind not in KINDS:
            raise ShapeError(f"vocabulary kind {kind!r}: use char, symbols or bpe")
        self.kind = kind
        if kind == "bpe":
            if bpe is None or bpe.special_tokens:
                raise CheckpointError("a bpe vocabulary needs a BPE tokenizer without special tokens")
            self.bpe, self.itos, self.stoi = bpe, None, None
            self.size = bpe.vocab_size + _N
            return
        symbols = list(symbols or ())
        if len(set(symbols)) != len(symbols):
            raise CheckpointError(f"a {kind} vocabulary lists a symbol twice")
        if kind == "char" and any(len(s) != 1 for s in symbols):
            raise CheckpointError("a char vocabulary holds single characters")
        if kind == "symbols" and any(not s or s != "".join(s.split()) for s in symbols):
            raise CheckpointError("a symbols vocabulary holds non-empty symbols without whitespace")
        self.bpe = None
        self.itos = list(SPECIALS) + symbols                    # id -> display piece
        self.stoi = {s: i + _N for i, s in enumerate(symbols)}  # symbol -> id (specials are not text)
        self.size = len(self.itos)

    # ------------------------------------------------------------------ build

    @classmethod
    def build(cls, texts: list[str], kind: str, vocab_size: int = 8000, min_count: int = 1,
              pattern: str = "gpt2") -> "Vocab":
        """The vocabulary of texts (see the module docstring for each kind)."""
        if kind not in KINDS:
            raise ShapeError(f"vocabulary kind {kind!r}: use char, symbols or bpe")
        if min_count < 1:
            raise ShapeError(f"min_count {min_count} must be >= 1")
        try:
            vocab_size = operator.index(vocab_size)
        except TypeError:
            raise ShapeError(f"vocab_size {vocab_size!r} must be an integer") from None
        texts = list(texts)
        if kind == "bpe":
            from mingpt_c.tokenizers import bpe_train

            low, high = 256 + _N, int(bpe_train.MAX_VOCAB) + _N
            if not low <= vocab_size <= high:
                raise ShapeError(f"a bpe vocabulary of {vocab_size} tokens: use {low} to {high} "
                                 f"(the 256 bytes + {_N} specials + the merges)")
            if not any(t.strip() for t in texts):
                raise DataError("no text to train a bpe vocabulary on")
            bpe = bpe_train.train(texts, vocab_size - _N, pattern=pattern, special_tokens=(),
                                  min_frequency=max(2, min_count))
            return cls("bpe", bpe=bpe)
        if vocab_size < _N + 1:
            raise ShapeError(f"a {kind} vocabulary of {vocab_size} tokens: use at least {_N + 1} "
                             f"({_N} specials + 1 symbol)")
        counts: Counter = Counter()
        for t in texts:
            counts.update(t if kind == "char" else t.split())
        ranked = sorted((s for s, c in counts.items() if c >= min_count), key=lambda s: (-counts[s], s))
        if not ranked:
            raise DataError(f"no {'characters' if kind == 'char' else 'symbols'} seen at least "
                            f"{min_count} time(s): nothing to build a vocabulary from")
        return cls(kind, symbols=ranked[:vocab_size - _N])

    # ------------------------------------------------------------------ special ids

    @property
    def pad_id(self) -> int:
        """Padding: never a target."""
        return PAD

    @property
    def bos_id(self) -> int:
        """The decoder's first input."""
        return BOS

    @property
    def eos_id(self) -> int:
        """The decoder's last target; decoding stops there."""
        return EOS

    @property
    def unk_id(self) -> int:
        return UNK

    @property
    def src_eos(self) -> bool:
        """Whether encoded sources end with </s> (they do not here)."""
        return False

    # ------------------------------------------------------------------ text <-> ids

    def tokens_of(self, text: str) -> list[str]:
        """The units error rates count: characters for char, else whitespace-separated words."""
        return list(text) if self.kind == "char" else text.split()

    def encode(self, text: str) -> list[int]:
        """Ids of text, without <s> or </s>; an unseen character or symbol is <unk>."""
        if self.kind == "bpe":
            return [i + _N for i in self.bpe.encode(text)]
        get = self.stoi.get
        return [get(s, UNK) for s in self.tokens_of(text)]

    def unknown(self, text: str) -> list[str]:
        """The characters or symbols of text that encode as <unk>, each once, in order."""
        if self.kind == "bpe":
            return []
        return list(dict.fromkeys(s for s in self.tokens_of(text) if s not in self.stoi))

    def _check(self, ids: Iterable[int]) -> list[int]:
        ids = [int(i) for i in ids]
        bad = next((i for i in ids if not 0 <= i < self.size), None)
        if bad is not None:
            raise IndexRangeError(f"token id {bad} is outside the {self.kind} vocabulary [0, {self.size})")
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ids up to the first </s>; <pad> and <s> are skipped,
        <unk> comes out as the text "<unk>"."""
        ids = self._check(ids)
        if EOS in ids:
            ids = ids[:ids.index(EOS)]
        ids = [i for i in ids if i not in (PAD, BOS)]
        if self.kind != "bpe":
            return ("" if self.kind == "char" else " ").join(self.itos[i] for i in ids)
        # byte runs between <unk>s decode together, so a character split over tokens stays whole
        out, run = [], []
        for i in ids + [UNK]:
            if i == UNK:
                out.append(self.bpe.decode_bytes(run).decode("utf-8", errors="replace"))
                run = []
            else:
                run.append(i - _N)
        return SPECIALS[UNK].join(out)

    def symbols(self, ids: Iterable[int]) -> list[str]:
        """One display piece per id (specials included, nothing skipped), for
        the axes of attention maps: characters (a space as ␣), symbols, or
        the text of BPE pieces (␣ for spaces, broken UTF-8 as \\x.. escapes)."""
        ids = self._check(ids)
        if self.kind != "bpe":
            return [_show(self.itos[i]) for i in ids]
        return [SPECIALS[i] if i < _N else
                _show(self.bpe.token_bytes(i - _N).decode("utf-8", errors="backslashreplace")) for i in ids]

    # ------------------------------------------------------------------ files

    def to_json(self) -> dict:
        obj = {"format": FORMAT, "version": 1, "kind": self.kind, "specials": list(SPECIALS)}
        if self.kind == "bpe":
            obj["bpe"] = self.bpe.to_json()
        else:
            obj["symbols"] = self.itos[_N:]
        return obj

    @classmethod
    def from_json(cls, obj: dict) -> "Vocab":
        """A Vocab, or a MarianVocab when obj's kind is "marian"."""
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            fmt = obj.get("format") if isinstance(obj, dict) else None
            raise CheckpointError(f"not a seq2seq vocabulary (format {fmt!r}, expected {FORMAT!r})")
        if obj.get("version") != 1:
            raise CheckpointError(f"{FORMAT} version {obj.get('version')!r} is not supported (this build reads 1)")
        if obj.get("kind") == "marian":
            try:    # lazily: only Marian vocabularies need sentencepiece
                from mingpt_c.seq2seq.marian_vocab import MarianVocab
            except ImportError as e:
                raise CheckpointError(f"a marian vocabulary needs sentencepiece ({e}): "
                                      f"pip install sentencepiece") from None
            return MarianVocab.from_json(obj)
        if obj.get("specials", list(SPECIALS)) != list(SPECIALS):
            raise CheckpointError(f"the vocabulary's specials {obj.get('specials')} are not {list(SPECIALS)}")
        kind = obj.get("kind")
        if kind not in KINDS:
            raise CheckpointError(f"unknown vocabulary kind {kind!r} (expected char, symbols, bpe or marian)")
        if kind == "bpe":
            bpe = Tokenizer.from_json(obj.get("bpe"))
            if type(bpe) is not BPETokenizer:   # not a reference to GPT-2's
                raise CheckpointError("a bpe vocabulary must hold a mingpt-bpe tokenizer")
            return cls("bpe", bpe=bpe)
        symbols = obj.get("symbols")
        if not isinstance(symbols, list) or not all(isinstance(s, str) for s in symbols):
            raise CheckpointError(f"a {kind} vocabulary needs a 'symbols' list of strings")
        return cls(kind, symbols=symbols)

    def save(self, path: str | os.PathLike) -> None:
        """Writes the vocabulary file atomically (temporary file, then rename)."""
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocab":
        """The vocabulary in path: a Vocab, or a MarianVocab for kind "marian"."""
        return load_file(path, Vocab.from_json)

    def __repr__(self) -> str:
        return f"Vocab(kind={self.kind!r}, size={self.size})"


def load_file(path: str | os.PathLike, from_json):
    """from_json(the JSON object in path), errors naming the file."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise CheckpointError(f"cannot read vocabulary file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"vocabulary file {path} is not UTF-8 JSON") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"vocabulary file {path} is not valid JSON: {e}") from None
    try:
        return from_json(obj)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
