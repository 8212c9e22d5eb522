"""Progress of a training loop on stderr: a tqdm bar when stderr is a
terminal; otherwise (a log file, a pipe, a batch job) a plain line at a log
point at most every PLAIN_EVERY_S seconds, which reads well in a file."""
from __future__ import annotations

import sys
import time

PLAIN_EVERY_S = 10.0


class Progress:
    """update(it) every iteration; show(it, fields) at each log point;
    write(msg) for a line that must not break the bar."""

    def __init__(self, total: int, start: int, log, unit: str = "it"):
        self.total, self.log = total, log
        self.bar = None
        self.last_plain = -PLAIN_EVERY_S
        if sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=start, unit=unit, dynamic_ncols=True, leave=True)

    def write(self, msg: str) -> None:
        (self.bar.write if self.bar else self.log)(msg)

    def update(self) -> None:
        if self.bar:
            self.bar.update(1)

    def show(self, it: int, fields: dict) -> None:
        if self.bar:
            self.bar.set_postfix(fields)
            return
        now = time.monotonic()
        if now - self.last_plain >= PLAIN_EVERY_S:
            self.last_plain = now
            shown = ", ".join(f"{k} {v}" for k, v in fields.items())
            self.log(f"iter {it}/{self.total} ({100 * it / max(self.total, 1):.0f}%): {shown}")

    def close(self) -> None:
        if self.bar:
            self.bar.close()
            self.bar = None
