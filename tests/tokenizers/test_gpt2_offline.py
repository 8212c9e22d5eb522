"""GPT-2's tokenizer without a network: tiktoken's cache, a directory with
encoder.json + vocab.bpe (MINGPT_GPT2_DIR or "gpt2:DIR"), or one clear line
saying what to provide. The network is simulated away: tiktoken's cache
points at an empty folder and its download function raises."""
from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from conftest import data_file, invoke, one_line_error
from mingpt_c.errors import CheckpointError, DataError
from mingpt_c.tokenizers import tokenizer as tkz
from mingpt_c.tokenizers.tokenizer import GPT2Tokenizer, Tokenizer, get_tokenizer

EOT = "<|endoftext|>"
TEXT = "Hello world\n\n  It's 2024 — naïve café 😀\n\n\nthe end  "


@pytest.fixture(scope="module")
def gpt2_dir():
    return data_file("gpt2")


@pytest.fixture(scope="module")
def reference(gpt2_dir):
    """tiktoken's gpt2 Encoding, built by tiktoken itself from the same files."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", "")  # read the local files, cache nothing
        ranks = data_gym_to_mergeable_bpe_ranks(str(gpt2_dir / "vocab.bpe"), str(gpt2_dir / "encoder.json"))
    return tiktoken.Encoding(name="gpt2-reference", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={EOT: 50256}, explicit_n_vocab=50257)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network, an empty tiktoken cache, no MINGPT_GPT2_DIR, nothing loaded
    yet in this process. Returns the list of addresses tiktoken tried."""
    import tempfile

    import tiktoken.load
    import tiktoken.registry

    tried = []

    def no_network(blobpath):
        if "://" not in blobpath:
            with open(blobpath, "rb") as f:
                return f.read()
        tried.append(blobpath)
        raise ConnectionError(f"Max retries exceeded with url: {blobpath} (simulated: no network)")

    empty = tmp_path / "empty-cache"
    empty.mkdir()
    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    monkeypatch.setattr(tkz, "_GPT2_ENCODINGS", {})
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(empty))
    monkeypatch.delenv("DATA_GYM_CACHE_DIR", raising=False)
    monkeypatch.delenv(tkz.GPT2_DIR_ENV, raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # tiktoken's default cache, if unset
    return tried


def test_no_files_no_network_one_clear_line(offline, monkeypatch):
    for unset in (False, True):
        if unset:
            monkeypatch.delenv("TIKTOKEN_CACHE_DIR")
        with pytest.raises(DataError) as e:
            GPT2Tokenizer()
        msg = str(e.value)
        assert "\n" not in msg and len(msg) < 400, msg
        for needle in (tkz.GPT2_DIR_ENV, "gpt2:DIR", "TIKTOKEN_CACHE_DIR", "encoder.json", "vocab.bpe"):
            assert needle in msg, msg
    assert offline  # tiktoken did try its download, and it failed


def test_cli_without_files_says_what_to_provide(offline):
    one_line_error(invoke("tokenize", "encode", "hi", "--tokenizer", "gpt2"),
                   tkz.GPT2_DIR_ENV, "gpt2:DIR", "TIKTOKEN_CACHE_DIR")


def test_env_var_directory(offline, monkeypatch, gpt2_dir, reference):
    monkeypatch.setenv(tkz.GPT2_DIR_ENV, str(gpt2_dir))
    tok = get_tokenizer("gpt2")
    assert tok.kind == "gpt2" and tok.vocab_size == 50257 and tok.eot_token == 50256
    assert tok.encode(TEXT) == reference.encode(TEXT)
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(f"a{EOT}b", allowed_special="all") == reference.encode(f"a{EOT}b", allowed_special="all")
    assert tok.decode(tok.encode(TEXT)) == TEXT
    assert not offline


def test_gpt2_dir_spec(offline, gpt2_dir, reference):
    tok = get_tokenizer(f"gpt2:{gpt2_dir}")
    assert tok.encode_array(TEXT).tolist() == reference.encode(TEXT)
    assert tok.to_json() == {"format": "mingpt-gpt2", "version": 1}  # GPT-2 by reference, not a path
    assert not offline


def test_cli_encode_with_directory(offline, monkeypatch, gpt2_dir, reference):
    want = " ".join(map(str, reference.encode(TEXT)))
    res = invoke("tokenize", "encode", TEXT, "--tokenizer", f"gpt2:{gpt2_dir}")
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == want
    monkeypatch.setenv(tkz.GPT2_DIR_ENV, str(gpt2_dir))
    res = invoke("tokenize", "encode", TEXT, "--tokenizer", "gpt2")
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == want
    assert not offline


def test_saved_reference_loads_offline_with_env(offline, monkeypatch, gpt2_dir, tmp_path, reference):
    get_tokenizer(f"gpt2:{gpt2_dir}").save(tmp_path / "t.json")
    with pytest.raises(DataError, match=tkz.GPT2_DIR_ENV):
        Tokenizer.load(tmp_path / "t.json")
    monkeypatch.setenv(tkz.GPT2_DIR_ENV, str(gpt2_dir))
    assert Tokenizer.load(tmp_path / "t.json").encode(TEXT) == reference.encode(TEXT)


def test_tiktoken_cache_comes_first(offline, monkeypatch, gpt2_dir, tmp_path, reference):
    """A cache holding gpt2 (files named by the sha1 of their address) is
    read without network, before MINGPT_GPT2_DIR is looked at."""
    cache = tmp_path / "cache"
    cache.mkdir()
    for name, url in tkz._GPT2_URLS.items():
        shutil.copy(gpt2_dir / name, cache / hashlib.sha1(url.encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.setenv(tkz.GPT2_DIR_ENV, str(tmp_path / "not-there"))
    assert GPT2Tokenizer().encode(TEXT) == reference.encode(TEXT)
    assert not offline


def test_hugging_face_file_names(offline, gpt2_dir, tmp_path, reference):
    shutil.copy(gpt2_dir / "encoder.json", tmp_path / "vocab.json")
    shutil.copy(gpt2_dir / "vocab.bpe", tmp_path / "merges.txt")
    assert get_tokenizer(f"gpt2:{tmp_path}").encode(TEXT) == reference.encode(TEXT)


def test_bad_directories(offline, monkeypatch, tmp_path):
    with pytest.raises(DataError, match="is not a directory"):
        get_tokenizer(f"gpt2:{tmp_path / 'missing'}")
    with pytest.raises(DataError, match="holds no encoder.json"):
        get_tokenizer(f"gpt2:{tmp_path}")
    monkeypatch.setenv(tkz.GPT2_DIR_ENV, str(tmp_path))
    with pytest.raises(DataError, match=f"{tkz.GPT2_DIR_ENV}=.* holds no encoder.json"):
        get_tokenizer("gpt2")


def test_other_vocabularies_are_not_gpt2(offline, tmp_path):
    """Files in GPT-2's format but another vocabulary are refused, since the
    tokenizer would be saved as a reference to GPT-2."""
    alphabet = tkz._gpt2_bytes_to_unicode()
    enc = {alphabet[b]: i for i, b in enumerate(alphabet)}
    enc[alphabet[ord("a")] + alphabet[ord("b")]] = 256
    enc[EOT] = 257
    (tmp_path / "encoder.json").write_text(json.dumps(enc), encoding="utf-8")
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\na b\n", encoding="utf-8")
    with pytest.raises(CheckpointError, match="not GPT-2's vocabulary"):
        get_tokenizer(f"gpt2:{tmp_path}")
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\na b c\n", encoding="utf-8")
    with pytest.raises(CheckpointError, match="line 2"):
        get_tokenizer(f"gpt2:{tmp_path}")
