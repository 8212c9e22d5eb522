"""Data for the encoder: JSON Lines with text and label, the special tokens,
BERT's masking, and padded batches of similar lengths.

Sequences are [CLS] tokens... [SEP], padded with [PAD] to the batch's
longest (rounded up to a multiple of 16); the key mask is 1 on real tokens.
A text longer than the context (max_len) keeps its first max_len - 2 tokens,
or with truncate="head_tail" its first and last ones (callers report how
many were cut). Empty texts are refused: there is
nothing to classify.

Masking (BERT, Devlin et al. 2019, section 3.1): each real, non-special
token is chosen with probability 0.15; a chosen token becomes [MASK] with
probability 0.8, a random ordinary token with 0.1, stays itself with 0.1.
Targets are the original ids at chosen positions and -100 elsewhere, so
only chosen positions enter the loss. [PAD], [CLS], [SEP] are never chosen.
"""
from __future__ import annotations

import json
import lzma
from pathlib import Path

import numpy as np

from mingpt_c.errors import DataError

IGNORE = -100
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# ------------------------------------------------------------------ tokenizers


class BPEWithSpecials:
    """A trained byte-level BPE (mingpt_c.tokenizers) plus BERT's special
    tokens; optional lower-casing. Special-token strings in a text are
    encoded as ordinary text, never as the specials."""

    kind = "bpe"

    def __init__(self, bpe, lower: bool = False):
        missing = [s for s in SPECIALS if s not in bpe.special_tokens]
        if missing:
            raise DataError(f"the BPE tokenizer lacks the special tokens {missing}")
        self.bpe, self.lower = bpe, lower
        self.special = {s: bpe.special_tokens[s] for s in SPECIALS}
        self.vocab_size = bpe.vocab_size

    def encode(self, text: str) -> list[int]:
        return self.bpe.encode(text.lower() if self.lower else text, disallowed_special=())

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        texts = [t.lower() for t in texts] if self.lower else texts
        return self.bpe.enc.encode_ordinary_batch(texts, num_threads=4)

    def decode(self, ids) -> str:
        return self.bpe.decode(ids)

    def describe(self) -> dict:
        return {"kind": "bpe", "file": "tokenizer.json", "lower": self.lower}

    def save(self, d: Path) -> None:
        self.bpe.save(Path(d) / "tokenizer.json")

    @classmethod
    def train(cls, texts: list[str], vocab_size: int, lower: bool = True, pattern: str = "gpt2",
              phrase_share: float = 0.25) -> "BPEWithSpecials":
        """pattern "none" lets merges cross spaces: frequent phrases ("waste
        of ", "i will not ") become single tokens. "phrases" learns within
        words first, then the last phrase_share of the merges across them,
        so phrases are built from whole words (" waste of", " i have ever seen")."""
        from mingpt_c.tokenizers import bpe_train

        texts = [t.lower() for t in texts] if lower else texts
        if pattern != "phrases":
            return cls(bpe_train.train(texts, vocab_size, pattern=pattern, special_tokens=SPECIALS), lower)
        if not 0.0 <= phrase_share <= 1.0:
            raise DataError(f"phrase share {phrase_share} must be in [0, 1]")
        n_merges = bpe_train.check_train_args(vocab_size, SPECIALS, "gpt2", 2)
        return cls(bpe_train.train(texts, vocab_size, pattern="gpt2", special_tokens=SPECIALS,
                                   phrases_after=round(n_merges * (1.0 - phrase_share))), lower)


def load_encoder_tokenizer(d: Path, desc: dict):
    from mingpt_c.errors import CheckpointError

    kind = (desc or {}).get("kind")
    if kind == "wordpiece":
        from mingpt_c.tokenizers.wordpiece import WordPiece
        return WordPiece.from_dir(d, {k: v for k, v in desc.items() if k not in ("kind", "file")})
    if kind == "bpe":
        from mingpt_c.tokenizers.tokenizer import load_tokenizer
        return BPEWithSpecials(load_tokenizer(Path(d) / "tokenizer.json"), desc.get("lower", False))
    raise CheckpointError(f"{d}: unknown encoder tokenizer {kind!r}")


def encode_texts(tok, texts: list[str]) -> list[list[int]]:
    if hasattr(tok, "encode_batch"):
        return tok.encode_batch(texts)
    return [tok.encode(t) for t in texts]

# ------------------------------------------------------------------ JSON Lines


def _open_text(path: Path):
    if path.suffix == ".xz":
        return lzma.open(path, "rt", encoding="utf-8-sig")
    return open(path, encoding="utf-8-sig")   # a byte-order mark is no text


def read_jsonl(path, need_label: bool = True) -> tuple[list[str], list]:
    """texts, labels of a JSON Lines file (.xz read as such). Each line is an
    object with a string "text" and (need_label) a "label" (a string or an
    integer); blank lines are skipped. Errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    texts, labels = [], []
    try:
        with _open_text(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as e:
                    raise DataError(f"{path} line {n}: not valid JSON ({e.args[0].split(':')[0]})") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{path} line {n}: expected a JSON object with \"text\" and \"label\"")
                text = obj.get("text")
                if not isinstance(text, str):
                    raise DataError(f"{path} line {n}: no \"text\" string")
                if not text.strip():
                    raise DataError(f"{path} line {n}: the text is empty")
                if need_label:
                    if "label" not in obj:
                        raise DataError(f"{path} line {n}: no \"label\"")
                    lab = obj["label"]
                    if isinstance(lab, bool) or not isinstance(lab, (str, int)):
                        raise DataError(f"{path} line {n}: the label must be a string or an integer, "
                                        f"got {json.dumps(lab)}")
                    labels.append(lab)
                texts.append(text)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason})") from None
    except (lzma.LZMAError, EOFError) as e:
        raise DataError(f"{path}: corrupt xz file ({e})") from None
    if not texts:
        raise DataError(f"{path}: no examples")
    return texts, labels


def label_names(labels: list) -> list:
    """Class names in a fixed order: numeric order for integers, else sorted strings."""
    uniq = set(labels)
    if all(isinstance(x, int) for x in uniq):
        return sorted(uniq)
    return sorted(uniq, key=str)


def label_ids(labels: list, names: list, path) -> np.ndarray:
    index = {n: i for i, n in enumerate(names)}
    index.update({str(n): i for i, n in enumerate(names)})  # "1" matches a saved 1
    out = np.empty(len(labels), np.int32)
    for i, lab in enumerate(labels):
        k = index.get(lab, index.get(str(lab)))
        if k is None:
            raise DataError(f"{path}: label {json.dumps(lab)} (example {i + 1}) was not seen in training; "
                            f"the model knows {', '.join(json.dumps(n) for n in names)}")
        out[i] = k
    return out

# ------------------------------------------------------------------ sequences


def frame(ids_list: list[list[int]], tok, max_len: int, truncate: str = "head") -> tuple[list[np.ndarray], int]:
    """[CLS] ids [SEP] per text, cut to max_len; returns (sequences, number
    cut). truncate="head" keeps the first tokens; "head_tail" keeps the
    first quarter and the last three quarters of the room (a review's
    verdict is often at its end: Sun et al. 2019, "How to fine-tune BERT
    for text classification", found head+tail best on IMDB)."""
    if truncate not in ("head", "head_tail"):
        raise DataError(f"truncate={truncate!r}: use head or head_tail")
    cls_id, sep_id = tok.special["[CLS]"], tok.special["[SEP]"]
    keep = max_len - 2
    head = keep // 4 if truncate == "head_tail" else keep
    seqs, cut = [], 0
    for ids in ids_list:
        if len(ids) > keep:
            cut += 1
            ids = ids[:head] + ids[len(ids) - (keep - head):] if head < keep else ids[:keep]
        seqs.append(np.asarray([cls_id, *ids, sep_id], np.int32))
    return seqs, cut


def pad_batch(seqs: list[np.ndarray], pad_id: int, multiple: int = 16, max_len: int | None = None):
    """tokens, mask (B, T) int32: T is the longest length rounded up to a
    multiple (never above max_len)."""
    T = max(len(s) for s in seqs)
    T = -(-T // multiple) * multiple
    if max_len:
        T = min(T, max_len)
    tokens = np.full((len(seqs), T), pad_id, np.int32)
    mask = np.zeros((len(seqs), T), np.int32)
    for i, s in enumerate(seqs):
        tokens[i, :len(s)] = s
        mask[i, :len(s)] = 1
    return tokens, mask


def length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                   pool: int = 64) -> list[np.ndarray]:
    """Shuffled batches of similar lengths: shuffle, sort within pools of
    pool * batch_size examples, cut into batches, shuffle the batches. Less
    padding, still random."""
    order = rng.permutation(len(lengths))
    batches = []
    step = pool * batch_size
    for s in range(0, len(order), step):
        chunk = order[s:s + step]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]

# ------------------------------------------------------------------ masking


def _ordinary(tokens: np.ndarray, mask: np.ndarray, special_ids) -> np.ndarray:
    """(B, T) bool: the real, non-special tokens, the only ones masking or
    token dropout may touch."""
    return (np.asarray(mask) != 0) & ~np.isin(np.asarray(tokens), np.asarray(list(special_ids), np.int32))


def mask_tokens(tokens: np.ndarray, mask: np.ndarray, special_ids, mask_id: int, vocab_size: int,
                rng: np.random.Generator, p: float = 0.15):
    """BERT's masking of a padded batch: returns (inputs, targets), both
    (B, T) int32. Random replacements are drawn from the ordinary tokens
    (never a special)."""
    tokens = np.asarray(tokens, np.int32)
    chosen = (rng.random(tokens.shape) < p) & _ordinary(tokens, mask, special_ids)
    targets = np.where(chosen, tokens, IGNORE).astype(np.int32)
    r = rng.random(tokens.shape)
    to_mask = chosen & (r < 0.8)
    to_rand = chosen & (r >= 0.8) & (r < 0.9)
    ordinary = np.setdiff1d(np.arange(vocab_size, dtype=np.int32), np.asarray(list(special_ids), np.int32))
    inputs = tokens.copy()
    inputs[to_mask] = mask_id
    inputs[to_rand] = ordinary[rng.integers(0, ordinary.size, int(to_rand.sum()))]
    return inputs, targets


def drop_tokens(tokens: np.ndarray, mask: np.ndarray, special_ids, rng: np.random.Generator,
                p: float) -> np.ndarray:
    """Word dropout (Iyyer et al. 2015): a key mask with each real,
    non-special token hidden with probability p, so that no other token
    attends to it and pooling leaves it out. [CLS] and [SEP] stay."""
    mask = np.asarray(mask)
    hidden = (rng.random(mask.shape) < p) & _ordinary(tokens, mask, special_ids)
    return np.where(hidden, 0, mask).astype(mask.dtype)
