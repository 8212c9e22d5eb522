"""The run directory under several ranks: on --resume every rank takes the
run's saved configuration and train state from rank 0, never from the
files, which rank 0 rewrites as soon as its run begins (a rank reading
run_config.json while rank 0 rewrote it once met an empty file and left the
others waiting); and the files rank 0 rewrites are never seen half-written."""
import dataclasses
import json
import os

import pytest

from mingpt_c.gpt.train import TrainConfig
from mingpt_c.run import scaffold
from mingpt_c.files import write_atomic
from mingpt_c.run.rundir import RUN_CONFIG, RunDirError


class OtherRank:
    """Rank 1 of 2, whose collectives answer what rank 0 would send."""

    rank, size, local_size, is_main = 1, 2, 1, False

    def __init__(self, rank0_failed=False, sent=None):
        self.rank0_failed, self.sent = rank0_failed, sent

    def any(self, flag):
        return flag or self.rank0_failed

    def broadcast(self, obj):
        return self.sent


def test_another_rank_resumes_from_what_rank_0_sent(tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / RUN_CONFIG).write_text("")   # what rank 0 rewriting it can leave for a moment
    saved = dataclasses.asdict(TrainConfig(out=str(out), batch_size=3, seed=7, threads=1, progress=False))
    state = {"iter": 10, "global_batch": 8, "seconds": 2.5}
    monkeypatch.setattr(scaffold, "get_world", lambda timeout: OtherRank(sent=[saved, state]))
    given = {"threads": "--threads", "max_iters": "--max-iters"}
    with scaffold.Run(TrainConfig(out=str(out), max_iters=20, threads=1), resume=True, given=given,
                      log=lambda msg: None) as run:
        assert run.resumed_state == state
        assert (run.cfg.seed, run.cfg.max_iters) == (7, 20)
        assert run.cfg.batch_size == 4   # the global batch of 8 rows, cut between 2 ranks
        assert run.elapsed() >= 2.5


def test_another_rank_fails_with_rank_0(tmp_path, monkeypatch):
    monkeypatch.setattr(scaffold, "get_world", lambda timeout: OtherRank(rank0_failed=True))
    (tmp_path / "run").mkdir()
    with pytest.raises(RunDirError, match="rank 0 could not open the run directory"):
        scaffold.Run(TrainConfig(out=str(tmp_path / "run"), threads=1), resume=True, log=lambda msg: None)


def test_write_atomic_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / RUN_CONFIG
    write_atomic(path, json.dumps({"lr": 1}))
    assert json.loads(path.read_text()) == {"lr": 1}

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_atomic(path, json.dumps({"lr": 2}))
    assert json.loads(path.read_text()) == {"lr": 1}
    assert os.listdir(tmp_path) == [RUN_CONFIG]   # no temporary left behind


def test_write_atomic_keeps_the_old_file_when_its_writer_fails(tmp_path):
    path = tmp_path / "distilled.npz"
    write_atomic(path, lambda f: f.write(b"old"))
    assert path.read_bytes() == b"old"

    def half(f):   # writes part of the file, then fails
        f.write(b"ne")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_atomic(path, half)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["distilled.npz"]
