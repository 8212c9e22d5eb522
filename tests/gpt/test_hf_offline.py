"""`mingpt export` -> `mingpt import` without a network: import takes the
directory's own tokenizer.json (or its GPT-2 files) instead of fetching GPT-2,
and `mingpt eval`'s tokens of a file read in pieces are tiktoken's for the
whole text."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import data_file, invoke
from mingpt_c import data
from mingpt_c.errors import DataError
from mingpt_c.gpt import checkpoint, evaluate
from mingpt_c.gpt.config import GPTConfig
from mingpt_c.gpt.hf import export_gpt2, import_gpt2
from mingpt_c.tokenizers import tokenizer as tkz
from mingpt_c.tokenizers.tokenizer import ByteTokenizer, GPT2Tokenizer


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network, an empty tiktoken cache, no MINGPT_GPT2_DIR."""
    import tempfile

    import tiktoken.load
    import tiktoken.registry

    def no_network(blobpath):
        raise ConnectionError(f"simulated: no network for {blobpath}")

    (tmp_path / "empty-cache").mkdir()
    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    monkeypatch.setattr(tkz, "_GPT2_ENCODINGS", {})
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.delenv(tkz.GPT2_DIR_ENV, raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def tiny(tmp_path, tok, name="ck"):
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=8)
    from mingpt_c.gpt.model import gpt_slots
    from mingpt_c.nn.params import Layout

    params = np.random.default_rng(0).normal(0, 0.1, Layout(gpt_slots(cfg)).size).astype(np.float32)
    return checkpoint.save(tmp_path / name, cfg, params, tok), params


def test_round_trip_keeps_its_tokenizer_offline(offline, tmp_path):
    ck, params = tiny(tmp_path, ByteTokenizer())
    hf = export_gpt2(ck, tmp_path / "hf")
    with pytest.raises(DataError):  # GPT-2 itself is out of reach here
        GPT2Tokenizer()
    back = checkpoint.load(import_gpt2(hf, tmp_path / "back"))  # the default spec, "gpt2"
    assert back["tokenizer"].kind == "byte"
    assert back["cfg"].extra["tokenizer"] == "byte"
    assert np.array_equal(back["params"], params)


def test_round_trip_through_the_cli_offline(offline, tmp_path):
    ck, _ = tiny(tmp_path, ByteTokenizer())
    assert invoke("export", ck, "--out", tmp_path / "hf").exit_code == 0
    res = invoke("import", tmp_path / "hf", "--out", tmp_path / "back")
    assert res.exit_code == 0, res.output
    assert checkpoint.load(tmp_path / "back")["tokenizer"].kind == "byte"


def test_round_trip_of_gpt2_with_its_directory(offline, monkeypatch, tmp_path):
    gpt2_dir = data_file("gpt2")
    monkeypatch.setenv(tkz.GPT2_DIR_ENV, str(gpt2_dir))
    ck, _ = tiny(tmp_path, GPT2Tokenizer())
    hf = export_gpt2(ck, tmp_path / "hf")
    back = checkpoint.load(import_gpt2(hf, tmp_path / "back"))
    assert back["tokenizer"].kind == "gpt2" and back["tokenizer"].encode("Hello world") == [15496, 995]


def test_hugging_face_directory_with_gpt2_files(offline, tmp_path):
    """A Hugging Face GPT-2 directory: its tokenizer.json is not ours, its
    vocab.json + merges.txt are GPT-2's files."""
    gpt2_dir = data_file("gpt2")
    ck, params = tiny(tmp_path, ByteTokenizer())
    hf = export_gpt2(ck, tmp_path / "hf")
    (hf / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE"}}))
    cfg = json.loads((hf / "config.json").read_text())
    cfg["vocab_size"] = 50257  # the embedding must hold GPT-2's ids
    (hf / "config.json").write_text(json.dumps(cfg))
    ck2, _ = tiny(tmp_path, GPT2Tokenizer(gpt2_dir=gpt2_dir), name="ck2")
    shutil.copy(ck2 / "model.safetensors", hf / "model.safetensors")
    shutil.copy(gpt2_dir / "encoder.json", hf / "vocab.json")
    shutil.copy(gpt2_dir / "vocab.bpe", hf / "merges.txt")
    out = import_gpt2(hf, tmp_path / "back")
    assert json.loads((out / "tokenizer.json").read_text())["format"] == "mingpt-gpt2"
    assert json.loads((out / "config.json").read_text())["mingpt"]["config"]["extra"]["tokenizer"] == "gpt2"


def test_explicit_spec_wins(offline, tmp_path):
    ck, _ = tiny(tmp_path, ByteTokenizer())
    hf = export_gpt2(ck, tmp_path / "hf")
    with pytest.raises(DataError, match="is not a directory"):  # not the directory's byte tokenizer
        import_gpt2(hf, tmp_path / "back", tokenizer=f"gpt2:{tmp_path}/nothing")
    back = checkpoint.load(import_gpt2(hf, tmp_path / "b2", tokenizer="none"))
    assert back["tokenizer"] is None


# ---------------------------------------------------------------- eval's tokens

@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_eval_tokens_are_tiktokens_on_the_whole_file(chunk, tmp_path, monkeypatch):
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    d = data_file("gpt2")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    ref = tiktoken.Encoding(name="gpt2-reference", pat_str=r50k_pat_str,
                            mergeable_ranks=data_gym_to_mergeable_bpe_ranks(str(d / "vocab.bpe"),
                                                                            str(d / "encoder.json")),
                            special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257)
    text = "".join(f"Line {i}.{' ' * (i % 4)}\n{chr(10) * (i % 3)}{'  ' * (i % 2)}word\n" for i in range(120))
    text += "<|endoftext|> as text\n\n\n"
    p = tmp_path / "t.txt"
    p.write_text(text, encoding="utf-8")
    monkeypatch.setattr(data, "CHUNK_BYTES", chunk)
    got = evaluate.text_tokens(GPT2Tokenizer(gpt2_dir=d), p)
    assert got.tolist() == ref.encode(text, disallowed_special=())
