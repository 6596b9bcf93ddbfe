"""Turn SIGINT/SIGTERM into a polite stop: the loop finishes its step, saves, and exits.

Further signals while that stop is under way are ignored, with a note on stderr: the one thing
that can still go wrong after Ctrl-C is a checkpoint torn by a second Ctrl-C (a KeyboardInterrupt
raised inside torch.save's writer surfaced as `unexpected pos`), and the step plus the checkpoint
take seconds. A user who must stop at once has SIGKILL, which the atomic checkpoint writes
survive (the previous checkpoint stays). Handlers are installed only in the main thread (Python
allows no other) and restored on exit. The context nests: the CLI holds one around the whole run,
so that a second signal is still ignored while the outputs are listed after the loop returned, and
the loop enters the same object again.
"""
from __future__ import annotations

import os
import signal
import threading
from types import FrameType


class StopRequest:
    """Context manager; `.requested` names the signal once one arrived (else None) and `.signum`
    holds its number (None for a stop requested from code), for the exit status 128 + signum."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: str | None = None
        self.signum: int | None = None
        self.ignored = 0
        self._old: dict[int, object] = {}
        self._depth = 0

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:
            self.ignored += 1
            # os.write, not print: the handler may run while the main thread is inside a print
            # (tqdm, a log line), and a buffered stream refuses a reentrant write.
            _note(f"\n{name} again: ignored, the run is already stopping: it saves its checkpoint, "
                  f"then exits (kill -9 {os.getpid()} aborts without saving)\n")
            return
        self.requested = name
        self.signum = int(signum)
        _note(f"\n{name}: stopping after this step; saving a checkpoint first\n")

    def request(self, reason: str) -> None:
        """Ask for a stop from code (tests, or a caller with its own stopping rule)."""
        self.requested = reason

    def __enter__(self) -> "StopRequest":
        self._depth += 1
        if self._depth == 1 and threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth > 0:
            return
        for s, h in self._old.items():
            if h is not None:  # None: the old handler was not set from Python; nothing to restore
                signal.signal(s, h)
        self._old.clear()


def _note(text: str) -> None:
    try:
        os.write(2, text.encode())
    except OSError:  # stderr closed: the stop still happens
        pass
