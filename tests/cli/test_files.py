"""What the files a run writes and reads must be: checkpoints readable with
the user's normal permissions, non-finite weights refused at load with one
line, a UTF-8 byte-order mark at the start of a text or JSON Lines file
taken as no text."""
import json
import os
import stat

import numpy as np
import pytest

from conftest import invoke, one_line_error
from mingpt_c import data
from mingpt_c.errors import CheckpointError
from mingpt_c.gpt import checkpoint
from mingpt_c.gpt.config import GPTConfig
from mingpt_c.gpt.model import GPT

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "2",
        "--eval-interval", "5", "--eval-iters", "1", "--no-progress", "--max-iters", "5"]
TEXT = "It is a truth universally acknowledged, that a single man in possession\n" * 20


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_checkpoint_files_have_the_users_permissions(tmp_path, umask_022):
    cfg = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)
    path = checkpoint.save(tmp_path / "ck", cfg, GPT(cfg).params)
    for f in path.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f.name


def test_non_finite_weights_are_refused_at_load(tmp_path):
    cfg = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)
    params = GPT(cfg).params.copy()
    params[5] = np.nan
    path = checkpoint.save(tmp_path / "ck", cfg, params)
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        checkpoint.load(path)
    res = invoke("sample", path, "--max-new-tokens", "3")
    assert "NaN or infinite" in one_line_error(res)


def test_byte_order_mark_is_no_text(tmp_path):
    plain, marked = tmp_path / "plain.txt", tmp_path / "marked.txt"
    plain.write_text(TEXT, encoding="utf-8")
    marked.write_bytes(b"\xef\xbb\xbf" + TEXT.encode())
    data.check_text_file(marked)
    assert "".join(data.iter_text([marked])) == "".join(data.iter_text([plain])) == TEXT
    assert invoke("train", marked, "--out", tmp_path / "run", *TINY).exit_code == 0


def test_byte_order_mark_in_json_lines(tmp_path):
    rows = [{"text": f"good film number {i}", "label": "pos" if i % 2 else "neg"} for i in range(16)]
    f = tmp_path / "train.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in rows).encode())
    res = invoke("encoder", "train", "--train", f, "--out", tmp_path / "enc", "--epochs", "1", "--max-len", "8",
                 "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--vocab-size", "300", "--batch-size", "4",
                 "--warmup-iters", "1", "--no-progress")
    assert res.exit_code == 0, res.stderr
