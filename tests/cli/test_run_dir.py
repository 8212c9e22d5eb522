"""The run directory as the run scaffold keeps it (a GPT run stands for
every family): an OS lock that refuses a second run on the same --out with
its holder's PID; stale checkpoint temporaries of dead writers removed;
SIGTERM and SIGINT save latest/ and exit 143 and 130 (a real process and
real signals); log.jsonl without duplicates after --resume."""
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
