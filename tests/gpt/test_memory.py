"""Sizes that cannot fit are refused before anything is allocated, with one
line giving the bytes needed and the bytes available."""
from conftest import invoke, one_line_error
from mingpt_c.device import Device

TEXT = "It is a truth universally acknowledged, that a single man in possession\n" * 40
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "2",
        "--eval-interval", "5", "--eval-iters", "1", "--no-progress", "--max-iters", "2"]


def test_huge_width_is_refused_before_any_work(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    res = invoke("train", corpus, "--out", tmp_path / "run", "--n-embd", "100000", "--n-head", "4",
                 "--no-progress")
    line = one_line_error(res, "bytes", "available")
    assert "TiB" in line
    assert not (tmp_path / "run" / "data").exists()


def test_huge_eval_batch_is_refused(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 20)
    assert invoke("train", corpus, "--out", tmp_path / "run", *TINY).exit_code == 0
    assert invoke("eval", tmp_path / "run", corpus, "--batch-size", "100000").exit_code == 0   # it fits here
    monkeypatch.setattr(Device, "available_bytes", lambda self: 1 << 20)   # a machine with 1 MiB free
    one_line_error(invoke("eval", tmp_path / "run", corpus, "--batch-size", "100000"), "bytes", "available")
    assert invoke("eval", tmp_path / "run", corpus, "--batch-size", "1").exit_code == 0
