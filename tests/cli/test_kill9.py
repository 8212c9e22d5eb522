"""20 kill -9 at random moments of a training run (in steps, evaluations
and checkpoint saves), each followed by --resume: no stale temporary
directory is left, every checkpoint loads, and the run ends bit for bit as
the uninterrupted one."""
import signal
import subprocess
import sys
import time

import numpy as np

from conftest import ROOT
from mingpt_c.gpt import checkpoint
from mingpt_c.run.rundir import has_run

TEXT = "It is a truth universally acknowledged, that a single man in possession\n" * 60
ARGS = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "16", "--batch-size", "4",
        "--max-iters", "60", "--eval-interval", "2", "--eval-iters", "1", "--threads", "1", "--no-progress"]


def cli(*args):
    return subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_twenty_kills_then_resume_is_bit_exact(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    ref = tmp_path / "ref"
    p = cli("train", corpus, "--out", ref, *ARGS)
    assert p.wait() == 0, p.stderr.read()

    run = tmp_path / "run"
    rng = np.random.default_rng(0)
    kills = 0
    while kills < 20:
        # the product's rule: a kill between a save's two renames leaves only .latest.old, still a run
        resume = has_run(run)
        p = cli("train", corpus, "--out", run, *ARGS, *(["--resume"] if resume else []))
        time.sleep(rng.uniform(0.4, 2.0))   # the interpreter's start, then steps and saves
        if p.poll() is not None:            # it finished before the kill: start over from scratch
            assert p.returncode == 0, p.stderr.read()
            for d in sorted(run.rglob("*"), reverse=True):
                d.unlink() if d.is_file() else d.rmdir()
            run.rmdir()
            continue
        p.send_signal(signal.SIGKILL)
        p.wait()
        kills += 1
        for name in ("latest", "best"):     # whatever is there loads
            if (run / name).exists():
                checkpoint.load(run / name)
    p = cli("train", corpus, "--out", run, *ARGS, *(["--resume"] if has_run(run) else []))
    assert p.wait() == 0, p.stderr.read()

    assert not [q.name for q in run.iterdir() if ".tmp" in q.name]
    got, want = checkpoint.load(run / "latest"), checkpoint.load(ref / "latest")
    assert np.array_equal(got["params"], want["params"])
    assert checkpoint.load(run / "best")["params"].shape == want["params"].shape
