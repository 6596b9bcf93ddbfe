"""Turn SIGINT/SIGTERM into a polite stop: the loop finishes its step, saves, and exits.

A second signal of the same run raises KeyboardInterrupt at once, for a user who really means it.
Handlers are installed only in the main thread (Python allows no other) and restored on exit.
"""
from __future__ import annotations

import signal
import threading
from types import FrameType


class StopRequest:
    """Context manager; `.requested` names the signal once one arrived (else None)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: str | None = None
        self._old: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:
            raise KeyboardInterrupt(f"second {name}: stopping without a checkpoint")
        self.requested = name

    def request(self, reason: str) -> None:
        """Ask for a stop from code (tests, or a caller with its own stopping rule)."""
        self.requested = reason

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            if h is not None:  # None: the old handler was not set from Python; nothing to restore
                signal.signal(s, h)
        self._old.clear()
