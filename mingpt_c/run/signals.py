"""Ctrl-C during training: the first SIGINT asks the loop to stop after the
current step (it then saves a checkpoint); a second one interrupts at once."""
from __future__ import annotations

import signal


class StopFlag:
    """First SIGINT: ask the loop to stop after the current step."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
        try:
            self._old = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread: leave signals alone
            self._old = None
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
