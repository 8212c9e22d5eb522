"""An output nobody can write is refused before any work, with one line
naming the path: every command that writes (a run directory, a tokenizer
file, encoded ids, an exported or imported checkpoint, an attention map)."""

import pytest

from conftest import invoke, one_line_error, tmpfs

TEXT = "It is a truth universally acknowledged, that a single man in possession\n" * 20
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "2",
        "--eval-interval", "5", "--eval-iters", "1", "--no-progress", "--max-iters", "2"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("w")
    (d / "text.txt").write_text(TEXT)
    assert invoke("train", d / "text.txt", "--out", d / "run", *TINY).exit_code == 0
    (d / "plain").write_text("a file, not a folder\n")
    return d


def commands(d, bad):
    return [["train", d / "text.txt", "--out", bad / "run", *TINY],
            ["encoder", "pretrain", d / "text.txt", "--out", bad / "enc", "--max-iters", "1"],
            ["vit", "train", "--out", bad / "vit", "--max-iters", "1"],
            ["tokenize", "train", d / "text.txt", "--vocab-size", "300", "--out", bad / "bpe.json"],
            ["tokenize", "encode", "--tokenizer", "byte", "-o", bad / "ids.txt", "hello"],
            ["export", d / "run", "--out", bad / "hf"],
            ["import", d / "run", "--out", bad / "again"]]


@pytest.mark.parametrize("k", range(7))
def test_output_under_a_file_is_one_line(files, k):
    bad = files / "plain"
    res = invoke(*commands(files, bad)[k])
    assert "plain" in one_line_error(res)


@pytest.fixture
def read_only(tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        yield ro


@pytest.mark.parametrize("k", range(7))
def test_read_only_file_system_is_one_line(files, read_only, k):
    res = invoke(*commands(files, read_only)[k])
    assert "Read-only file system" in one_line_error(res)
