"""Data-parallel training over MPI: 2 ranks with batch B equal 1 rank with
batch 2B; a run resumes on a different number of ranks with the same global
batch sequence; a killed rank makes the job end with a clear error instead
of hanging, and the last checkpoint stays loadable.

Needs mpiexec and mpi4py (.ci/run installs Open MPI); skipped otherwise."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, assert_close

if shutil.which("mpiexec") is None:
    pytest.skip("mpiexec not found (install Open MPI)", allow_module_level=True)
pytest.importorskip("mpi4py")

from mingpt_c.gpt import checkpoint  # noqa: E402

TEXT = "It was the best of times, it was the worst of times; it was the age of wisdom.\n" * 60
MODEL = ["--n-layer", "2", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--eval-iters", "2",
         "--warmup-iters", "2", "--lr-decay-iters", "20", "--log-interval", "1", "--no-progress",
         "--threads", "1"]
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1", PYTHONUNBUFFERED="1")


def mpirun(n, *args, script=None, timeout=180):
    cmd = ["mpiexec", "-n", str(n), "--oversubscribe", sys.executable,
           str(script or ROOT / "cli.py"), *[str(a) for a in args]]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)


def train(n, out, corpus, *extra):
    args = ["train", corpus, "--out", out, *MODEL, *extra]
    r = mpirun(n, *args) if n > 1 else subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *[str(a) for a in args]], env=ENV,
        capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def losses(run):
    recs = [json.loads(line) for line in open(run / "log.jsonl")]
    return {r["iter"]: r["loss"] for r in recs if r["type"] == "train"}


def weights(run):
    return checkpoint.load(run / "latest")["params"]


@pytest.fixture
def corpus(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text(TEXT)
    return p


def test_two_ranks_equal_one_rank_double_batch(tmp_path, corpus):
    one, two = tmp_path / "one", tmp_path / "two"
    train(1, one, corpus, "--batch-size", "4", "--max-iters", "20", "--eval-interval", "10")
    train(2, two, corpus, "--batch-size", "2", "--max-iters", "20", "--eval-interval", "10")
    l1, l2 = losses(one), losses(two)
    assert sorted(l1) == sorted(l2) == list(range(1, 21))
    assert_close([l2[k] for k in sorted(l2)], [l1[k] for k in sorted(l1)], rtol=1e-5, atol=0)
    w1, w2 = weights(one), weights(two)
    assert_close(w2, w1, rtol=1e-5, atol=1e-5 * np.abs(w1).max())


def test_resume_on_other_rank_counts(tmp_path, corpus):
    full = tmp_path / "full"
    train(2, full, corpus, "--batch-size", "2", "--max-iters", "20", "--eval-interval", "10")
    for n in (1, 4):
        part = tmp_path / f"part{n}"
        train(2, part, corpus, "--batch-size", "2", "--max-iters", "10", "--eval-interval", "10")
        r = train(n, part, corpus, "--resume", "--max-iters", "20")
        assert json.loads((part / "latest" / "train_state.json").read_text())["global_batch"] == 4
        if n == 4:
            assert "1 per rank" in r.stderr
        assert_close(weights(part), weights(full), rtol=1e-5, atol=1e-5 * np.abs(weights(full)).max())


KILLER = """
import os, signal, sys
sys.path.insert(0, {root!r})
from mingpt_c.gpt import model as gpt
real = gpt.GPT.backward
count = [0]
def backward(self, *a, **k):
    count[0] += 1
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", "0"))
    if rank == 1 and count[0] == 8:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, *a, **k)
gpt.GPT.backward = backward
import cli
cli.main()
"""


def test_killed_rank_ends_the_job(tmp_path, corpus):
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(root=str(ROOT)))
    run = tmp_path / "run"
    r = mpirun(2, "train", corpus, "--out", run, *MODEL, "--batch-size", "2", "--max-iters", "1000",
               "--eval-interval", "3", "--dist-timeout", "20", script=script, timeout=120)
    assert r.returncode != 0
    st = json.loads((run / "latest" / "train_state.json").read_text())
    assert st["iter"] == 6  # saved at iteration 3, then 6; rank 1 died in iteration 7
    assert checkpoint.load(run / "latest")["params"].size > 0


FULL_DISK = """
import os, sys
sys.path.insert(0, {root!r})
from mingpt_c.errors import CheckpointError
from mingpt_c.gpt import checkpoint
real = checkpoint.save
count = [0]
def save(path, *a, **k):
    count[0] += str(path).endswith("latest")
    if count[0] == 2:
        raise CheckpointError(f"cannot write {{path}}: [Errno 28] No space left on device")
    return real(path, *a, **k)
checkpoint.save = save
import cli
cli.main()
"""


def test_error_on_one_rank_stops_every_rank(tmp_path, corpus):
    """Rank 0 alone writes checkpoints, so a full disk fails rank 0 alone,
    while rank 1 is already waiting in the next step's all-reduce. The job
    ends at once with rank 0's line, not after --dist-timeout (300 s; the
    subprocess timeout of 120 s fails the test if it waits for it)."""
    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK.format(root=str(ROOT)))
    run = tmp_path / "run"
    r = mpirun(2, "train", corpus, "--out", run, *MODEL, "--batch-size", "2", "--max-iters", "1000",
               "--eval-interval", "3", script=script, timeout=120)
    assert r.returncode != 0
    assert "rank 0: cannot write" in r.stderr and "No space left on device" in r.stderr
    assert "no answer from the other ranks" not in r.stderr
    assert json.loads((run / "latest" / "train_state.json").read_text())["iter"] == 3


NAN_GRADS = """
import sys
sys.path.insert(0, {root!r})
from mingpt_c.gpt import model as gpt
real = gpt.GPT.backward
def backward(self, *a, **k):
    out = real(self, *a, **k)
    self.grads[:] = float("nan")
    return out
gpt.GPT.backward = backward
import cli
cli.main()
"""


def test_divergence_ends_every_rank_without_abort(tmp_path, corpus):
    """The one error every rank raises together in the loop: each ends with
    its line, and the job is not aborted (no MPI_ABORT)."""
    script = tmp_path / "nan.py"
    script.write_text(NAN_GRADS.format(root=str(ROOT)))
    r = mpirun(2, "train", corpus, "--out", tmp_path / "run", *MODEL, "--batch-size", "2", "--max-iters", "50",
               "--eval-interval", "10", "--max-nan-steps", "3", script=script, timeout=120)
    assert r.returncode == 1
    assert "training diverged: 3 non-finite steps in a row" in r.stderr
    assert "MPI_ABORT" not in r.stderr
