"""Tokenizers: text <-> token ids, one interface for every kind.

Kinds
  char   CharTokenizer: the characters seen in a training text, sorted.
  byte   ByteTokenizer: the 256 byte values of the UTF-8 text.
  gpt2   GPT2Tokenizer: tiktoken's "gpt2" encoding (50,257 ids), from
         tiktoken's cache (TIKTOKEN_CACHE_DIR), else from a directory with
         GPT-2's encoder.json + vocab.bpe ("gpt2:DIR" or MINGPT_GPT2_DIR),
         else downloaded by tiktoken.
  BPE    BPETokenizer: a byte-level BPE vocabulary trained by
         mingpt_c.bpe_train (or read from GPT-2's encoder.json + vocab.bpe),
         encoded through a tiktoken.Encoding built from its ranks, so encoding
         runs at tiktoken's speed.

Common interface: encode(text) -> list[int], encode_array(text) -> int32
array, decode(ids) -> str, vocab_size, eot_token (id of "<|endoftext|>" or
None), to_json(), save(path), Tokenizer.load(path); get_tokenizer(spec)
accepts "char" (with train_text), "byte", "gpt2", "gpt2:DIR" or a tokenizer
file. encode_pieces(pieces) encodes a text given in consecutive pieces (a
file read in blocks) to exactly the ids of the whole text: a BPE encodes up
to the last place where the pre-split cannot depend on what follows and
carries the rest into the next piece (see "safe cuts" below).

Special tokens follow tiktoken: encode() raises DataError when the text holds
a special token that is not allowed (the default: none is), encodes the
allowed ones (allowed_special, "all" for every one) as their ids, and treats
them as ordinary text when disallowed_special=().

File formats: UTF-8 JSON objects with "format" and "version".
  {"format": "mingpt-char", "version": 1, "chars": "<id-ordered characters>"}
  {"format": "mingpt-byte", "version": 1}
  {"format": "mingpt-gpt2", "version": 1}
  {"format": "mingpt-bpe", "version": 1,
   "pattern": {"name": "gpt2" | "gpt4" | "none" | <other>, "regex": "<pre-split regex>"},
   "tokens": ["<base64 of the bytes of token 0>", ...],
   "special_tokens": {"<|endoftext|>": 4095, ...}}
  In mingpt-bpe, "tokens" lists the mergeable tokens in id order; a token's
  id is its position and also its tiktoken rank (merge priority: lower
  merges first), as in tiktoken's .tiktoken files. Every single byte must be
  a token, so any text can be encoded. A trained file has the 256 bytes first
  in byte order, then token 256 + i made by merge i. Special token ids come
  after the mergeable ones. base64 keeps arbitrary byte strings (half a UTF-8
  character, say) exact; dump() is the human-readable view.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from mingpt_c.errors import CheckpointError, DataError, IndexRangeError, ShapeError
from mingpt_c.files import write_atomic

ENDOFTEXT = "<|endoftext|>"

# Pre-split regexes, exactly tiktoken's: r50k_base/gpt2 and cl100k_base.
# "none" does not split words: a chunk is a line, so merges may cross spaces.
PATTERNS = {
    "gpt2": r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""",
    "gpt4": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
    "none": r"""[^\n]*\n|[^\n]+""",
}

# The original GPT-2 release's regex (older tiktoken versions use it for
# gpt2); it splits as PATTERNS["gpt2"] does.
_GPT2_ORIGINAL = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Texts longer than this are cut and encoded on several threads (see _cuts).
_BATCH_CHARS = 1 << 20


def write_json(path: str | os.PathLike, obj: dict) -> None:
    """A tokenizer's JSON file, written whole or not at all."""
    write_atomic(path, json.dumps(obj, ensure_ascii=False, indent=1) + "\n")


def printable(piece: bytes) -> str:
    """A token's bytes as an unambiguous one-line string: repr of the text,
    or of the bytes when they are not whole UTF-8 characters."""
    try:
        return repr(piece.decode("utf-8"))
    except UnicodeDecodeError:
        return repr(piece)


# ---------------------------------------------------------------- interface

class Tokenizer:
    """Base class: subclasses set `kind` and implement encode/decode."""

    kind = "?"
    vocab_size: int
    eot_token: int | None = None

    def encode(self, text: str, allowed_special=(), disallowed_special="all") -> list[int]:
        raise NotImplementedError

    def encode_array(self, text: str, **special) -> np.ndarray:
        return np.asarray(self.encode(text, **special), dtype=np.int32)

    def encode_pieces(self, pieces: Iterable[str], **special) -> Iterator[np.ndarray]:
        """int32 ids of a text given in consecutive pieces; concatenated they
        equal encode_array of the whole text. Here each character is its own
        token(s), so every piece is encoded alone."""
        for piece in pieces:
            if piece:
                yield self.encode_array(piece, **special)

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def to_json(self) -> dict:
        raise NotImplementedError

    def save(self, path: str | os.PathLike) -> None:
        """Writes the tokenizer file atomically (temporary file, then rename)."""
        write_json(path, self.to_json())

    @staticmethod
    def from_json(obj: dict) -> "Tokenizer":
        fmt = obj.get("format") if isinstance(obj, dict) else None
        cls = _FORMATS.get(fmt)
        if cls is None:
            raise CheckpointError(f"unknown tokenizer format {fmt!r} "
                                  f"(expected one of {sorted(_FORMATS)})")
        version = obj.get("version")
        if version != 1:
            raise CheckpointError(f"{fmt} version {version!r} is not supported (this build reads 1)")
        return cls._from_json(obj)

    @staticmethod
    def load(path: str | os.PathLike) -> "Tokenizer":
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise CheckpointError(f"cannot read tokenizer file {path}: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise CheckpointError(f"tokenizer file {path} is not UTF-8 JSON") from None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"tokenizer file {path} is not valid JSON: {e}") from None
        try:
            return Tokenizer.from_json(obj)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None

    def pieces(self, text: str, **special) -> list[tuple[int, bytes]]:
        """(id, bytes) of each token of text, for display."""
        return [(i, self.token_bytes(i)) for i in self.encode(text, **special)]

    def token_bytes(self, i: int) -> bytes:
        return self.decode([i]).encode("utf-8")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


def _check_ids(ids: Iterable[int], n: int) -> list[int]:
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < n]
    if bad:
        raise IndexRangeError(f"token id {bad[0]} is outside the vocabulary [0, {n})")
    return ids


# ---------------------------------------------------------------- char, byte

class CharTokenizer(Tokenizer):
    """One id per character seen in the training text, in code point order."""

    kind = "char"

    def __init__(self, chars: Sequence[str]):
        chars = list(chars)
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise CheckpointError("a char tokenizer needs distinct single characters")
        if not chars:
            raise DataError("a char tokenizer needs a non-empty training text")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.vocab_size = len(chars)

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    def encode(self, text: str, allowed_special=(), disallowed_special="all") -> list[int]:
        stoi = self.stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            unknown = sorted(set(text) - stoi.keys())
            shown = ", ".join(repr(c) for c in unknown[:10])
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise DataError(f"{len(unknown)} character(s) not in the char vocabulary: "
                            f"{shown}{more}; use the byte or a BPE tokenizer for open text") from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in _check_ids(ids, self.vocab_size))

    def to_json(self) -> dict:
        return {"format": "mingpt-char", "version": 1, "chars": "".join(self.chars)}

    @classmethod
    def _from_json(cls, obj: dict) -> "CharTokenizer":
        chars = obj.get("chars")
        if not isinstance(chars, str):
            raise CheckpointError("mingpt-char file without a 'chars' string")
        return cls(list(chars))


class ByteTokenizer(Tokenizer):
    """The 256 byte values of the UTF-8 encoding; decodes invalid UTF-8 with U+FFFD."""

    kind = "byte"
    vocab_size = 256

    def encode(self, text: str, allowed_special=(), disallowed_special="all") -> list[int]:
        return list(text.encode("utf-8"))

    def encode_array(self, text: str, **special) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(_check_ids(ids, 256)).decode("utf-8", errors="replace")

    def token_bytes(self, i: int) -> bytes:
        return bytes(_check_ids([i], 256))

    def to_json(self) -> dict:
        return {"format": "mingpt-byte", "version": 1}

    @classmethod
    def _from_json(cls, obj: dict) -> "ByteTokenizer":
        return cls()


# ---------------------------------------------------------------- byte-level BPE

# ---------------------------------------------------------------- safe cuts
#
# A text cut in two encodes piece by piece to the ids of the whole only where
# the pre-split ends a chunk in the same way whether or not the text goes on.
# A run of white space is what depends on it: GPT-2's "\s++$|\s+(?!\S)"
# splits "  \n" + "A" as "  ", "\n", "A" but a piece ending in "  \n" as
# "  \n". Every pattern below looks at most one character past a run of white
# space, so a newline followed by a character that is not white space is a
# safe place, with the cut
#   gpt2  just before the newline: "x  \nA" splits "x", "  ", "\n", "A" in the
#         whole and "x", "  " | "\n", "A" in pieces ("\n" then "A" is always
#         "\s" alone, and "  " is "\s++$" at a piece's end);
#   gpt4  just after it ("\s*[\r\n]" takes "  \n" as one chunk, as "\s++$"
#         does at a piece's end; a punctuation run takes its newlines, which
#         end at the non-space character);
#   none  just after it (a chunk is a line with its newline).
# Python's \s covers all of Unicode White_Space (the regex \s) and more, so a
# character that is \S to Python is never white space to tiktoken. Any other
# regex is never cut: its pieces are joined and encoded whole.
# Special tokens: none may hold white space (so none spans a cut), and with
# allowed specials the character after the newline must not start one (text
# before a special ends a segment, where "$" matches).
_CUT_SHIFT = {PATTERNS["gpt2"]: 0, _GPT2_ORIGINAL: 0, PATTERNS["gpt4"]: 1, PATTERNS["none"]: 1}


def _cut_rule(pattern_regex: str, specials: Iterable[str], allowed=()) -> tuple[re.Pattern, int] | None:
    """(regex, shift): text may be cut at m.start() + shift for each match m
    of regex; None where the pattern or the special tokens allow no cut.
    specials: the special tokens in play (allowed or checked for); allowed:
    those encoded as special tokens ("all" for every one)."""
    shift = _CUT_SHIFT.get(pattern_regex)
    specials = list(specials)
    if shift is None or any(ch.isspace() for sp in specials for ch in sp):
        return None
    firsts = {sp[0] for sp in (specials if allowed == "all" else allowed) if sp}
    after = "".join(re.escape(ch) for ch in sorted(firsts))
    return re.compile(r"\n(?=[^\s" + after + "])"), shift


def _cuts(text: str, specials: Iterable[str], pattern_regex: str = PATTERNS["gpt2"],
          allowed=()) -> list[str]:
    """Cuts a long text into pieces of about _BATCH_CHARS at safe places (see
    above), so the pieces encode to exactly the ids of the whole."""
    rule = _cut_rule(pattern_regex, specials, allowed)
    if len(text) <= 2 * _BATCH_CHARS or rule is None:
        return [text]
    pat, shift = rule
    out, start = [], 0
    while len(text) - start > 2 * _BATCH_CHARS:
        m = pat.search(text, start + _BATCH_CHARS)
        if m is None:
            break
        out.append(text[start:m.start() + shift])
        start = m.start() + shift
    out.append(text[start:])
    return out


def _last_cut(rule: tuple[re.Pattern, int], before: str, piece: str) -> int | None:
    """The last safe cut in (text ending in the character before) + piece, as
    an offset into piece (-1: before that character); None if there is none."""
    pat, shift = rule
    text = before[-1:] + piece
    last = None
    for m in pat.finditer(text):  # the last match; finditer is linear in the piece
        last = m
    return None if last is None else last.start() + shift - len(before[-1:])


class BPETokenizer(Tokenizer):
    """Byte-level BPE given by its ranks (token bytes -> id), a pre-split
    pattern and special tokens; encoding and decoding are tiktoken's."""

    kind = "bpe"

    def __init__(self, ranks: dict[bytes, int], pattern: str = "gpt2",
                 special_tokens: dict[str, int] | None = None, pattern_regex: str | None = None,
                 name: str = "mingpt-bpe"):
        import tiktoken

        special_tokens = dict(special_tokens or {})
        if pattern_regex is None:
            if pattern not in PATTERNS:
                raise ShapeError(f"unknown pattern {pattern!r}: use one of {sorted(PATTERNS)} "
                                 "or give its regex")
            pattern_regex = PATTERNS[pattern]
        n = len(ranks)
        if sorted(ranks.values()) != list(range(n)):
            raise CheckpointError("BPE token ids must be 0..n-1, each once")
        missing = [b for b in range(256) if bytes([b]) not in ranks]
        if missing:
            raise CheckpointError(f"BPE vocabulary lacks the single byte {missing[0]:#04x}: "
                                  "some texts could not be encoded")
        ids = sorted(special_tokens.values())
        if ids != list(range(n, n + len(ids))):
            raise CheckpointError(f"special token ids {ids} must follow the {n} mergeable ids "
                                  "without gaps")
        self.ranks = ranks
        self.pattern = pattern
        self.pattern_regex = pattern_regex
        self.special_tokens = special_tokens
        self.vocab_size = n + len(special_tokens)
        self.eot_token = special_tokens.get(ENDOFTEXT)
        self._id_to_bytes: list[bytes] | None = None
        try:
            self.enc = tiktoken.Encoding(name=name, pat_str=pattern_regex, mergeable_ranks=ranks,
                                         special_tokens=special_tokens,
                                         explicit_n_vocab=self.vocab_size)
        except Exception as e:  # a bad regex or inconsistent table, from Rust
            raise CheckpointError(f"tiktoken rejected the BPE tables: {e}") from None

    # ---- encoding
    def encode(self, text: str, allowed_special=(), disallowed_special="all") -> list[int]:
        allowed, disallowed = self._special_args(allowed_special, disallowed_special)
        try:
            return self.enc.encode(text, allowed_special=allowed, disallowed_special=disallowed)
        except ValueError as e:
            raise self._special_error(text, allowed, e) from None

    def encode_array(self, text: str, allowed_special=(), disallowed_special="all") -> np.ndarray:
        allowed, disallowed = self._special_args(allowed_special, disallowed_special)
        parts = _cuts(text, self._specials_in_play(allowed, disallowed), self.pattern_regex, allowed)
        try:
            if len(parts) == 1:
                return np.asarray(self.enc.encode(text, allowed_special=allowed,
                                                  disallowed_special=disallowed), dtype=np.int32)
            batches = self.enc.encode_batch(parts, num_threads=os.cpu_count() or 1,
                                            allowed_special=allowed, disallowed_special=disallowed)
        except ValueError as e:
            raise self._special_error(text, allowed, e) from None
        return np.concatenate([np.asarray(b, dtype=np.int32) for b in batches])

    def encode_pieces(self, pieces: Iterable[str], allowed_special=(),
                      disallowed_special="all") -> Iterator[np.ndarray]:
        """int32 ids of a text given in consecutive pieces, equal to
        encode_array of the joined text: each piece is encoded up to its last
        safe cut (see "safe cuts") and the rest carried into the next one."""
        special = dict(allowed_special=allowed_special, disallowed_special=disallowed_special)
        allowed, disallowed = self._special_args(allowed_special, disallowed_special)
        rule = _cut_rule(self.pattern_regex, self._specials_in_play(allowed, disallowed), allowed)
        held: list[str] = []  # the text since the last cut, in pieces: no cut lies inside it
        for piece in pieces:
            if not piece:
                continue
            k = None if rule is None else _last_cut(rule, held[-1] if held else "", piece)
            if k is None or (k <= 0 and not held):
                held.append(piece)
                continue
            if k < 0:  # the cut falls before the last held character (a newline)
                head = "".join(held)
                text, held = head[:-1], [head[-1] + piece]
            else:
                text = "".join(held) + piece[:k]
                held = [piece[k:]] if k < len(piece) else []
            if text:
                yield self.encode_array(text, **special)
        if held:
            yield self.encode_array("".join(held), **special)

    def _specials_in_play(self, allowed, disallowed) -> dict[str, int]:
        """The special tokens the encoding looks for: none when every one is text."""
        return self.special_tokens if allowed or disallowed else {}

    def _special_args(self, allowed_special, disallowed_special):
        if allowed_special is None:
            allowed = set()
        elif allowed_special == "all":
            allowed = "all"
        else:
            allowed = {allowed_special} if isinstance(allowed_special, str) else set(allowed_special)
            unknown = sorted(allowed - self.special_tokens.keys())
            if unknown:
                raise ShapeError(f"{unknown[0]!r} is not a special token of this tokenizer "
                                 f"(it has {sorted(self.special_tokens) or 'none'})")
        if disallowed_special not in ("all", (), None) and not isinstance(disallowed_special, (set, frozenset, list, tuple)):
            raise ShapeError("disallowed_special must be 'all' or a collection of special tokens")
        return allowed, (() if disallowed_special is None else disallowed_special)

    def _special_error(self, text: str, allowed, e: ValueError) -> DataError:
        found = next((s for s in self.special_tokens if s in text
                      and (allowed != "all" and s not in allowed)), None)
        if found is None:
            return DataError(str(e))
        return DataError(f"the text contains the special token {found!r}, which is not allowed: "
                         "allow it (allowed_special / --allow-special) or encode it as plain "
                         "text (disallowed_special=() / --special-as-text)")

    def decode(self, ids: Iterable[int]) -> str:
        return self.enc.decode(_check_ids(ids, self.vocab_size))

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self.enc.decode_bytes(_check_ids(ids, self.vocab_size))

    def token_bytes(self, i: int) -> bytes:
        return self.enc.decode_single_token_bytes(_check_ids([i], self.vocab_size)[0])

    # ---- tables
    @property
    def id_to_bytes(self) -> list[bytes]:
        if self._id_to_bytes is None:
            table = [b""] * len(self.ranks)
            for b, i in self.ranks.items():
                table[i] = b
            self._id_to_bytes = table
        return self._id_to_bytes

    def merge_of(self, i: int) -> tuple[int, int] | None:
        """The pair (left, right) that token i merges, found as tiktoken would
        build it: BPE on its bytes with the tokens ranked below it."""
        piece = self.id_to_bytes[i]
        if len(piece) < 2:
            return None
        parts = [piece[k:k + 1] for k in range(len(piece))]
        ranks = self.ranks
        while len(parts) > 2:
            best, at = None, -1
            for k in range(len(parts) - 1):
                r = ranks.get(parts[k] + parts[k + 1])
                if r is not None and r < i and (best is None or r < best):
                    best, at = r, k
            if best is None:
                return None
            parts[at:at + 2] = [parts[at] + parts[at + 1]]
        return ranks[parts[0]], ranks[parts[1]]

    def dump(self) -> Iterable[str]:
        """Human-readable lines: rank/id, token, and the merge that makes it."""
        yield f"# pattern {self.pattern}: {self.pattern_regex}"
        yield f"# {len(self.ranks)} mergeable tokens, {len(self.special_tokens)} special; vocab_size {self.vocab_size}"
        for i, piece in enumerate(self.id_to_bytes):
            m = self.merge_of(i)
            how = f"  = {m[0]} + {m[1]}" if m else ""
            yield f"{i}\t{printable(piece)}{how}"
        for s, i in sorted(self.special_tokens.items(), key=lambda kv: kv[1]):
            yield f"{i}\t{s!r}  (special)"

    # ---- files
    def to_json(self) -> dict:
        return {
            "format": "mingpt-bpe",
            "version": 1,
            "pattern": {"name": self.pattern, "regex": self.pattern_regex},
            "special_tokens": dict(self.special_tokens),
            "tokens": [base64.b64encode(b).decode("ascii") for b in self.id_to_bytes],
        }

    @classmethod
    def _from_json(cls, obj: dict) -> "BPETokenizer":
        try:
            pat = obj["pattern"]
            tokens = obj["tokens"]
            specials = obj.get("special_tokens", {})
            if not isinstance(pat, dict) or not isinstance(pat.get("regex"), str):
                raise CheckpointError("'pattern' must be {\"name\": ..., \"regex\": ...}")
            if not isinstance(tokens, list) or not isinstance(specials, dict):
                raise CheckpointError("'tokens' must be a list and 'special_tokens' an object")
            ranks: dict[bytes, int] = {}
            for i, t in enumerate(tokens):
                b = base64.b64decode(t, validate=True)
                if b in ranks:
                    raise CheckpointError(f"token {i} repeats token {ranks[b]} ({printable(b)})")
                ranks[b] = i
            specials = {str(k): int(v) for k, v in specials.items()}
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f"malformed mingpt-bpe file: {e!r}") from None
        return cls(ranks, pattern=str(pat.get("name", "custom")), special_tokens=specials,
                   pattern_regex=pat["regex"])

    @classmethod
    def from_merges(cls, merges: Sequence[Sequence[int]], pattern: str = "gpt2",
                    special_tokens: Sequence[str] = ()) -> "BPETokenizer":
        """Tokens 0..255 are the bytes, token 256 + i is merges[i] = (left, right);
        the special tokens get the ids after them, in the order given."""
        table = [bytes([b]) for b in range(256)]
        for i, (a, b) in enumerate(merges):
            if not (0 <= a < len(table) and 0 <= b < len(table)):
                raise ShapeError(f"merge {i} ({a}, {b}) uses a token that does not exist yet")
            table.append(table[a] + table[b])
        ranks = {b: i for i, b in enumerate(table)}
        if len(ranks) != len(table):
            raise ShapeError("two merges make the same byte string")
        specials = {s: len(table) + j for j, s in enumerate(special_tokens)}
        return cls(ranks, pattern=pattern, special_tokens=specials)

    @classmethod
    def from_gpt2_files(cls, encoder_json: str | os.PathLike, vocab_bpe: str | os.PathLike) -> "BPETokenizer":
        """GPT-2's own files: vocab.bpe (merges in rank order) and encoder.json
        (token string -> id, in GPT-2's byte-to-unicode alphabet)."""
        ranks, specials = _read_gpt2_files(encoder_json, vocab_bpe)
        return cls(ranks, pattern="gpt2", special_tokens=specials, name="gpt2")


def _read_gpt2_files(encoder_json: str | os.PathLike, vocab_bpe: str | os.PathLike):
    """(ranks, special tokens) from files in GPT-2's format (tiktoken's
    "data gym"): ranks are the 256 bytes in GPT-2's alphabet order, then one
    token per merge line of vocab.bpe; encoder.json must give the same ids."""
    byte_of = {ch: b for b, ch in _gpt2_bytes_to_unicode().items()}

    def to_bytes(s: str) -> bytes:
        try:
            return bytes(byte_of[c] for c in s)
        except KeyError:
            raise CheckpointError(f"GPT-2 token {s!r} has a character outside GPT-2's byte alphabet") from None
    try:
        encoder = json.loads(Path(encoder_json).read_text(encoding="utf-8"))
        lines = Path(vocab_bpe).read_text(encoding="utf-8").split("\n")
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read the GPT-2 files: {e}") from None
    if not isinstance(encoder, dict):
        raise CheckpointError(f"{encoder_json}: expected a JSON object (token -> id)")
    # Ranks as GPT-2 defines them: the byte alphabet, then one token per merge.
    table = [bytes([b]) for b in _gpt2_bytes_to_unicode()]
    for n, line in enumerate(lines[1:], 2):
        line = line.rstrip("\r")
        if line:
            parts = line.split(" ")
            if len(parts) != 2:
                raise CheckpointError(f"{vocab_bpe} line {n}: expected two tokens separated by a space")
            table.append(to_bytes(parts[0]) + to_bytes(parts[1]))
    ranks = {b: i for i, b in enumerate(table)}
    specials = {k: v for k, v in encoder.items() if k == ENDOFTEXT}
    by_file = {to_bytes(k): v for k, v in encoder.items() if k != ENDOFTEXT}
    if by_file != ranks:
        raise CheckpointError(f"{encoder_json} and {vocab_bpe} disagree")
    return ranks, specials


def _gpt2_bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte, in GPT-2's alphabet order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


# ---------------------------------------------------------------- GPT-2

GPT2_DIR_ENV = "MINGPT_GPT2_DIR"
# tiktoken builds "gpt2" from these two files and caches each under the sha1
# of its address in TIKTOKEN_CACHE_DIR (see tiktoken/load.py).
_GPT2_URLS = {"vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
              "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json"}
# Names of the pair in a directory: GPT-2's release, or a Hugging Face model.
_GPT2_NAMES = (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt"))
# sha256 of GPT-2's 50,256 mergeable tokens in id order (see _ranks_digest).
_GPT2_DIGEST = "7cff19521369c7f5f5ed77ed7b730e7491800afb47d01d341e12b3ca740d8543"
_GPT2_ENCODINGS: dict[str, object] = {}  # directory -> tiktoken.Encoding, built once per process


def _ranks_digest(ranks: dict[bytes, int]) -> str:
    h = hashlib.sha256()
    for piece in sorted(ranks, key=ranks.__getitem__):
        h.update(len(piece).to_bytes(4, "little") + piece)
    return h.hexdigest()


def _tiktoken_cache_has_gpt2() -> bool:
    """Whether tiktoken would find both gpt2 files in its cache (the same
    directory choice as tiktoken.load.read_file_cached), so loading it
    touches no network."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        cache = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        cache = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        cache = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return bool(cache) and all(
        os.path.isfile(os.path.join(cache, hashlib.sha1(url.encode()).hexdigest()))
        for url in _GPT2_URLS.values())


def gpt2_files_in(d: str | os.PathLike) -> tuple[Path, Path] | None:
    """(encoder.json, vocab.bpe) in directory d, under GPT-2's or Hugging
    Face's names (vocab.json, merges.txt); None if d holds neither pair."""
    for enc, bpe in _GPT2_NAMES:
        if (Path(d) / enc).is_file() and (Path(d) / bpe).is_file():
            return Path(d) / enc, Path(d) / bpe
    return None


def _gpt2_from_dir(d: str | os.PathLike, how: str):
    """tiktoken's gpt2 Encoding built from GPT-2's files in directory d; how
    ("gpt2:" or "MINGPT_GPT2_DIR=") says where d came from, for the errors."""
    import tiktoken

    key = os.path.realpath(d)
    if key in _GPT2_ENCODINGS:
        return _GPT2_ENCODINGS[key]
    if not Path(d).is_dir():
        raise DataError(f"{how}{d} is not a directory: give one holding GPT-2's "
                        "encoder.json and vocab.bpe")
    files = gpt2_files_in(d)
    if files is None:
        raise DataError(f"{how}{d} holds no encoder.json + vocab.bpe "
                        "(or vocab.json + merges.txt): give the directory with GPT-2's files")
    ranks, specials = _read_gpt2_files(*files)
    if _ranks_digest(ranks) != _GPT2_DIGEST or specials != {ENDOFTEXT: len(ranks)}:
        raise CheckpointError(f"{files[0]} and {files[1]} are not GPT-2's vocabulary; "
                              "use GPT-2's files, or train a tokenizer file")
    enc = tiktoken.Encoding(name="gpt2", pat_str=PATTERNS["gpt2"], mergeable_ranks=ranks,
                            special_tokens=specials, explicit_n_vocab=len(ranks) + 1)
    _GPT2_ENCODINGS[key] = enc
    return enc


def _gpt2_encoding(gpt2_dir: str | os.PathLike | None = None):
    """GPT-2's tiktoken Encoding from gpt2_dir if given; else tiktoken's cache
    if it holds the files; else the directory in $MINGPT_GPT2_DIR; else a
    download by tiktoken. Fails with one line naming what to provide."""
    import tiktoken

    if gpt2_dir is not None:
        return _gpt2_from_dir(gpt2_dir, "gpt2:")
    if _tiktoken_cache_has_gpt2():
        try:
            return tiktoken.get_encoding("gpt2")
        except Exception:  # a damaged cache: try the other sources
            pass
    if os.environ.get(GPT2_DIR_ENV):
        return _gpt2_from_dir(os.environ[GPT2_DIR_ENV], GPT2_DIR_ENV + "=")
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # no network, a proxy, a blocked host: tiktoken's long trace is no help
        raise DataError(f"cannot load the GPT-2 tokenizer (offline? tiktoken's download failed: "
                        f"{type(e).__name__}): set {GPT2_DIR_ENV} (or pass --tokenizer gpt2:DIR) to a "
                        "directory holding GPT-2's encoder.json and vocab.bpe, or TIKTOKEN_CACHE_DIR "
                        "to a tiktoken cache that holds gpt2") from None


class GPT2Tokenizer(BPETokenizer):
    """tiktoken's "gpt2" encoding; gpt2_dir: a directory with GPT-2's
    encoder.json + vocab.bpe to build it from (see _gpt2_encoding for where
    it is looked for otherwise). Saved as a reference to GPT-2, not its tables."""

    kind = "gpt2"

    def __init__(self, gpt2_dir: str | os.PathLike | None = None):
        enc = _gpt2_encoding(gpt2_dir)
        self.enc = enc
        self.ranks = enc._mergeable_ranks
        self.pattern = "gpt2"
        self.pattern_regex = enc._pat_str
        self.special_tokens = dict(enc._special_tokens)
        self.vocab_size = enc.n_vocab
        self.eot_token = enc.eot_token
        self._id_to_bytes = None

    def to_json(self) -> dict:
        return {"format": "mingpt-gpt2", "version": 1}

    @classmethod
    def _from_json(cls, obj: dict) -> "GPT2Tokenizer":
        return cls()


_FORMATS = {"mingpt-char": CharTokenizer, "mingpt-byte": ByteTokenizer,
            "mingpt-gpt2": GPT2Tokenizer, "mingpt-bpe": BPETokenizer}


def get_tokenizer(spec: str | os.PathLike, train_text: str | None = None) -> Tokenizer:
    """"char" (needs train_text), "byte", "gpt2", "gpt2:DIR" (GPT-2 built from
    DIR's encoder.json + vocab.bpe), or the path of a tokenizer file."""
    if spec == "char":
        if train_text is None:
            raise ShapeError("the char tokenizer is built from a training text; none was given")
        return CharTokenizer.from_text(train_text)
    if spec == "byte":
        return ByteTokenizer()
    if spec == "gpt2":
        return GPT2Tokenizer()
    if isinstance(spec, str) and spec.startswith("gpt2:") and not Path(spec).is_file():
        return GPT2Tokenizer(gpt2_dir=os.path.expanduser(spec[len("gpt2:"):]))
    if not Path(spec).is_file():
        raise DataError(f"tokenizer {str(spec)!r} is neither char, byte, gpt2, gpt2:DIR nor a tokenizer file")
    return Tokenizer.load(spec)


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    return Tokenizer.load(path)


def build_tokenizer(spec: str | os.PathLike, pieces) -> Tokenizer:
    """Like get_tokenizer, for texts too large to hold: pieces() yields the
    training text piece by piece (only "char" reads it)."""
    if spec == "char":
        chars: set[str] = set()
        for piece in pieces():
            chars.update(piece)
        if not chars:
            raise DataError("a char tokenizer needs a non-empty training text")
        return CharTokenizer(sorted(chars))
    return get_tokenizer(spec)
