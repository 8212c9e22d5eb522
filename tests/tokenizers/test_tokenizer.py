"""Tokenizers: GPT-2 parity with tiktoken, BPE training against a plain
reference trainer, round trips, file formats, token files, the CLI, and
clear errors for bad input."""
from __future__ import annotations

import collections
import json
import lzma

import numpy as np
import pytest
import regex
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import ROOT, data_file
from mingpt_c import _lib
from mingpt_c.tokenizers import bpe_train, tokenizer as tkz
from mingpt_c.errors import CheckpointError, DataError, IndexRangeError, ShapeError
from mingpt_c.tokenizers.tokenfile import read_header, read_tokens, write_tokens
from mingpt_c.tokenizers.tokenizer import (BPETokenizer, ByteTokenizer, CharTokenizer, GPT2Tokenizer, PATTERNS, Tokenizer, get_tokenizer)

EOT = "<|endoftext|>"

# Text that stresses the pre-split: contractions, numbers, runs of spaces and
# newlines, emoji (with ZWJ and skin tones), CJK, RTL, combining marks,
# unusual white space, control characters.
VARIED = [
    "Hello world", "I'm sure you'll say they've, we'd, she's, it'd; DON'T, I'M, ſ'S 'll ' s",
    "   leading and trailing spaces   ", "\n\n\nthree newlines\n\n", "tabs\t\tand\r\nCRLF\r\n",
    "12345678901234567890 3.14159 1,000,000 ٣٤٥ ½ Ⅻ 2024-01-01T12:00:00Z 0x1F",
    "😀😃😄 👩‍👩‍👧‍👦 👍🏽 🇫🇷 ✨",
    "中文分词测试，日本語のテキスト、한국어 텍스트。", "مرحبا بالعالم עברית", "e\u0301 n\u0303 Z\u0351\u0363",
    "non\u00a0breaking\u2028line\u2029para\u3000ideographic\u0085next \x0b\x0c",
    "ctrl \x00\x01\x1c\x1f\x7f chars", "def f(x):\n    return x ** 2  # comment\n\n\n\tpass\n",
    " " * 50 + "x" + "\n" * 30 + "y" + " \n" * 10, "a" * 300, "!!!???...---", "'''\"\"\"```",
]


def _gpt2_reference():
    import tiktoken

    return tiktoken.get_encoding("gpt2")


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return data_file("tinyshakespeare.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def imdb() -> list[str]:
    with lzma.open(data_file("imdb/train.jsonl.xz"), "rt", encoding="utf-8") as f:
        return [json.loads(next(f))["text"] for _ in range(300)]


@pytest.fixture(scope="module")
def gpt2_files() -> BPETokenizer:
    return BPETokenizer.from_gpt2_files(data_file("gpt2/encoder.json"), data_file("gpt2/vocab.bpe"))


@pytest.fixture(scope="module")
def corpus(shakespeare, imdb) -> list[str]:
    code = [(ROOT / p).read_text(encoding="utf-8") for p in
            ("csrc/bpe.c", "mingpt_c/tokenizers/tokenizer.py", "csrc/mingpt.h")]
    return [shakespeare[:200_000], *imdb, *code, *VARIED]


@pytest.fixture(scope="module")
def small_bpe(shakespeare) -> dict[str, BPETokenizer]:
    return {p: bpe_train.train([shakespeare[:100_000], VARIED[3]], 600, pattern=p,
                               special_tokens=[EOT]) for p in PATTERNS}


# ---------------------------------------------------------------- GPT-2 parity

def test_gpt2_published_example(gpt2_files):
    data_file("tiktoken-cache")
    assert GPT2Tokenizer().encode("Hello world") == [15496, 995]
    assert gpt2_files.encode("Hello world") == [15496, 995]
    assert gpt2_files.vocab_size == 50257 and gpt2_files.eot_token == 50256


def test_gpt2_files_match_tiktoken(gpt2_files, corpus):
    data_file("tiktoken-cache")
    ref = _gpt2_reference()
    assert gpt2_files.ranks == ref._mergeable_ranks
    ours = GPT2Tokenizer()
    for text in corpus:
        want = ref.encode(text, disallowed_special=())
        assert gpt2_files.encode(text, disallowed_special=()) == want
        assert ours.encode(text, disallowed_special=()) == want
        assert gpt2_files.decode(want) == text


def test_gpt2_special_tokens(gpt2_files):
    data_file("tiktoken-cache")
    ref = _gpt2_reference()
    text = f"first doc{EOT}second doc {EOT}\n"
    for tok in (gpt2_files, GPT2Tokenizer()):
        assert tok.encode(text, allowed_special="all") == ref.encode(text, allowed_special="all")
        assert tok.encode(text, allowed_special={EOT}) == ref.encode(text, allowed_special={EOT})
        assert tok.encode(text, disallowed_special=()) == ref.encode(text, disallowed_special=())
        assert 50256 in tok.encode(text, allowed_special="all")
        assert 50256 not in tok.encode(text, disallowed_special=())
        with pytest.raises(DataError, match="special token '<\\|endoftext\\|>'"):
            tok.encode(text)
        with pytest.raises(ShapeError, match="not a special token"):
            tok.encode(text, allowed_special={"<|nope|>"})


def test_encode_array_cuts_long_texts(gpt2_files, shakespeare, imdb, monkeypatch):
    monkeypatch.setattr(tkz, "_BATCH_CHARS", 2000)
    text = shakespeare[:150_000] + "\n".join(imdb[:50]) + "".join(VARIED)
    assert len(tkz._cuts(text, {})) > 10
    got = gpt2_files.encode_array(text, disallowed_special=())
    assert got.dtype == np.int32
    assert got.tolist() == gpt2_files.encode(text, disallowed_special=())


# ---------------------------------------------------------------- pre-split

SPLIT_ALPHABET = list(" \n\r\t\u00a0\u2028\x0b\x1c'sSdmtlLvVeErRſ") + list("aZé中ß1٣½!.,-😀\u0301")


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_split_matches_regex_on_real_text(pattern, corpus):
    for text in corpus:
        want = [m.encode() for m in regex.findall(PATTERNS[pattern], text)]
        assert bpe_train.split(text, pattern) == want


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(SPLIT_ALPHABET), max_size=40).map("".join) | st.text(max_size=40))
def test_split_matches_regex_property(text):
    for pattern, pat in PATTERNS.items():
        want = [m.encode() for m in regex.findall(pat, text)]
        assert bpe_train.split(text, pattern) == want, pattern


# ---------------------------------------------------------------- training vs a reference

def _rewrite(words, pair, new):
    out_words = collections.Counter()
    for w, c in words.items():
        out, i = [], 0
        while i < len(w):
            if i + 1 < len(w) and (w[i], w[i + 1]) == pair:
                out.append(new)
                i += 2
            else:
                out.append(w[i])
                i += 1
        out_words[tuple(out)] += c
    return out_words


def reference_merges(chunk_counts, n_merges, min_frequency=2, init=()):
    """The obvious trainer: recount every pair each step, merge the best
    (highest count, then smallest (left, right)); never merge a pair whose
    bytes already form a token. The init merges are applied first, in order."""
    words = collections.Counter()
    for chunk, c in chunk_counts.items():
        words[tuple(chunk)] += c
    vocab = [bytes([b]) for b in range(256)]
    banned, merges = set(), []
    for a, b in init:
        vocab.append(vocab[a] + vocab[b])
        merges.append([a, b])
        words = _rewrite(words, (a, b), len(vocab) - 1)
    while len(merges) < n_merges:
        pairs = collections.Counter()
        for w, c in words.items():
            for pair in zip(w, w[1:]):
                pairs[pair] += c
        candidates = [p for p, c in pairs.items() if c > 0 and p not in banned]
        if not candidates:
            break
        best = max(candidates, key=lambda p: (pairs[p], -p[0], -p[1]))
        if pairs[best] < min_frequency:
            break
        piece = vocab[best[0]] + vocab[best[1]]
        if piece in vocab:
            banned.add(best)
            continue
        vocab.append(piece)
        merges.append(list(best))
        words = _rewrite(words, best, len(vocab) - 1)
    return merges


def _chunk_counts(docs, pattern):
    return collections.Counter(m.encode() for d in docs for m in regex.findall(PATTERNS[pattern], d))


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_merges_equal_reference(shakespeare, pattern):
    docs = [shakespeare[:15_000], "".join(VARIED)]
    counts = _chunk_counts(docs, pattern)
    want = reference_merges(counts, 120)
    assert len(want) == 120
    assert bpe_train.learn_merges(counts, 120).tolist() == want
    got, n_unique = bpe_train.learn_merges_from_docs([d.encode() for d in docs], 120, pattern)
    assert got.tolist() == want and n_unique == len(counts)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.binary(min_size=1, max_size=8).map(lambda b: bytes(x % 4 for x in b)),
                       st.integers(1, 5), max_size=12),
       st.integers(0, 3))
def test_merges_equal_reference_property(counts, min_frequency):
    # A 4-byte alphabet and tiny counts: many ties, overlapping runs (aaaa),
    # and merges whose bytes repeat an existing token.
    want = reference_merges(counts, 40, min_frequency)
    assert bpe_train.learn_merges(counts, 40, min_frequency).tolist() == want


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.binary(min_size=1, max_size=8).map(lambda b: bytes(x % 4 for x in b)),
                       st.integers(1, 5), max_size=12),
       st.integers(0, 12))
def test_continued_training_equals_reference_property(counts, k):
    # Merges learned on the chunks split in two, replayed on the whole
    # chunks, then learning goes on: the two-stage (within words, then
    # across) scheme in miniature.
    halves = collections.Counter()
    for chunk, c in counts.items():
        for part in (chunk[:len(chunk) // 2], chunk[len(chunk) // 2:]):
            if part:
                halves[part] += c
    init = reference_merges(halves, k, 1)
    want = reference_merges(counts, 30, 1, init)
    assert bpe_train.learn_merges(counts, 30, 1, init_merges=init).tolist() == want


def test_continuing_from_a_prefix_reproduces_the_run(shakespeare):
    docs = [shakespeare[:15_000].encode()]
    full, _ = bpe_train.learn_merges_from_docs(docs, 150)
    for k in (0, 1, 70, 150):
        got, _ = bpe_train.learn_merges_from_docs(docs, 150, init_merges=full[:k])
        assert np.array_equal(got, full)


def test_bad_given_merges():
    counts = {b"abab": 3}
    with pytest.raises(ShapeError, match="does not exist yet"):
        bpe_train.learn_merges(counts, 5, init_merges=[[97, 98], [256, 257]])
    with pytest.raises(ShapeError, match="already exists"):
        bpe_train.learn_merges(counts, 5, init_merges=[[97, 98], [97, 98]])
    with pytest.raises(ShapeError, match="exceed"):
        bpe_train.learn_merges(counts, 1, init_merges=[[97, 98], [256, 256]])
    assert bpe_train.learn_merges(counts, 5, init_merges=[[97, 98]]).tolist() == [[97, 98], [256, 256]]


def test_phrase_tokens_after_word_tokens(imdb):
    texts = [t.lower() for t in imdb]
    words = bpe_train.train(texts, 1256)
    tok = bpe_train.train(texts, 2256, phrases_after=1000)
    assert tok.pattern == "none"
    merges = [tok.id_to_bytes[i] for i in range(256, tok.vocab_size)]
    assert merges[:1000] == [words.id_to_bytes[i] for i in range(256, 1256)]
    inner_space = [m for m in merges if b" " in m.strip()]
    assert all(merges.index(m) >= 1000 for m in inner_space)     # within words first
    assert b" of the" in merges[1000:] and len(inner_space) > 200  # then phrases
    for t in texts[:50]:
        assert tok.decode(tok.encode(t)) == t
    assert len(tok.encode(" ".join(texts))) < len(words.encode(" ".join(texts)))
    with pytest.raises(ShapeError, match="phrases_after"):
        bpe_train.train(texts, 300, phrases_after=100)


def test_tie_rule_documented_example():
    # (1,2) and (3,4) both occur 5 times: the smaller left id wins; then
    # (1,3) and (1,4) tie: the smaller right id wins.
    counts = {bytes([1, 2]): 5, bytes([3, 4]): 5, bytes([1, 4]): 3, bytes([1, 3]): 3}
    assert bpe_train.learn_merges(counts, 4).tolist() == [[1, 2], [3, 4], [1, 3], [1, 4]]


def test_training_is_independent_of_threads_and_blocks(shakespeare):
    # 3 MB in one document: cut into blocks and counted on every thread.
    docs = [(shakespeare * 3).encode(), b"second document\n"]
    want = _chunk_counts([d.decode() for d in docs], "gpt2")
    ref = bpe_train.learn_merges(want, 300)
    before = _lib.get_num_threads()
    try:
        for threads in (1, 2, 3):
            _lib.set_num_threads(threads)
            got, n_unique = bpe_train.learn_merges_from_docs(docs, 300)
            assert n_unique == len(want)
            assert np.array_equal(got, ref)
    finally:
        _lib.set_num_threads(before)


def test_min_frequency_stops_early():
    tok = bpe_train.train(["ab ab ab cd"], 1000, min_frequency=3)
    assert tok.train_stats["merges"] < tok.train_stats["requested_merges"]
    assert tok.vocab_size == 256 + tok.train_stats["merges"]
    assert tok.decode(tok.encode("ab ab cd")) == "ab ab cd"


def test_special_tokens_are_not_learned_from():
    tok = bpe_train.train([f"x{EOT}y" * 50], 300, special_tokens=[EOT])
    assert all(b"<|" not in t for t in tok.id_to_bytes)
    assert tok.train_stats["merges"] == 1  # "yx", 49 times; nothing else repeats
    assert tok.encode(f"yx{EOT}", allowed_special="all") == [256, tok.eot_token]
    assert tok.eot_token == tok.vocab_size - 1 == 257


# ---------------------------------------------------------------- round trips

@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_trained_round_trip(small_bpe, text):
    # Any Unicode, including characters never seen in training (Shakespeare is ASCII).
    for tok in small_bpe.values():
        ids = tok.encode(text, disallowed_special=())
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text


def test_trained_round_trip_varied(small_bpe, corpus):
    for tok in small_bpe.values():
        for text in corpus:
            assert tok.decode(tok.encode(text, disallowed_special=())) == text


def test_trained_tokenizer_compresses(small_bpe, shakespeare):
    text = shakespeare[200_000:220_000]
    for pattern, tok in small_bpe.items():
        assert len(tok.encode(text)) < 0.6 * len(text.encode()), pattern


def test_save_load_identical(small_bpe, tmp_path, corpus):
    for pattern, tok in small_bpe.items():
        path = tmp_path / f"{pattern}.json"
        tok.save(path)
        back = Tokenizer.load(path)
        assert isinstance(back, BPETokenizer)
        assert back.to_json() == tok.to_json()
        assert back.ranks == tok.ranks and back.special_tokens == tok.special_tokens
        assert back.pattern == pattern and back.pattern_regex == PATTERNS[pattern]
        for text in corpus:
            assert back.encode(text, disallowed_special=()) == tok.encode(text, disallowed_special=())
        obj = json.loads(path.read_text())
        assert obj["format"] == "mingpt-bpe" and obj["version"] == 1
        assert obj["special_tokens"] == {EOT: 599}


def test_gpt2_files_save_load(gpt2_files, tmp_path):
    gpt2_files.save(tmp_path / "g.json")
    back = Tokenizer.load(tmp_path / "g.json")
    assert back.ranks == gpt2_files.ranks and back.encode(VARIED[1]) == gpt2_files.encode(VARIED[1])


def test_dump_shows_merges(small_bpe):
    tok = small_bpe["gpt2"]
    lines = list(tok.dump())
    assert lines[0].startswith("# pattern gpt2")
    first_merge = next(line for line in lines if line.startswith("256\t"))
    a, b = tok.merge_of(256)
    assert first_merge.endswith(f"= {a} + {b}")
    assert tok.id_to_bytes[256] == tok.id_to_bytes[a] + tok.id_to_bytes[b]
    assert lines[-1] == f"599\t{EOT!r}  (special)"


def test_char_and_byte_tokenizers(tmp_path):
    ch = CharTokenizer.from_text("hello world")
    assert ch.vocab_size == 8 and ch.eot_token is None
    assert ch.decode(ch.encode("low held")) == "low held"
    with pytest.raises(DataError, match="'Z'"):
        ch.encode("hello Zorro")
    by = ByteTokenizer()
    for text in VARIED:
        assert by.decode(by.encode(text)) == text
        assert by.encode_array(text).tolist() == list(text.encode())
    for tok in (ch, by):
        tok.save(tmp_path / "t.json")
        back = get_tokenizer(tmp_path / "t.json")
        assert type(back) is type(tok) and back.to_json() == tok.to_json()
    with pytest.raises(IndexRangeError):
        ch.decode([8])
    assert isinstance(get_tokenizer("char", train_text="abc"), CharTokenizer)
    assert isinstance(get_tokenizer("byte"), ByteTokenizer)


# ---------------------------------------------------------------- bad input

def test_bad_training_input(tmp_path):
    with pytest.raises(ShapeError, match=r"\[258, "):
        bpe_train.train(["text"], 257, special_tokens=["<a>", "<b>"])
    with pytest.raises(ShapeError, match="1048576"):
        bpe_train.train(["text"], bpe_train.MAX_VOCAB + 1)
    with pytest.raises(ShapeError, match="given twice"):
        bpe_train.train(["text"], 300, special_tokens=["<a>", "<a>"])
    with pytest.raises(ShapeError, match="unknown pattern"):
        bpe_train.train(["text"], 300, pattern="gpt3")
    with pytest.raises(DataError, match="empty"):
        bpe_train.train(["", ""], 300)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        bpe_train.train_files([empty], 300)
    with pytest.raises(DataError, match="cannot read"):
        bpe_train.train_files([tmp_path / "missing.txt"], 300)
    with pytest.raises(DataError, match="cannot read"):
        bpe_train.train_files([tmp_path], 300)
    binary = tmp_path / "bin.dat"
    binary.write_bytes(b"ok\xff\xfe")
    with pytest.raises(DataError, match="not UTF-8"):
        bpe_train.train_files([binary], 300)


def test_disallowed_special_in_text(small_bpe):
    tok = small_bpe["gpt2"]
    with pytest.raises(DataError, match="not allowed"):
        tok.encode(f"a{EOT}b")
    with pytest.raises(DataError, match="not allowed"):
        tok.encode_array(f"a{EOT}b")
    assert tok.decode(tok.encode(f"a{EOT}b", disallowed_special=())) == f"a{EOT}b"


def test_bad_tokenizer_files(tmp_path, small_bpe):
    p = tmp_path / "t.json"
    p.write_text('{"format": "mingpt-bpe", "version": 2}')
    with pytest.raises(CheckpointError, match="version 2"):
        Tokenizer.load(p)
    p.write_text('{"format": "something"}')
    with pytest.raises(CheckpointError, match="unknown tokenizer format"):
        Tokenizer.load(p)
    p.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        Tokenizer.load(p)
    obj = small_bpe["gpt2"].to_json()
    obj["tokens"][300] = obj["tokens"][65]
    p.write_text(json.dumps(obj))
    with pytest.raises(CheckpointError, match="repeats"):
        Tokenizer.load(p)
    with pytest.raises(CheckpointError, match="cannot read"):
        Tokenizer.load(tmp_path / "missing.json")
    with pytest.raises(DataError, match="neither"):
        get_tokenizer(tmp_path / "missing.json")


# ---------------------------------------------------------------- token files

def test_token_file_round_trip(tmp_path):
    ids = np.arange(0, 65536, 7, dtype=np.int64)
    n = write_tokens(tmp_path / "a.tok", ids, vocab_size=65536)
    got = read_tokens(tmp_path / "a.tok")
    assert n == ids.size and got.dtype == np.uint16 and np.array_equal(got, ids)
    big = np.array([0, 70000, 5], np.int64)
    write_tokens(tmp_path / "b.tok", (big[:2], [], big[2:]), vocab_size=100000)
    got = read_tokens(tmp_path / "b.tok")
    assert got.dtype == np.uint32 and got.tolist() == [0, 70000, 5]
    assert read_header(tmp_path / "b.tok")["vocab_size"] == 100000
    write_tokens(tmp_path / "c.tok", [3, 1, 2])
    assert read_tokens(tmp_path / "c.tok").tolist() == [3, 1, 2]
    write_tokens(tmp_path / "e.tok", np.zeros(0, np.int32))
    assert read_tokens(tmp_path / "e.tok").size == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tok", "b.tok", "c.tok", "e.tok"]


def test_token_file_errors(tmp_path):
    p = tmp_path / "a.tok"
    write_tokens(p, np.arange(100), vocab_size=256)
    data = p.read_bytes()
    p.write_bytes(data[:-1])
    with pytest.raises(DataError, match="truncated"):
        read_tokens(p)
    p.write_bytes(b"NOTATOK!" + data[8:])
    with pytest.raises(DataError, match="bad magic"):
        read_tokens(p)
    p.write_bytes(data[:10])
    with pytest.raises(DataError, match="too short"):
        read_tokens(p)
    with pytest.raises(DataError, match="does not fit"):
        write_tokens(tmp_path / "x.tok", np.array([256]), vocab_size=256)
    assert not (tmp_path / "x.tok").exists() and len(list(tmp_path.iterdir())) == 1


# ---------------------------------------------------------------- CLI

def test_cli_train_encode_decode_show(tmp_path, shakespeare):
    import cli

    src = tmp_path / "in.txt"
    src.write_text(shakespeare[:50_000])
    tok = tmp_path / "tok.json"
    r = CliRunner().invoke(cli.main, ["tokenize", "train", str(src), "--vocab-size", "400",
                                      "--out", str(tok), "--special", EOT, "--pattern", "gpt4"])
    assert r.exit_code == 0, r.output
    assert "learned 143 merges" in r.output
    text = "Wherefore art thou, Romeo? 😀"
    r = CliRunner().invoke(cli.main, ["tokenize", "encode", "--tokenizer", str(tok), text])
    assert r.exit_code == 0, r.output
    ids = r.output.split()
    r = CliRunner().invoke(cli.main, ["tokenize", "decode", "--tokenizer", str(tok), *ids])
    assert r.exit_code == 0 and r.output == text
    r = CliRunner().invoke(cli.main, ["tokenize", "encode", "--tokenizer", str(tok), "-o",
                                      str(tmp_path / "x.tok")], input=text + EOT,)
    assert r.exit_code == 1 and "not allowed" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli.main, ["tokenize", "encode", "--tokenizer", str(tok), "-o",
                                      str(tmp_path / "x.tok"), "--allow-special", "all"],
                           input=text + EOT)
    assert r.exit_code == 0, r.output
    assert read_tokens(tmp_path / "x.tok")[-1] == 399
    r = CliRunner().invoke(cli.main, ["tokenize", "decode", "--tokenizer", str(tok), "-i",
                                      str(tmp_path / "x.tok")])
    assert r.output == text + EOT
    r = CliRunner().invoke(cli.main, ["tokenize", "show", "--tokenizer", str(tok), "thou art"])
    assert r.exit_code == 0 and "".join(eval(line.split("\t")[1]) for line in r.output.splitlines()) == "thou art"
    r = CliRunner().invoke(cli.main, ["tokenize", "show", "--tokenizer", str(tok), "--dump"])
    assert r.exit_code == 0 and len(r.output.splitlines()) == 2 + 400


def test_cli_phrases_after(tmp_path, shakespeare):
    import cli

    src = tmp_path / "in.txt"
    src.write_text(shakespeare[:50_000])
    out = tmp_path / "tok.json"
    args = ["tokenize", "train", str(src), "--vocab-size", "600", "--out", str(out)]
    r = CliRunner().invoke(cli.main, [*args, "--phrases-after", "200"])
    assert r.exit_code == 0, r.output
    tok = tkz.load_tokenizer(out)
    assert tok.pattern == "none"
    pieces = [tok.id_to_bytes[i] for i in range(256, tok.vocab_size)]
    assert not any(b" " in p.strip() for p in pieces[:200]) and any(b" " in p.strip() for p in pieces[200:])
    r = CliRunner().invoke(cli.main, [*args, "--phrases-after", "400"])
    assert r.exit_code == 1 and "phrases_after=400 must be in [0, 344]" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_cli_errors_are_one_line(tmp_path):
    import cli

    src = tmp_path / "in.txt"
    src.write_text("some text")
    for args, msg in [
        ([str(src), "--vocab-size", "10"], "vocab size 10 must be in"),
        ([str(tmp_path / "nope.txt"), "--vocab-size", "300"], "cannot read"),
        ([str(src), "--vocab-size", "300", "--special", "<a>", "--special", "<a>"], "given twice"),
    ]:
        r = CliRunner().invoke(cli.main, ["tokenize", "train", *args, "--out", str(tmp_path / "t.json")])
        assert r.exit_code == 1 and msg in r.output and "Traceback" not in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1
