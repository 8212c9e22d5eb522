"""Shared test helpers: seeded inputs, float32 casting, closeness checks,
and the location of the shared data sets."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

# Offline GPT-2 BPE files for tiktoken (see shared/data/README.md).
if (DATA / "tiktoken-cache").is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(DATA / "tiktoken-cache"))

SANITIZE = os.environ.get("MINGPT_SANITIZE") == "1"


def f32(*arrays):
    out = [np.ascontiguousarray(a, dtype=np.float32) for a in arrays]
    return out[0] if len(out) == 1 else out


def assert_close(got, want, rtol=1e-5, atol=1e-6, what=""):
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what} shape {got.shape} != {want.shape}"
    err = np.abs(got - want)
    tol = atol + rtol * np.abs(want)
    worst = np.unravel_index(np.argmax(err - tol), err.shape) if err.size else ()
    assert np.all(err <= tol), (
        f"{what} mismatch: max abs err {err.max():.3g} at {worst}: "
        f"got {got[worst]!r}, want {want[worst]!r}")


def data_file(rel: str) -> Path:
    p = DATA / rel
    if not p.exists():
        pytest.skip(f"shared data set {rel} not found at {p}")
    return p


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def invoke(*args, catch_exceptions=False, input=None):
    """Runs `mingpt ARGS...` in-process (input: its stdin); stdout and stderr kept apart."""
    from click.testing import CliRunner

    from mingpt_c.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=catch_exceptions, input=input)


def one_line_error(res, *needles):
    """A bad-input run: non-zero exit, exactly one line on stderr naming each
    needle, no traceback anywhere. Returns the line."""
    assert res.exit_code != 0
    err = res.stderr.strip()
    assert "Traceback" not in res.output + res.stderr
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


def tmpfs(path, options: str):
    """A tmpfs mounted at path (a fresh folder) with the given mount options,
    unmounted lazily after the test (a failed run may still map a file on it);
    skips where this machine does not let the tests mount one (needs root)."""
    import subprocess
    from contextlib import contextmanager

    @contextmanager
    def mounted():
        path.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs ({options}) here (needs root)")
        try:
            yield path
        finally:
            subprocess.run(["umount", "-l", str(path)])
    return mounted()
