"""Tokenizers: text <-> token ids, one interface for every kind.

Kinds
  char   CharTokenizer: the characters seen in a training text, sorted.
  byte   ByteTokenizer: the 256 byte values of the UTF-8 text.
  gpt2   GPT2Tokenizer: tiktoken's "gpt2" encoding (50,257 ids).
  BPE    BPETokenizer: a byte-level BPE vocabulary trained by
         mingpt_c.bpe_train (or read from GPT-2's encoder.json + vocab.bpe),
         encoded through a tiktoken.Encoding built from its ranks, so encoding
         runs at tiktoken's speed.

Common interface: encode(text) -> list[int], encode_array(text) -> int32
array, decode(ids) -> str, vocab_size, eot_token (id of "<|endoftext|>" or
None), to_json(), save(path), Tokenizer.load(path); get_tokenizer(spec)
accepts "char" (with train_text), "byte", "gpt2" or a tokenizer file.

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
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from mingpt_c.errors import CheckpointError, DataError, IndexRangeError, ShapeError

ENDOFTEXT = "<|endoftext|>"

# Pre-split regexes, exactly tiktoken's: r50k_base/gpt2 and cl100k_base.
# "none" does not split words: a chunk is a line, so merges may cross spaces.
PATTERNS = {
    "gpt2": r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""",
    "gpt4": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
    "none": r"""[^\n]*\n|[^\n]+""",
}

# Texts longer than this are cut and encoded on several threads (see _cuts).
_BATCH_CHARS = 1 << 20


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _write_json_atomic(path: str | os.PathLike, obj: dict) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=path.name + ".", suffix=".tmp")
    try:
        os.chmod(tmp, _file_mode())  # mkstemp makes 0600; give what open() would
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def to_json(self) -> dict:
        raise NotImplementedError

    def save(self, path: str | os.PathLike) -> None:
        """Writes the tokenizer file atomically (temporary file, then rename)."""
        _write_json_atomic(path, self.to_json())

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

def _cuts(text: str, specials: Iterable[str]) -> list[str]:
    """Cuts a long text into about _BATCH_CHARS pieces at "x\\nA" (x printable
    ASCII, not a space; A an ASCII letter): every pattern ends a chunk there
    in the same way whether or not the text goes on, so the pieces encode to
    exactly the ids of the whole. Not cut when a special token holds a newline."""
    if len(text) <= 2 * _BATCH_CHARS or any("\n" in s for s in specials):
        return [text]
    out, start = [], 0
    while len(text) - start > 2 * _BATCH_CHARS:
        p = text.find("\n", start + _BATCH_CHARS)
        while p != -1 and not (p + 1 < len(text) and text[p + 1].isascii() and text[p + 1].isalpha()
                               and "!" <= text[p - 1] <= "~"):
            p = text.find("\n", p + 1)
        if p == -1:
            break
        out.append(text[start:p + 1])
        start = p + 1
    out.append(text[start:])
    return out


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
        parts = _cuts(text, self.special_tokens)
        try:
            if len(parts) == 1:
                return np.asarray(self.enc.encode(text, allowed_special=allowed,
                                                  disallowed_special=disallowed), dtype=np.int32)
            batches = self.enc.encode_batch(parts, num_threads=os.cpu_count() or 1,
                                            allowed_special=allowed, disallowed_special=disallowed)
        except ValueError as e:
            raise self._special_error(text, allowed, e) from None
        return np.concatenate([np.asarray(b, dtype=np.int32) for b in batches])

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
        # Ranks as GPT-2 defines them: the byte alphabet, then one token per merge.
        table = [bytes([b]) for b in _gpt2_bytes_to_unicode()]
        for line in lines[1:]:
            if line:
                a, b = line.split(" ")
                table.append(to_bytes(a) + to_bytes(b))
        ranks = {b: i for i, b in enumerate(table)}
        specials = {k: v for k, v in encoder.items() if k == ENDOFTEXT}
        by_file = {to_bytes(k): v for k, v in encoder.items() if k != ENDOFTEXT}
        if by_file != ranks:
            raise CheckpointError("encoder.json and vocab.bpe disagree")
        return cls(ranks, pattern="gpt2", special_tokens=specials, name="gpt2")


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


class GPT2Tokenizer(BPETokenizer):
    """tiktoken's "gpt2" encoding (downloads or reads tiktoken's cache once)."""

    kind = "gpt2"

    def __init__(self):
        import tiktoken

        try:
            enc = tiktoken.get_encoding("gpt2")
        except Exception as e:  # network or cache trouble inside tiktoken
            raise DataError(f"tiktoken could not load the gpt2 encoding ({e}); set "
                            "TIKTOKEN_CACHE_DIR to a folder holding its files when offline") from None
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
    """"char" (needs train_text), "byte", "gpt2", or the path of a tokenizer file."""
    if spec == "char":
        if train_text is None:
            raise ShapeError("the char tokenizer is built from a training text; none was given")
        return CharTokenizer.from_text(train_text)
    if spec == "byte":
        return ByteTokenizer()
    if spec == "gpt2":
        return GPT2Tokenizer()
    if not Path(spec).is_file():
        raise DataError(f"tokenizer {str(spec)!r} is neither char, byte, gpt2 nor a tokenizer file")
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
