"""The run directory (--out) of a training command: its lock, its leftovers,
and the one --resume rule.

Lock: an OS file lock (fcntl.flock) on out/.lock, which holds the PID of
the run that has it. The kernel drops the lock when that process ends, by
any means (SIGKILL included), so there is nothing stale to clean up by
hand; a second run on the same --out is refused with one line naming the
PID. The lock file itself stays (removing it would let a run that opened
it just before lock a file no one else sees).

Leftovers: a checkpoint is written into a temporary sibling `.NAME.tmpPID`
first (mingpt_c.checkpoint.write_dir); a process killed while writing one
leaves it behind. The run that holds the lock removes those whose PID is
not alive.

--resume: the saved run_config.json wins. An option given again with the
saved value is fine; one that only says how to run (how long, where, how
much to show: RESUMABLE) takes the new value; any other one that
contradicts the saved configuration is an error naming the option. The
progress display always follows the command at hand.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from mingpt_c.errors import MinGPTError
from mingpt_c.files import TEMPORARY, write_atomic

LOCK_NAME = ".lock"
RUN_CONFIG = "run_config.json"

# Options a resumed run may change: the length of the run, the machine it
# runs on, what it shows, how it evaluates, the failure policy. Everything
# else is the run's configuration and stays as saved.
RESUMABLE = frozenset({
    "out", "max_iters", "epochs", "threads", "device", "dtype", "dist_timeout",
    "log_interval", "eval_interval", "eval_iters", "eval_limit", "eval_batch_size", "val_limit",
    "max_nan_steps",
})


class RunDirError(MinGPTError):
    """The run directory is locked, missing its run, or at odds with the options."""


# ------------------------------------------------------------------ lock


class DirectoryLock:
    """An exclusive flock on out/.lock, held until release() or the process ends."""

    def __init__(self, out: Path, flag: str = "--out"):
        import fcntl

        self.path = out / LOCK_NAME
        try:   # before any work: a run that cannot write its directory stops here
            out.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)   # no O_TRUNC: the holder's PID stays
        except OSError as e:
            raise RunDirError(f"{flag} {out}: cannot write there ({e.strerror or e}); "
                              f"choose a directory you can write") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirError(f"{out} is in use by another run (PID {holder}): wait for it to end, "
                              f"or choose another {flag}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # someone else's process
        return True
    return True


def remove_stale_temporaries(out: Path) -> list[str]:
    """Removes out/.NAME.tmpPID checkpoint temporaries whose writer is gone
    (call with the lock held: then a temporary of this very PID is stale
    too). Returns the names removed."""
    gone = []
    for p in sorted(out.iterdir()):
        m = TEMPORARY.match(p.name)
        if not m:
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or not _alive(pid):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            gone.append(p.name)
    return gone


def has_run(out: Path) -> bool:
    """A latest/ checkpoint (or the .latest.old a crash between the two
    renames of a save leaves) is in out."""
    return (out / "latest").exists() or (out / ".latest.old").is_dir()

# ------------------------------------------------------------------ --resume


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, str) and isinstance(b, str) and a != b:
        return os.path.realpath(a) == os.path.realpath(b)   # the same file, named another way
    return a == b


def _show(v) -> str:
    if isinstance(v, (list, tuple)):
        return " ".join(map(str, v)) or "(none)"
    return "(not set)" if v is None else str(v)


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def saved_config(out: Path) -> dict:
    path = out / RUN_CONFIG
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunDirError(f"--resume: {path} is missing") from None
    except (OSError, ValueError) as e:
        raise RunDirError(f"--resume: {path} is unreadable ({e})") from None


def resolve_resumed(requested, saved: dict, given: dict | None, out: Path):
    """The configuration of a resumed run: the saved one, with the given
    options that may change (RESUMABLE) on top. given maps each option that
    was given to the name the user typed (--lr, FILES); None means every
    field of requested was given (the Python API). A given option that
    contradicts the saved value raises RunDirError naming it."""
    cls = type(requested)
    fields = {f.name for f in dataclasses.fields(cls)}
    new = dataclasses.asdict(requested)
    given = {k: flag_name(k) for k in fields} if given is None else dict(given)
    merged = {k: saved.get(k, new[k]) for k in fields}   # a field newer than the run: its default
    for k, flag in given.items():
        if k not in fields:
            continue
        if k in RESUMABLE:
            merged[k] = new[k]
        elif k in saved and not _same(new[k], saved[k]):
            raise RunDirError(
                f"--resume: {flag} {_show(new[k])} contradicts the run in {out} ({_show(saved[k])} in its "
                f"{RUN_CONFIG}); a resumed run keeps its configuration: leave {flag} out, or start a "
                f"new run in another --out")
    merged["out"] = str(out)
    if "progress" in fields:   # what a run shows follows the command that runs it
        merged["progress"] = new["progress"]
    if "dtype" in merged and merged.get("device") == "cpu" and "dtype" not in given:
        merged["dtype"] = None   # a GPU run resumed on the CPU: its products' precision does not apply
    return cls(**merged)

# ------------------------------------------------------------------ log.jsonl


def cut_log(path: Path, it: int) -> int:
    """Drops the records of log.jsonl past iteration it (written after the
    checkpoint a run resumes from), so the resumed run logs each iteration
    once. Returns the number dropped."""
    if not path.exists():
        return 0
    keep, dropped = [], 0
    for line in path.read_text().splitlines(keepends=True):
        try:
            rec = json.loads(line)
        except ValueError:   # a line cut short by a crash
            dropped += 1
            continue
        if isinstance(rec, dict) and rec.get("iter", 0) > it:
            dropped += 1
        else:
            keep.append(line if line.endswith("\n") else line + "\n")
    if dropped:
        write_atomic(path, "".join(keep))
    return dropped
