"""Encoding a text in pieces (a file read in blocks cut at line ends) gives
exactly tiktoken's ids for the whole text, for GPT-2, GPT-4-style and
trained BPEs: blank lines, runs of spaces and newlines at and around every
cut, and pieces small enough to force many cuts (data.CHUNK_BYTES and the
tokenizer's _BATCH_CHARS are the knobs)."""
from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import ROOT, data_file
from mingpt_c import data
from mingpt_c.tokenizers import bpe_train, tokenizer as tkz
from mingpt_c.tokenizers.tokenizer import BPETokenizer, GPT2Tokenizer

EOT = "<|endoftext|>"

# Atoms of adversarial text: white space of every kind in runs, line ends
# (LF, CRLF, CR, Unicode ones), contractions, letters, digits, punctuation,
# combining marks, emoji, and the special token as plain text.
ATOMS = [" ", "  ", "   ", "\n", "\n\n", "\n\n\n", "\r\n", "\r", "\t", " \n", "\n ", "\u00a0",
         "\u2028", "\u3000", "\x0b", "\x0c", "\x1c", "\x85", "'s", "'ll", "'", "s", "ll", "a",
         "Hello", "world", "Zé", "中文", "٣", "42", "1234", "!", ".", "...", ",", "-", "😀",
         "\u0301", "(", "<", EOT]


def adversarial(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(ATOMS) for _ in range(n))


def split_at(text: str, cuts) -> list[str]:
    cuts = sorted({min(max(c, 0), len(text)) for c in cuts})
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


def ids_of(arrays) -> list[int]:
    return [int(i) for a in arrays for i in np.asarray(a)]


# ---------------------------------------------------------------- tokenizers

@pytest.fixture(scope="module")
def tiktoken_gpt2():
    """tiktoken's own gpt2 Encoding, built by tiktoken from GPT-2's files."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    d = data_file("gpt2")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", "")  # read the local files, cache nothing
        ranks = data_gym_to_mergeable_bpe_ranks(str(d / "vocab.bpe"), str(d / "encoder.json"))
    return tiktoken.Encoding(name="gpt2-reference", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={EOT: 50256}, explicit_n_vocab=50257)


@pytest.fixture(scope="module")
def tokenizers(tiktoken_gpt2) -> dict[str, tuple[BPETokenizer, object]]:
    """name -> (our tokenizer, tiktoken Encoding that encodes whole texts)."""
    train_text = (ROOT / "mingpt_c/tokenizers/tokenizer.py").read_text(encoding="utf-8") \
        + adversarial(random.Random(7), 3000)
    out = {"gpt2": (GPT2Tokenizer(gpt2_dir=data_file("gpt2")), tiktoken_gpt2)}
    for pattern in ("gpt2", "gpt4", "none"):
        tok = bpe_train.train([train_text], 700, pattern=pattern, special_tokens=[EOT])
        out[f"trained-{pattern}"] = (tok, tok.enc)
    return out


NAMES = ["gpt2", "trained-gpt2", "trained-gpt4", "trained-none"]


# ---------------------------------------------------------------- the bug

def test_pieces_alone_differ_so_the_texts_test_something(tokenizers):
    tok, ref = tokenizers["gpt2"]
    text = "one\n\ntwo  \n  three\n\n\n"
    pieces = list(text.splitlines(keepends=True))
    alone = [i for p in pieces for i in ref.encode(p)]
    assert alone != ref.encode(text)  # a blank line or trailing spaces before a cut
    assert ids_of(tok.encode_pieces(pieces)) == ref.encode(text)


# ---------------------------------------------------------------- encode_pieces

@pytest.mark.parametrize("name", NAMES)
def test_every_split_of_seeded_texts(tokenizers, name):
    tok, ref = tokenizers[name]
    rng = random.Random(1234)
    for _ in range(300):
        text = adversarial(rng, rng.randint(0, 40))
        want = ref.encode(text, disallowed_special=())
        cuts = rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 15)))
        got = ids_of(tok.encode_pieces(split_at(text, cuts), disallowed_special=()))
        assert got == want, (text, cuts)
        # one character per piece: a cut at every position
        assert ids_of(tok.encode_pieces(list(text), disallowed_special=())) == want, text
        # cut at every line end, as a file is read
        lines = text.splitlines(keepends=True)
        assert ids_of(tok.encode_pieces(lines, disallowed_special=())) == want, text


@pytest.mark.parametrize("name", NAMES)
def test_special_tokens_across_pieces(tokenizers, name):
    tok, ref = tokenizers[name]
    rng = random.Random(99)
    for _ in range(150):
        text = adversarial(rng, rng.randint(0, 40))
        cuts = rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 15)))
        for special in (dict(allowed_special="all"), dict(allowed_special={EOT})):
            want = ref.encode(text, **special)
            assert ids_of(tok.encode_pieces(split_at(text, cuts), **special)) == want, (text, cuts)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(atoms=st.lists(st.sampled_from(ATOMS), max_size=40),
       cuts=st.lists(st.integers(0, 200), max_size=20))
def test_hypothesis_splits(tokenizers, atoms, cuts):
    text = "".join(atoms)
    pieces = split_at(text, cuts)
    for name in NAMES:
        tok, ref = tokenizers[name]
        assert ids_of(tok.encode_pieces(pieces, disallowed_special=())) == \
            ref.encode(text, disallowed_special=()), name


@pytest.mark.parametrize("name", NAMES)
def test_threaded_batches_cut_safely(tokenizers, name, monkeypatch):
    """encode_array cuts long texts for its threads by the same rule."""
    tok, ref = tokenizers[name]
    monkeypatch.setattr(tkz, "_BATCH_CHARS", 3)
    rng = random.Random(5)
    text = "".join(adversarial(rng, 30) + "\n" + rng.choice(["x", "  y", "\n\nz"]) for _ in range(200))
    parts = tkz._cuts(text, {}, tok.pattern_regex)
    assert "".join(parts) == text and len(parts) > 20
    assert tok.encode_array(text, disallowed_special=()).tolist() == ref.encode(text, disallowed_special=())


def test_unknown_regex_is_never_cut(tokenizers):
    tok, _ = tokenizers["trained-gpt2"]
    odd = BPETokenizer(tok.ranks, pattern="odd", pattern_regex=r"\S+\s*|\s+",
                       special_tokens=tok.special_tokens)
    text = "a  \n\nb\nc \n d\n"
    assert tkz._cut_rule(odd.pattern_regex, {}) is None
    assert ids_of(odd.encode_pieces(list(text))) == odd.enc.encode(text)


def test_specials_with_white_space_turn_cuts_off():
    tok = BPETokenizer.from_merges([], pattern="gpt4", special_tokens=[EOT, "\n<s>"])
    assert tkz._cut_rule(tok.pattern_regex, tok.special_tokens, "all") is None
    assert tkz._cut_rule(tok.pattern_regex, {}) is not None  # all specials as text
    text = "a\n<s>b\n\nc\n<s>"
    want = tok.enc.encode(text, allowed_special="all")
    assert ids_of(tok.encode_pieces(list(text), allowed_special="all")) == want


# ---------------------------------------------------------------- files

@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
@pytest.mark.parametrize("name", NAMES)
def test_tokenize_to_file_equals_whole_text(tokenizers, name, chunk, tmp_path, monkeypatch):
    tok, ref = tokenizers[name]
    rng = random.Random(chunk)
    texts = [adversarial(rng, 300) + "\n\n", "  \n" + adversarial(rng, 200), "last line  "]
    paths = []
    for i, t in enumerate(texts):
        paths.append(tmp_path / f"{i}.txt")
        paths[-1].write_text(t, encoding="utf-8", newline="")
    monkeypatch.setattr(data, "CHUNK_BYTES", chunk)  # reads chunk characters at a time
    assert len(list(data.iter_text(paths))) > 5
    toks = data.tokenize_to_file(data.iter_text(paths), tok, tmp_path / "t.tokens")
    assert np.asarray(toks).tolist() == ref.encode("\n".join(texts), disallowed_special=())


def test_blank_line_paragraphs_in_blocks(tokenizers, tmp_path, monkeypatch):
    """Double-spaced prose, where every line end is followed by a blank line."""
    tok, ref = tokenizers["gpt2"]
    text = "".join(f"Paragraph {i}, said he.  \n\n" for i in range(400)) + "\n\n\n"
    p = tmp_path / "t.txt"
    p.write_text(text, encoding="utf-8")
    monkeypatch.setattr(data, "CHUNK_BYTES", 50)
    got = ids_of(data.encode_text_pieces(data.iter_text([p]), tok))
    assert got == ref.encode(text)
