"""Ctrl-C and SIGTERM during training: the first one asks the loop to stop
after the current step (the run then saves latest/ and exits with 128 +
the signal's number: 130, 143); a second one interrupts at once."""
from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopFlag:
    """First SIGINT or SIGTERM: ask the loop to stop after the current step
    (requested, signum). A second: KeyboardInterrupt (SIGINT) or
    SystemExit(143) (SIGTERM) at once."""

    def __init__(self):
        self.requested = False
        self.signum = 0
        self._old = {}

    def __enter__(self):
        def handler(signum, frame):
            if self.requested:
                if signum == signal.SIGINT:
                    raise KeyboardInterrupt
                raise SystemExit(128 + signum)
            self.requested, self.signum = True, signum
        for sig in STOP_SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self._old = {}
