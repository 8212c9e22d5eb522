"""A save that fails for lack of space: one line saying so and which
checkpoint is still good, the temporary directory removed, the previous
checkpoint loadable (a tiny tmpfs provokes it where root may mount one)."""
import shutil

import pytest

from conftest import invoke, tmpfs
from mingpt_c.gpt import checkpoint

TEXT = "It is a truth universally acknowledged, that a single man in possession\n" * 40


@pytest.fixture
def small_disk(tmp_path):
    with tmpfs(tmp_path / "disk", "size=1600k") as d:
        yield d


def test_save_that_runs_out_of_space(tmp_path, small_disk):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    out = small_disk / "run"
    # each checkpoint (model + optimizer) is about 430 KB: the first fits, a second beside it does not
    res = invoke("train", corpus, "--out", out, "--max-iters", "4", "--eval-interval", "2", "--eval-iters", "1",
                 "--n-layer", "1", "--n-head", "2", "--n-embd", "64", "--block-size", "16", "--batch-size", "2",
                 "--no-progress")
    assert res.exit_code != 0 and "Traceback" not in res.output + res.stderr
    line = res.stderr.strip().splitlines()[-1]   # the run's progress lines come before it
    assert "failed" in line and "No space left" in line, line
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    good = [d for d in ("latest", "best", ".latest.old", ".best.old") if (out / d / "config.json").exists()]
    assert good
    checkpoint.load(out / good[0])
    shutil.rmtree(out, ignore_errors=True)
