"""Files written whole or not at all.

What the package keeps on disk (checkpoints, tokenizers, run_config.json,
a cut log.jsonl, distillation targets) is written into a temporary sibling
`.NAME.tmpPID` first and renamed over NAME once complete, so that a
reader, a crash or a full disk never meets it half-written. A crash leaves
the temporary behind; in a run directory the next run removes those whose
process is gone (run.rundir.remove_stale_temporaries).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import BinaryIO, Callable

TEMPORARY = re.compile(r"^\..+\.tmp(\d+)$")   # a temporary's name; group 1: its writer's PID


def temporary(path: Path) -> Path:
    """The temporary sibling this process writes path into."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_atomic(path: str | os.PathLike, data: str | bytes | Callable[[BinaryIO], None]) -> None:
    """Writes path whole or not at all: data (text, written as UTF-8;
    bytes; or a function that writes into the open binary file) into
    temporary(path), then renamed over path. On an error the temporary is
    removed and path is left as it was."""
    path = Path(path)
    tmp = temporary(path)
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
