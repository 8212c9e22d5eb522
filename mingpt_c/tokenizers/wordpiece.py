"""BERT's WordPiece tokenizer, read from a checkpoint's vocab.txt, so an
imported BERT-family model sees exactly the ids it was trained on.

Two stages, as Google's BERT and Hugging Face's BertTokenizer:
  basic:     drop NUL, U+FFFD and control characters; any whitespace -> space;
             a space on each side of every CJK ideograph; NFC; split on
             whitespace; lower-case and strip accents (NFD, drop Mn marks)
             when do_lower_case (strip_accents=None follows do_lower_case);
             every punctuation character (ASCII symbols and Unicode P*)
             becomes its own word. Special tokens in the text ([CLS]...)
             are kept whole.
  wordpiece: greedy longest match from the left, continuation pieces
             prefixed "##"; a word longer than 100 characters, or one with
             a part no piece matches, becomes [UNK] as a whole.
Words repeat, so the wordpiece stage is memoised per word.
"""
from __future__ import annotations

import json
import unicodedata
from functools import lru_cache
from pathlib import Path

from mingpt_c.errors import CheckpointError

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    if ch in "\t\n\r":
        return False
    return unicodedata.category(ch).startswith("C")


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    # ASCII non-letters/digits count as punctuation ("$", "^", "`" are not P* in Unicode)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


class WordPiece:
    """vocab: tokens in id order (vocab.txt, one per line)."""

    kind = "wordpiece"

    def __init__(self, vocab: list[str], do_lower_case: bool = True, strip_accents: bool | None = None,
                 tokenize_chinese_chars: bool = True, unk_token: str = "[UNK]",
                 max_chars_per_word: int = 100):
        self.vocab = list(vocab)
        self.ids = {t: i for i, t in enumerate(self.vocab)}
        self.do_lower_case = do_lower_case
        self.strip_accents = strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.max_chars_per_word = max_chars_per_word
        if unk_token not in self.ids:
            raise CheckpointError(f"the vocabulary has no unknown token {unk_token!r}")
        self.unk_token = unk_token
        self.unk_id = self.ids[unk_token]
        self.vocab_size = len(self.vocab)
        self.special = {t: self.ids[t] for t in SPECIALS if t in self.ids}
        self._never_split = set(self.special)
        self._piece_ids = lru_cache(maxsize=1 << 18)(self._wordpiece)

    # ------------------------------------------------------------ basic

    def _clean(self, text: str) -> str:
        out = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or _is_control(ch):
                continue
            if _is_whitespace(ch):
                out.append(" ")
            elif self.tokenize_chinese_chars and _is_cjk(cp):
                out += [" ", ch, " "]
            else:
                out.append(ch)
        return "".join(out)

    def _strip(self, word: str) -> str:
        return "".join(c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn")

    def _split_punct(self, word: str) -> list[str]:
        out, cur = [], []
        for ch in word:
            if _is_punctuation(ch):
                if cur:
                    out.append("".join(cur))
                    cur = []
                out.append(ch)
            else:
                cur.append(ch)
        if cur:
            out.append("".join(cur))
        return out

    def basic(self, text: str) -> list[str]:
        """The words the wordpiece stage sees."""
        text = unicodedata.normalize("NFC", self._clean(text))
        strip = self.do_lower_case if self.strip_accents is None else self.strip_accents
        words = []
        for w in text.split():
            if w in self._never_split:
                words.append(w)
                continue
            if self.do_lower_case:
                w = w.lower()
            if strip:
                w = self._strip(w)
            words += self._split_punct(w)
        return words

    # ------------------------------------------------------------ wordpiece

    def _wordpiece(self, word: str) -> tuple[int, ...]:
        if len(word) > self.max_chars_per_word:
            return (self.unk_id,)
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            cur = None
            while start < end:
                sub = word[start:end] if start == 0 else "##" + word[start:end]
                cur = self.ids.get(sub)
                if cur is not None:
                    break
                end -= 1
            if cur is None:
                return (self.unk_id,)
            ids.append(cur)
            start = end
        return tuple(ids)

    def encode(self, text: str) -> list[int]:
        """Token ids without [CLS]/[SEP] (the caller adds them)."""
        out = []
        for w in self.basic(text):
            out += self._piece_ids(w)
        return out

    def tokenize(self, text: str) -> list[str]:
        return [self.vocab[i] for i in self.encode(text)]

    def decode(self, ids) -> str:
        text = " ".join(self.vocab[int(i)] for i in ids)
        return text.replace(" ##", "")

    # ------------------------------------------------------------ files

    def describe(self) -> dict:
        return {"kind": "wordpiece", "file": "vocab.txt", "do_lower_case": self.do_lower_case,
                "strip_accents": self.strip_accents, "tokenize_chinese_chars": self.tokenize_chinese_chars}

    def save(self, d: Path) -> None:
        (Path(d) / "vocab.txt").write_text("".join(t + "\n" for t in self.vocab), encoding="utf-8")
        cfg = {"tokenizer_class": "BertTokenizer", "do_lower_case": self.do_lower_case,
               "strip_accents": self.strip_accents, "tokenize_chinese_chars": self.tokenize_chinese_chars,
               "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
               "mask_token": "[MASK]"}
        (Path(d) / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")

    @classmethod
    def from_dir(cls, d, options: dict | None = None) -> "WordPiece":
        """From vocab.txt (else tokenizer.json's WordPiece vocab); options
        from `options` or the directory's tokenizer_config.json."""
        d = Path(d)
        opts = dict(options or {})
        if not options and (d / "tokenizer_config.json").exists():
            try:
                opts = json.loads((d / "tokenizer_config.json").read_text())
            except ValueError as e:
                raise CheckpointError(f"{d}/tokenizer_config.json: not JSON ({e})") from None
        if (d / "vocab.txt").exists():
            vocab = (d / "vocab.txt").read_text(encoding="utf-8").split("\n")
            if vocab and vocab[-1] == "":
                vocab.pop()
            vocab = [v.rstrip("\r") for v in vocab]
        elif (d / "tokenizer.json").exists():
            try:
                tj = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))
                model = tj["model"]
                if model.get("type") != "WordPiece":
                    raise CheckpointError(f"{d}/tokenizer.json holds a {model.get('type')} model, "
                                          "not WordPiece")
                vocab = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
                norm = tj.get("normalizer") or {}
                if norm.get("type") == "BertNormalizer" and "do_lower_case" not in opts:
                    opts["do_lower_case"] = norm.get("lowercase", True)
                    opts["strip_accents"] = norm.get("strip_accents")
                    opts["tokenize_chinese_chars"] = norm.get("handle_chinese_chars", True)
            except (ValueError, KeyError, TypeError) as e:
                raise CheckpointError(f"{d}/tokenizer.json: not a WordPiece tokenizer ({e})") from None
        else:
            raise CheckpointError(f"{d}: no vocab.txt or tokenizer.json for the WordPiece vocabulary")
        return cls(vocab, do_lower_case=opts.get("do_lower_case", True),
                   strip_accents=opts.get("strip_accents"),
                   tokenize_chinese_chars=opts.get("tokenize_chinese_chars", True) is not False)
