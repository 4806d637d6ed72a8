"""SIGTERM (TPU preemption) as a flag the training loop polls at step boundaries.

`install()` can run first thing in a command, before the slow imports and compiles, so a
SIGTERM at any moment after that stops the run cleanly (exit 0) instead of killing it; the
loop's `StopFlag` takes over the handler and keeps a signal that already arrived.
No heavy imports here.
"""

from __future__ import annotations

import signal
import threading

_early = threading.Event()


def _handle_early(signum, frame):
    _early.set()


def install() -> None:
    """Record SIGTERM from now on (main thread only; a no-op elsewhere)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _handle_early)


def requested() -> bool:
    """Whether a SIGTERM arrived since `install()`."""
    return _early.is_set()


class StopFlag:
    """Set by SIGTERM while installed; with several processes the loop OR-s the flags across them."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def install(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self.requested = self._previous is _handle_early and _early.is_set()
            _early.clear()  # taken over: a later run in this process starts unflagged
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def uninstall(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
