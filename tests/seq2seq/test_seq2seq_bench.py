"""bench/seq2seq.py, the side-by-side run against the PyTorch twin: a run
stopped and taken up again (--state) gives the same bits as one without a
stop, a state of another recipe is refused in one line, and its own side
is, step for step, the run `mingpt seq2seq train` makes of the same recipe
(which is what lets --sides torch train the twin alone)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import invoke

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--iters", "6", "--enc-layers", "1", "--dec-layers", "1", "--n-embd", "32", "--n-head", "2",
        "--threads", "1", "--eval-limit", "10"]


def bench(*args):
    return subprocess.run([sys.executable, str(ROOT / "bench" / "seq2seq.py"), *TINY, *args],
                          capture_output=True, text=True, timeout=300)


def state(d):
    return torch.load(Path(d) / "state.pt", weights_only=True)


def score_rows(out: str) -> list[str]:
    """The rows of the test-word table, without their last column (the
    decoding's seconds, timed afresh in each sitting)."""
    rows = out.split("greedy decoding")[1].splitlines()[2:]
    return [r.rsplit(None, 1)[0] for r in rows if r.strip() and not r.startswith("decode s")]


def test_stop_and_go_on_is_bit_exact_and_ours_is_the_cli_run(tmp_path):
    wd = ("--weight-decay", "0.1")   # not the default: the option reaches both sides
    straight = bench("--state", tmp_path / "a", *wd)
    assert straight.returncode == 0, straight.stderr
    assert "WER" in straight.stdout

    first = bench("--state", tmp_path / "b", "--stop-after", "4", *wd)
    assert first.returncode == 0, first.stderr
    assert "--stop-after 4 at step 4 of 6" in first.stdout
    assert state(tmp_path / "b")["step"] == 4
    second = bench("--state", tmp_path / "b", *wd)
    assert second.returncode == 0, second.stderr
    assert "resumed from" in second.stdout and "sitting 2: steps 4 to 6" in second.stdout

    a, b = state(tmp_path / "a"), state(tmp_path / "b")
    assert a["step"] == b["step"] == 6
    assert a["losses"] == b["losses"]
    assert torch.equal(a["ours"]["params"], b["ours"]["params"])
    assert torch.equal(a["ours"]["m"], b["ours"]["m"]) and torch.equal(a["ours"]["v"], b["ours"]["v"])
    for k, v in a["torch"]["model"].items():
        assert torch.equal(v, b["torch"]["model"][k]), k
    # the scores after the second sitting are the straight run's
    rows = score_rows(straight.stdout)
    assert len(rows) == 2 and rows == score_rows(second.stdout)   # ours, pytorch

    # our side is the CLI's run of the same recipe, bit for bit
    from mingpt_c.seq2seq import checkpoint as ckpt
    cli = invoke("seq2seq", "train", "--out", tmp_path / "cli", "--max-iters", 6, "--enc-layers", 1,
                 "--dec-layers", 1, "--n-embd", 32, "--n-head", 2, "--threads", 1, "--eval-limit", 10,
                 "--no-progress", *wd)
    assert cli.exit_code == 0, cli.output
    params = ckpt.load(tmp_path / "cli" / "latest")["params"]
    assert np.array_equal(params, a["ours"]["params"].numpy())


def test_another_recipe_is_refused(tmp_path):
    first = bench("--state", tmp_path, "--stop-after", "1", "--sides", "torch")
    assert first.returncode == 0, first.stderr
    assert "ours" not in state(tmp_path)
    other = bench("--state", tmp_path, "--lr", "1e-3", "--sides", "torch")
    assert other.returncode == 1
    line = other.stderr.strip()
    assert "\n" not in line and "another recipe" in line and "--lr 0.0005 there, 0.001 here" in line


def test_weight_average_goes_on_after_a_stop_and_matches_the_cli(tmp_path):
    """--ema: both sides' averages come back bit for bit after a stop; ours
    is the model `mingpt seq2seq train --ema` saves; the twin's, at dropout
    0, stays within float rounding of ours."""
    args = ("--ema", "0.9", "--dropout", "0")
    straight = bench("--state", tmp_path / "a", *args)
    assert straight.returncode == 0, straight.stderr
    assert "weight average 0.9" in straight.stdout
    assert bench("--state", tmp_path / "b", *args, "--stop-after", "4").returncode == 0
    second = bench("--state", tmp_path / "b", *args)
    assert second.returncode == 0, second.stderr
    a, b = state(tmp_path / "a"), state(tmp_path / "b")
    assert torch.equal(a["ours"]["avg"], b["ours"]["avg"])
    assert all(torch.equal(x, y) for x, y in zip(a["torch"]["avg"], b["torch"]["avg"]))
    assert score_rows(straight.stdout) == score_rows(second.stdout)
    assert not torch.equal(a["ours"]["avg"], a["ours"]["params"])

    from mingpt_c.benchmarks.torch_seq2seq import from_ours
    from mingpt_c.seq2seq import checkpoint as ckpt
    from mingpt_c.seq2seq.model import Seq2Seq
    cli = invoke("seq2seq", "train", "--out", tmp_path / "cli", "--max-iters", 6, "--enc-layers", 1,
                 "--dec-layers", 1, "--n-embd", 32, "--n-head", 2, "--threads", 1, "--eval-limit", 10,
                 "--no-progress", *args)
    assert cli.exit_code == 0, cli.output
    saved = ckpt.load(tmp_path / "cli" / "latest")
    assert np.array_equal(saved["params"], a["ours"]["avg"].numpy())
    # the twin's average, in its own parameter order: ours mapped through the twin
    ours_as_twin = list(from_ours(Seq2Seq(saved["cfg"], saved["params"]), dtype=torch.float32).parameters())
    for x, y in zip(a["torch"]["avg"], ours_as_twin):
        assert torch.allclose(x, y.detach(), rtol=1e-3, atol=1e-5)
