"""mingpt_c.checkpoint.write_dir's two renames: at every moment a good
checkpoint is either path or its .old sibling, also when a crash between
the renames left only .old and the next save fails before its own."""
import os

import numpy as np
import pytest

from mingpt_c import checkpoint
from mingpt_c.errors import CheckpointError


def _save(path, value):
    return checkpoint.write_dir(path, {"v": value}, {"w": np.full(3, value, np.float32)})


def test_a_failed_save_keeps_the_only_good_old_checkpoint(tmp_path, monkeypatch):
    path, old = tmp_path / "latest", tmp_path / ".latest.old"
    _save(path, 1.0)
    os.replace(path, old)                    # a crash between the renames: only .old holds a checkpoint
    assert checkpoint.resolve(path) == old

    real = os.replace

    def failing(src, dst):                   # the next save fails at its final rename
        if str(src).endswith(f".latest.tmp{os.getpid()}"):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(CheckpointError, match=r"\.latest\.old holds the previous checkpoint"):
        _save(path, 2.0)
    assert (old / "config.json").exists() and checkpoint.resolve(path) == old
    monkeypatch.undo()

    _save(path, 3.0)                         # a save that succeeds replaces it and clears .old
    assert not old.exists()
    tensors, _ = checkpoint.load_safetensors(path / "model.safetensors")
    assert tensors["w"][0] == 3.0


def test_a_save_over_a_checkpoint_keeps_no_old_one(tmp_path):
    path = tmp_path / "best"
    _save(path, 1.0)
    _save(path, 2.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    tensors, _ = checkpoint.load_safetensors(path / "model.safetensors")
    assert tensors["w"][0] == 2.0
