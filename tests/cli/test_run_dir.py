"""The run directory as the run scaffold keeps it (a GPT run stands for
every family): an OS lock that refuses a second run on the same --out with
its holder's PID; stale checkpoint temporaries of dead writers removed;
SIGTERM and SIGINT save latest/ and exit 143 and 130 (a real process and
real signals); log.jsonl without duplicates after --resume; a new run that
fails before its first checkpoint removes the data/ it prepared."""
import json
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, invoke, one_line_error

TEXT = "To be, or not to be, that is the question.\n" * 20
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "2",
        "--eval-iters", "1", "--log-interval", "1", "--threads", "1", "--no-progress"]


@pytest.fixture
def corpus(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text(TEXT)
    return p


def train_iters(run) -> list:
    return [r["iter"] for r in map(json.loads, open(run / "log.jsonl")) if r["type"] == "train"]


def start_long_run(corpus, run):
    """A GPT run of 10^5 iterations in its own process, once it has logged a few steps."""
    p = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "train", str(corpus), "--out", str(run), *TINY,
                          "--max-iters", "100000", "--eval-interval", "100000"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        if (run / "log.jsonl").exists() and len(train_iters(run)) >= 3:
            return p
        if p.poll() is not None:
            pytest.fail(f"the run ended early: {p.communicate()[1][-2000:]}")
        time.sleep(0.1)
    p.kill()
    pytest.fail("the run logged no steps in 60 s")


@pytest.mark.parametrize("sig,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_latest_then_exits_with_its_status(corpus, tmp_path, sig, status):
    """While the run holds --out, a second one is refused with its PID; the
    signal saves latest/ (exit 128 + signal); --resume goes on from there,
    each iteration logged once; a finished run exits 0."""
    run = tmp_path / "run"
    p = start_long_run(corpus, run)
    try:
        line = one_line_error(invoke("train", corpus, "--out", run, *TINY), f"PID {p.pid}")
        assert "in use" in line
        one_line_error(invoke("train", "--out", run, "--resume"), f"PID {p.pid}")
    finally:
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
    assert p.returncode == status, err
    assert f"interrupted ({signal.Signals(sig).name})" in err and "--resume" in err and "Traceback" not in err
    st = json.loads((run / "latest" / "train_state.json").read_text())
    stopped = st["iter"]
    assert stopped >= 3 and max(train_iters(run)) == stopped
    res = subprocess.run([sys.executable, str(ROOT / "cli.py"), "train", "--out", str(run), "--resume",
                          "--max-iters", str(stopped + 3)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    its = train_iters(run)
    assert its == list(range(1, stopped + 4))


def test_resume_cuts_records_past_the_checkpoint(corpus, tmp_path):
    """Records a run wrote after its last checkpoint (it then died) are cut
    when it resumes, so every iteration is logged once."""
    run = tmp_path / "run"
    assert invoke("train", corpus, "--out", run, *TINY, "--max-iters", "4", "--eval-interval", "2").exit_code == 0
    with open(run / "log.jsonl", "a") as f:   # iterations 5 and 6 happened, then a crash mid-line
        f.write(json.dumps({"type": "train", "iter": 5, "loss": 9.0}) + "\n")
        f.write(json.dumps({"type": "eval", "iter": 6, "val_loss": 9.0}) + "\n")
        f.write('{"type": "train", "it')
    res = invoke("train", "--out", run, "--resume", "--max-iters", "6")
    assert res.exit_code == 0, res.stderr
    recs = [json.loads(line) for line in open(run / "log.jsonl")]
    assert [r["iter"] for r in recs if r["type"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [r["iter"] for r in recs if r["type"] == "eval"] == [0, 2, 4, 6]
    assert all(r.get("loss") != 9.0 and r.get("val_loss") != 9.0 for r in recs)


def test_stale_temporaries_of_dead_writers_are_removed(corpus, tmp_path):
    run = tmp_path / "run"
    assert invoke("train", corpus, "--out", run, *TINY, "--max-iters", "2").exit_code == 0
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()   # its PID is free now
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for pid in (dead.pid, alive.pid):
            tmp = run / f".latest.tmp{pid}"
            tmp.mkdir()
            (tmp / "model.safetensors").write_bytes(b"half a checkpoint")
        res = invoke("train", "--out", run, "--resume", "--max-iters", "3")
        assert res.exit_code == 0, res.stderr
        assert not (run / f".latest.tmp{dead.pid}").exists()
        assert f".latest.tmp{dead.pid}" in res.stderr
        assert (run / f".latest.tmp{alive.pid}").exists()   # its writer may still be at work
    finally:
        alive.kill()
        alive.wait()


def test_lock_is_released_when_the_holder_dies(corpus, tmp_path):
    """The kernel drops the lock of a killed run: the next run takes it."""
    run = tmp_path / "run"
    p = start_long_run(corpus, run)
    p.kill()
    p.communicate(timeout=30)
    # it saved no checkpoint: a new run in its directory is welcome, locks it, and starts a new log
    res = invoke("train", corpus, "--out", run, *TINY, "--max-iters", "2")
    assert res.exit_code == 0, res.stderr
    assert train_iters(run) == [1, 2]


def _refuse_with_the_vocabulary(monkeypatch, vocab: int) -> None:
    """The machine has room for TINY's model before its vocabulary is known,
    not for the one with it: the memory check refuses after data/ is made."""
    from mingpt_c.device import Device
    from mingpt_c.gpt.config import GPTConfig
    from mingpt_c.gpt.model import memory_bytes

    need = [memory_bytes(GPTConfig(vocab_size=v, block_size=16, n_layer=1, n_head=2, n_embd=16), 2, 16, True)
            for v in (1, vocab)]
    assert need[0] < need[1]
    monkeypatch.setattr(Device, "available_bytes", lambda self: (need[0] + need[1]) // 2)


@pytest.mark.parametrize("how", ["text-too-short", "memory-refused"])
def test_failed_run_leaves_no_data(corpus, tmp_path, monkeypatch, how):
    """A run that fails once its token files are written, before its first
    checkpoint, takes its data/ away with it; the rest of --out stays."""
    run = tmp_path / "run"
    if how == "text-too-short":
        corpus.write_text("To be.\n")
        needle = "fewer than one block"
    else:
        _refuse_with_the_vocabulary(monkeypatch, 256)
        needle = "available"
    one_line_error(invoke("train", corpus, "--out", run, *TINY, "--tokenizer", "byte", "--max-iters", "2"), needle)
    assert run.is_dir() and not (run / "data").exists() and not (run / "latest").exists()
    monkeypatch.undo()
    corpus.write_text(TEXT)   # the same --out takes the next run
    assert invoke("train", corpus, "--out", run, *TINY, "--max-iters", "2").exit_code == 0
    assert (run / "data" / "train.tokens").exists()


def test_failed_run_keeps_data_it_did_not_make(corpus, tmp_path):
    """A data/ that was there before the run (one a killed run left, a
    resumed run's) is not the failed run's to remove."""
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    (run / "data" / "notes.txt").write_text("mine")
    short = tmp_path / "short.txt"
    short.write_text("To be.\n")
    one_line_error(invoke("train", short, "--out", run, *TINY, "--max-iters", "2"), "fewer than one block")
    assert (run / "data" / "notes.txt").read_text() == "mine"

    run = tmp_path / "finished"
    assert invoke("train", corpus, "--out", run, *TINY, "--max-iters", "2").exit_code == 0
    (run / "latest" / "model.safetensors").write_bytes(b"not a checkpoint")
    one_line_error(invoke("train", "--out", run, "--resume", "--max-iters", "4"), "latest")
    assert (run / "data" / "train.tokens").exists()
