"""The command line: a real run end to end, and bad input answered by one
clear line on stderr, a non-zero exit, no traceback, nothing overwritten."""
import json
import shutil

import pytest

from conftest import invoke, one_line_error

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "2",
        "--eval-interval", "5", "--eval-iters", "1", "--no-progress"]
TEXT = "To be, or not to be, that is the question.\n" * 20


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    corpus = d / "corpus.txt"
    corpus.write_text(TEXT)
    res = invoke("train", corpus, "--out", d / "run", "--max-iters", "10", *TINY)
    assert res.exit_code == 0, res.stderr
    return d / "run"


def test_env():
    res = invoke("env")
    assert res.exit_code == 0
    for key in ("compiler", "openmp", "vector path", "cuda"):
        assert key in res.output


def test_train_sample_eval_info(trained, tmp_path):
    assert (trained / "best" / "model.safetensors").exists()
    assert (trained / "loss.png").stat().st_size > 1000
    recs = [json.loads(line) for line in open(trained / "log.jsonl")]
    assert [r["iter"] for r in recs if r["type"] == "eval"] == [0, 5, 10]
    res = invoke("sample", trained, "--prompt", "To be", "--max-new-tokens", "20", "--seed", "3")
    assert res.exit_code == 0 and res.output.startswith("To be") and len(res.output) > 20
    again = invoke("sample", trained, "--prompt", "To be", "--max-new-tokens", "20", "--seed", "3")
    assert again.output == res.output
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    res = invoke("eval", trained, text)
    assert res.exit_code == 0 and "perplexity" in res.output
    assert invoke("info", trained).exit_code == 0


def test_missing_file(tmp_path):
    one_line_error(invoke("train", tmp_path / "nope.txt", "--out", tmp_path / "o", *TINY), "no such file")


def test_empty_file(tmp_path):
    (tmp_path / "e.txt").write_text("")
    one_line_error(invoke("train", tmp_path / "e.txt", "--out", tmp_path / "o", *TINY), "empty")


def test_binary_file(tmp_path):
    (tmp_path / "b.bin").write_bytes(bytes(range(256)) * 4)
    one_line_error(invoke("train", tmp_path / "b.bin", "--out", tmp_path / "o", *TINY), "binary")


def test_invalid_utf8_says_where(tmp_path):
    (tmp_path / "u.txt").write_bytes(b"line one\nline two \xff\xfe here\n")
    one_line_error(invoke("train", tmp_path / "u.txt", "--out", tmp_path / "o", *TINY),
                   "invalid UTF-8", "byte 18", "line 2")


def test_text_shorter_than_a_block(tmp_path):
    (tmp_path / "s.txt").write_text("too short")
    one_line_error(invoke("train", tmp_path / "s.txt", "--out", tmp_path / "o", *TINY), "fewer than one block")


def test_heads_must_divide_width(tmp_path):
    (tmp_path / "c.txt").write_text(TEXT)
    err = one_line_error(invoke("train", tmp_path / "c.txt", "--out", tmp_path / "o", *TINY, "--n-embd", "18",
                                "--n-head", "4"), "not divisible")
    assert "n-embd=18" in err
    assert not (tmp_path / "o").exists()


def test_existing_run_not_overwritten(trained, tmp_path):
    (tmp_path / "c.txt").write_text(TEXT)
    before = (trained / "latest" / "model.safetensors").read_bytes()
    one_line_error(invoke("train", tmp_path / "c.txt", "--out", trained, *TINY), "--resume")
    assert (trained / "latest" / "model.safetensors").read_bytes() == before


def test_resume_without_checkpoint(tmp_path):
    one_line_error(invoke("train", "--out", tmp_path / "empty", "--resume"), "no checkpoint")


def test_sample_block_size_above_model(trained):
    one_line_error(invoke("sample", trained, "--block-size", "64"), "above the model's block size 16")


def test_prompt_outside_char_vocab(trained):
    one_line_error(invoke("sample", trained, "--prompt", "zebra ✓"), "not in the char vocabulary")


def test_truncated_checkpoint(trained, tmp_path):
    ck = tmp_path / "ck"
    shutil.copytree(trained / "latest", ck)
    data = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(data[: len(data) // 2])
    one_line_error(invoke("sample", ck), "corrupt or truncated")


def test_mismatched_checkpoint(trained, tmp_path):
    ck = tmp_path / "ck"
    shutil.copytree(trained / "latest", ck)
    cfg = json.loads((ck / "config.json").read_text())
    cfg["mingpt"]["config"]["n_layer"] = 3
    (ck / "config.json").write_text(json.dumps(cfg))
    one_line_error(invoke("sample", ck), "transformer.h.1.ln_1.weight is missing")


def test_not_a_checkpoint(tmp_path):
    one_line_error(invoke("sample", tmp_path), "not a checkpoint")


def test_train_with_a_trained_bpe_tokenizer(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT * 3)
    tok = tmp_path / "tok.json"
    res = invoke("tokenize", "train", corpus, "--vocab-size", "300", "--out", tok)
    assert res.exit_code == 0, res.stderr
    res = invoke("train", corpus, "--tokenizer", tok, "--out", tmp_path / "run", "--max-iters", "3", *TINY)
    assert res.exit_code == 0, res.stderr
    res = invoke("sample", tmp_path / "run", "--prompt", "To be", "--max-new-tokens", "5")
    assert res.exit_code == 0 and res.output.startswith("To be")


def test_zero_iterations_name_no_checkpoint(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    res = invoke("train", corpus, "--out", tmp_path / "run", "--max-iters", "0", *TINY)
    assert res.exit_code == 0, res.stderr
    assert "no checkpoint was saved" in res.output and "sample with" not in res.output
    assert not (tmp_path / "run" / "latest").exists()


def test_another_familys_checkpoint_says_what_it_is(tmp_path, trained):
    vit = tmp_path / "vit"
    res = invoke("vit", "train", "--out", vit, "--max-iters", "2", "--n-layer", "1", "--n-head", "2",
                 "--n-embd", "16", "--patch-size", "7", "--batch-size", "16", "--train-limit", "64",
                 "--eval-limit", "16", "--no-progress")
    assert res.exit_code == 0, res.stderr
    line = one_line_error(invoke("sample", vit, "--max-new-tokens", "3"), "ViT checkpoint", "mingpt vit")
    assert "version" not in line
    one_line_error(invoke("vit", "eval", trained), "GPT checkpoint", "mingpt sample")
