"""Marian (opus-mt) vocabularies: one side's tokenizer of a Hugging Face
MarianMT model, giving transformers' MarianTokenizer ids exactly, with
sentencepiece alone (transformers is not needed).

A Marian tokenizer directory holds
    source.spm, target.spm   each language's sentencepiece (unigram) model
    vocab.json               piece -> id of the model's embedding, shared by
                             both sides: "</s>": 0, "<unk>": 1, ..., "<pad>" last
    target_vocab.json        the target's own, when separate_vocabs is set
    tokenizer_config.json    separate_vocabs, special tokens, languages
and the model's config.json gives decoder_start_token_id (the pad id).

Encoding (MarianTokenizer(text)["input_ids"] without its trailing </s>;
side "target" is MarianTokenizer(text_target=text)):
  1. Added tokens written literally in the text (</s>, <unk>, <pad>, any
     extra special tokens) are cut out first, leftmost then longest, and
     keep their ids. Those ids come from vocab.json on both sides, even
     when the target has its own vocabulary (transformers does the same).
  2. Each remaining stretch that starts with ">>" up to the first "<<"
     gives that prefix as one token, a language code such as >>fra<<
     (whatever is between, spaces included; <unk> when not in the vocabulary).
  3. The rest goes through the side's sentencepiece model, which applies
     its own normalisation (NFKC; runs of whitespace become one, leading
     and trailing whitespace dropped). A piece missing from the side's
     vocabulary (e.g. a character never seen) becomes <unk>.
  MarianTokenizer builds a Moses punctuation normaliser but never calls it
  while tokenizing, so there is none here either.

Decoding (MarianTokenizer.decode(ids, skip_special_tokens=True), and it
stops at the first </s>): the pad/decoder-start id and every special token
are skipped, <unk> included (it vanishes rather than showing "<unk>"); the
pieces are joined by sentencepiece's decode_pieces, "▁" becomes a space and
the ends are stripped. The sentencepiece model used is source.spm unless the
vocabularies are separate (transformers' default use_source_tokenizer), so a
target side sharing vocab.json decodes with the source model.

Special ids are the side's vocabulary entries: pad_id <pad>, eos_id </s>,
unk_id <unk>; bos_id (where the decoder starts) is decoder_start_token_id,
else pad_id. Encoded sources end with </s> (src_eos True).

File (written atomically like the other kinds; each side's file holds the
whole tokenizer, so either one can write the directory back):
  {"format": "mingpt-seq2seq-vocab", "version": 1, "kind": "marian",
   "side": "source" | "target", "source_spm": <base64 of source.spm>,
   "target_spm": <base64 of target.spm, or null when the same bytes>,
   "vocab": {piece: id}, "target_vocab": {piece: id} | null,
   "tokenizer_config": {...}, "decoder_start_id": int | null}
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import re
from pathlib import Path
from typing import Iterable, NamedTuple

import sentencepiece

from mingpt_c.errors import CheckpointError, IndexRangeError, ShapeError
from mingpt_c.seq2seq.vocab import FORMAT, _show, load_file
from mingpt_c.tokenizers.tokenizer import write_json

SIDES = ("source", "target")
SPM_FILES = {"source": "source.spm", "target": "target.spm"}
# transformers' named special tokens, in its order, and MarianTokenizer's defaults
NAMED = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
DEFAULTS = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
# tokenizer_config.json entries about where a copy was loaded from, not about the tokenizer
_LOCAL_KEYS = ("name_or_path", "is_local", "local_files_only", "tokenizer_file", "special_tokens_map_file")
SPIECE_UNDERLINE = "▁"


class _Added(NamedTuple):
    """A token cut out of the text before sentencepiece (transformers' AddedToken)."""
    id: int
    lstrip: bool = False
    rstrip: bool = False
    single_word: bool = False


def _content(tok) -> str:
    """A token given as a string or as a serialised AddedToken {"content": ...}."""
    if isinstance(tok, dict):
        tok = tok.get("content")
    if not isinstance(tok, str) or not tok:
        raise CheckpointError(f"tokenizer_config.json: special token {tok!r} is not a non-empty string")
    return tok


def _flags(tok) -> dict:
    if not isinstance(tok, dict):
        return {}
    return {k: bool(tok.get(k, False)) for k in ("lstrip", "rstrip", "single_word")}


def _check_vocab(vocab, name: str) -> dict[str, int]:
    """piece -> id, the ids exactly 0..n-1 (Marian's vocabularies are dense)."""
    if not isinstance(vocab, dict) or not vocab:
        raise CheckpointError(f"{name} must be a non-empty JSON object of piece -> id")
    if not all(isinstance(k, str) and type(v) is int for k, v in vocab.items()):
        raise CheckpointError(f"{name} must map strings to integer ids")
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise CheckpointError(f"{name}: the ids must be 0..{len(vocab) - 1}, each once")
    return dict(vocab)


def _processor(model: bytes, name: str) -> sentencepiece.SentencePieceProcessor:
    try:
        return sentencepiece.SentencePieceProcessor(model_proto=model)
    except (RuntimeError, OSError, TypeError) as e:
        raise CheckpointError(f"{name} is not a sentencepiece model ({e})") from None


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise CheckpointError(f"cannot read {what} {path}: {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{what} {path} is not UTF-8 JSON ({e})") from None


def _b64(s, name: str) -> bytes:
    if not isinstance(s, str):
        raise CheckpointError(f"a marian vocabulary needs '{name}' as a base64 string")
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise CheckpointError(f"the marian vocabulary's '{name}' is not valid base64") from None


class MarianVocab:
    """One side of a Marian tokenizer, with Vocab's interface. Build with
    MarianVocab.from_dir(d, side), read with MarianVocab.load or Vocab.load."""

    kind = "marian"

    def __init__(self, source_spm: bytes, target_spm: bytes | None, vocab: dict[str, int],
                 target_vocab: dict[str, int] | None = None, tokenizer_config: dict | None = None,
                 side: str = "source", decoder_start_id: int | None = None):
        """source_spm, target_spm: the .spm files' bytes (None: the source's);
        vocab: vocab.json; target_vocab: target_vocab.json, given only when
        the vocabularies are separate; tokenizer_config: tokenizer_config.json;
        decoder_start_id: the model's decoder_start_token_id (None: pad)."""
        if side not in SIDES:
            raise ShapeError(f"marian vocabulary side {side!r}: use source or target")
        self.side = side
        self._spm_bytes = {"source": bytes(source_spm),
                           "target": bytes(source_spm if target_spm is None else target_spm)}
        sp = {s: _processor(b, SPM_FILES[s]) for s, b in self._spm_bytes.items()}
        self.vocab = _check_vocab(vocab, "vocab.json")
        self.target_vocab = None if target_vocab is None else _check_vocab(target_vocab, "target_vocab.json")
        self.separate = self.target_vocab is not None
        cfg = {k: v for k, v in (tokenizer_config or {}).items() if k not in _LOCAL_KEYS}
        cfg["separate_vocabs"] = self.separate
        cfg.setdefault("tokenizer_class", "MarianTokenizer")   # for AutoTokenizer
        self.config = cfg

        own = self.target_vocab if self.separate and side == "target" else self.vocab
        self.stoi = own                                     # piece -> id of this side
        self.itos = [""] * len(own)                         # id -> piece
        for piece, i in own.items():
            self.itos[i] = piece
        self.size = len(own)
        self._encode_sp = sp[side]
        self._decode_sp = sp["target" if self.separate and side == "target" else "source"]

        names = {k: _content(cfg.get(k, DEFAULTS.get(k))) for k in NAMED if cfg.get(k, DEFAULTS.get(k))}
        for key in ("unk_token", "eos_token", "pad_token"):
            if key not in names or names[key] not in own:
                raise CheckpointError(f"the {side} vocabulary has no {key} {names.get(key)!r}: "
                                      f"a Marian vocabulary lists <unk>, </s> and <pad>")
        self._unk, self._eos, self._pad = (own[names[k]] for k in ("unk_token", "eos_token", "pad_token"))
        if decoder_start_id is not None and not (type(decoder_start_id) is int and 0 <= decoder_start_id < self.size):
            raise CheckpointError(f"decoder start id {decoder_start_id!r} is outside the {side} "
                                  f"vocabulary [0, {self.size})")
        self._decoder_start = decoder_start_id
        self._build_added(cfg, names)

    def _build_added(self, cfg: dict, names: dict[str, str]) -> None:
        """The added tokens (cut out of text first) and the special ones
        (skipped when decoding), as transformers builds them: the named
        special tokens, then the extra ones, then the rest of the config's
        added_tokens_decoder; ids from added_tokens_decoder, else vocab.json."""
        extra = cfg.get("extra_special_tokens") or cfg.get("additional_special_tokens") or []
        extra = list(extra.values()) if isinstance(extra, dict) else list(extra)
        declared = {}       # content -> (id, entry) from added_tokens_decoder
        for k, entry in (cfg.get("added_tokens_decoder") or {}).items():
            try:
                declared[_content(entry)] = (int(k), entry)
            except ValueError:
                raise CheckpointError(f"tokenizer_config.json: added token id {k!r} is not an integer") from None
        flags = {_content(t): _flags(t) for t in [cfg.get(k) for k in NAMED] + extra if t}
        specials = list(dict.fromkeys([*names.values(), *map(_content, extra)]))
        added = {}
        for tok in specials + [t for t in declared if t not in specials]:
            if tok in declared:
                i, entry = declared[tok]
                fl = _flags(entry)
            elif tok in self.vocab:
                i, fl = self.vocab[tok], flags.get(tok, {})
            else:
                raise CheckpointError(f"special token {tok!r} is not in vocab.json: the model has no embedding "
                                      f"for it (add it to vocab.json or drop it from tokenizer_config.json)")
            if not 0 <= i < len(self.vocab):
                raise CheckpointError(f"added token {tok!r} has id {i}, outside vocab.json [0, {len(self.vocab)})")
            added[tok] = _Added(i, **fl)
        self._added = added                                         # content -> _Added
        self._added_by_id = {a.id: t for t, a in added.items()}     # id -> content
        self._special_pieces = set(specials)
        self._special_ids = {added[t].id for t in specials}
        # leftmost match, the longest of those starting there: transformers'
        # Trie.split for these few tokens (none is a prefix of another)
        self._split_re = re.compile("|".join(re.escape(t) for t in sorted(added, key=len, reverse=True))) \
            if added else None

    # ------------------------------------------------------------------ build

    @classmethod
    def from_dir(cls, d: str | os.PathLike, side: str = "source") -> "MarianVocab":
        """One side of the Marian tokenizer saved in directory d (a Hugging
        Face opus-mt model's files; see the module docstring)."""
        d = Path(d)
        if side not in SIDES:
            raise ShapeError(f"marian vocabulary side {side!r}: use source or target")
        cfg_path = d / "tokenizer_config.json"
        cfg = _read_json(cfg_path, "tokenizer config") if cfg_path.exists() else {}
        if not isinstance(cfg, dict):
            raise CheckpointError(f"{cfg_path} must hold a JSON object")
        vocab = _read_json(d / "vocab.json", "Marian vocabulary")
        target_vocab = _read_json(d / "target_vocab.json", "Marian target vocabulary") \
            if cfg.get("separate_vocabs") else None
        spms = {}
        for s, name in SPM_FILES.items():
            try:
                spms[s] = (d / name).read_bytes()
            except OSError as e:
                raise CheckpointError(f"cannot read sentencepiece model {d / name}: {e.strerror or e}") from None
        start = None
        if (d / "config.json").exists():
            model_cfg = _read_json(d / "config.json", "model config")
            start = model_cfg.get("decoder_start_token_id") if isinstance(model_cfg, dict) else None
        try:
            return cls(spms["source"], spms["target"], vocab, target_vocab, cfg, side, start)
        except CheckpointError as e:
            raise CheckpointError(f"{d}: {e}") from None

    def for_side(self, side: str) -> "MarianVocab":
        """The same tokenizer's other (or same) side."""
        return MarianVocab(self._spm_bytes["source"], self._spm_bytes["target"], self.vocab, self.target_vocab,
                           self.config, side, self._decoder_start)

    def write_dir(self, d: str | os.PathLike) -> Path:
        """Writes source.spm, target.spm, vocab.json (and target_vocab.json)
        and tokenizer_config.json into d, for MarianTokenizer.from_pretrained(d)."""
        d = Path(d)
        d.mkdir(parents=True, exist_ok=True)
        for s, name in SPM_FILES.items():
            (d / name).write_bytes(self._spm_bytes[s])
        write_json(d / "vocab.json", self.vocab)
        if self.separate:
            write_json(d / "target_vocab.json", self.target_vocab)
        write_json(d / "tokenizer_config.json", self.config)
        return d

    # ------------------------------------------------------------------ special ids

    @property
    def pad_id(self) -> int:
        return self._pad

    @property
    def bos_id(self) -> int:
        """Where the decoder starts: decoder_start_token_id, Marian's pad."""
        return self._pad if self._decoder_start is None else self._decoder_start

    @property
    def eos_id(self) -> int:
        return self._eos

    @property
    def unk_id(self) -> int:
        return self._unk

    @property
    def src_eos(self) -> bool:
        """Marian sources end with </s>."""
        return True

    @property
    def language_codes(self) -> list[str]:
        """The >>xx<< tokens of this side's vocabulary, to start a source
        with when the model translates into several languages."""
        return [p for p in self.stoi if p.startswith(">>") and p.endswith("<<")]

    # ------------------------------------------------------------------ text <-> ids

    def tokens_of(self, text: str) -> list[str]:
        """The units error rates count: whitespace-separated words."""
        return text.split()

    def _split(self, text: str) -> list[str]:
        """text cut around added tokens, their lstrip/rstrip/single_word
        applied as transformers' PreTrainedTokenizer.tokenize does."""
        if self._split_re is None or not any(t[0] in text for t in self._added):
            return [text] if text else []
        parts, at = [], 0
        for m in self._split_re.finditer(text):
            parts += [text[at:m.start()], m.group()]
            at = m.end()
        parts = [p for p in parts + [text[at:]] if p]
        for i, tok in enumerate(parts):
            a = self._added.get(tok)
            if a is None:
                continue
            left = parts[i - 1] if i > 0 else None
            right = parts[i + 1] if i < len(parts) - 1 else None
            if a.rstrip and right:
                parts[i + 1] = right.lstrip()
            if a.lstrip and left:
                parts[i - 1] = left.rstrip()
            if a.single_word:
                if left and left[-1] != " ":
                    parts[i - 1] += tok
                    parts[i] = ""
                elif right and right[0] != " ":
                    parts[i + 1] = tok + parts[i + 1]
                    parts[i] = ""
        return parts

    def pieces(self, text: str) -> list[str]:
        """MarianTokenizer.tokenize(text) for this side: added tokens,
        language codes and sentencepiece pieces."""
        out = []
        for part in self._split(text):
            if not part:
                continue
            if part in self._added:
                out.append(part)
                continue
            if part.startswith(">>") and (end := part.find("<<")) != -1:
                out.append(part[:end + 2])
                part = part[end + 2:]
            out += self._encode_sp.encode(part, out_type=str)
        return out

    def encode(self, text: str) -> list[int]:
        """Ids of text, without the </s> the model's sources end with."""
        added, get, unk = self._added, self.stoi.get, self._unk
        return [added[p].id if p in added else get(p, unk) for p in self.pieces(text)]

    def unknown(self, text: str) -> list[str]:
        """Always empty: sentencepiece takes any text (unseen pieces become <unk>)."""
        return []

    def _check(self, ids: Iterable[int]) -> list[int]:
        ids = [int(i) for i in ids]
        bad = next((i for i in ids if not 0 <= i < self.size), None)
        if bad is not None:
            raise IndexRangeError(f"token id {bad} is outside the marian {self.side} vocabulary [0, {self.size})")
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ids up to the first </s>, as
        MarianTokenizer.decode(ids, skip_special_tokens=True) gives it."""
        ids = self._check(ids)
        if self._eos in ids:
            ids = ids[:ids.index(self._eos)]
        skip = self._special_ids | {self._pad, self.bos_id}
        tokens = [self._added_by_id[i] if i in self._added_by_id else self.itos[i] for i in ids if i not in skip]
        # MarianTokenizer.convert_tokens_to_string: specials (none survive the
        # skip unless separate vocabularies number them differently) are not
        # passed to sentencepiece
        out, run = "", []
        for t in tokens:
            if t in self._special_pieces:
                out += self._decode_sp.decode_pieces(run) + t + " "
                run = []
            else:
                run.append(t)
        out = (out + self._decode_sp.decode_pieces(run)).replace(SPIECE_UNDERLINE, " ").strip()
        if self.config.get("clean_up_tokenization_spaces"):   # transformers' clean_up_tokenization
            for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                         (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
                out = out.replace(a, b)
        return out

    def symbols(self, ids: Iterable[int]) -> list[str]:
        """One display piece per id (specials included, nothing skipped):
        the sentencepiece pieces with their ▁, control characters escaped."""
        return [_show(self.itos[i]) for i in self._check(ids)]

    # ------------------------------------------------------------------ files

    def to_json(self) -> dict:
        src, tgt = self._spm_bytes["source"], self._spm_bytes["target"]
        return {"format": FORMAT, "version": 1, "kind": self.kind, "side": self.side,
                "source_spm": base64.b64encode(src).decode("ascii"),
                "target_spm": None if tgt == src else base64.b64encode(tgt).decode("ascii"),
                "vocab": self.vocab, "target_vocab": self.target_vocab,
                "tokenizer_config": self.config, "decoder_start_id": self._decoder_start}

    @classmethod
    def from_json(cls, obj: dict) -> "MarianVocab":
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            fmt = obj.get("format") if isinstance(obj, dict) else None
            raise CheckpointError(f"not a seq2seq vocabulary (format {fmt!r}, expected {FORMAT!r})")
        if obj.get("version") != 1:
            raise CheckpointError(f"{FORMAT} version {obj.get('version')!r} is not supported (this build reads 1)")
        if obj.get("kind") != cls.kind:
            raise CheckpointError(f"a {obj.get('kind')!r} vocabulary, not a marian one: read it with Vocab.load")
        side = obj.get("side")
        if side not in SIDES:
            raise CheckpointError(f"marian vocabulary side {side!r}: expected source or target")
        cfg = obj.get("tokenizer_config") or {}
        if not isinstance(cfg, dict):
            raise CheckpointError("the marian vocabulary's tokenizer_config must be a JSON object")
        tgt = obj.get("target_spm")
        return cls(_b64(obj.get("source_spm"), "source_spm"), None if tgt is None else _b64(tgt, "target_spm"),
                   obj.get("vocab"), obj.get("target_vocab"), cfg, side, obj.get("decoder_start_id"))

    def save(self, path: str | os.PathLike) -> None:
        """Writes the vocabulary file atomically (temporary file, then rename)."""
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MarianVocab":
        return load_file(path, cls.from_json)

    def __repr__(self) -> str:
        return f"MarianVocab(side={self.side!r}, size={self.size}{', separate' if self.separate else ''})"
