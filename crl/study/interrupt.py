"""Ctrl-C in a study: stop at a consistent point, never inside a write to the storage or to MLflow.

A ``KeyboardInterrupt`` raised wherever Python happens to be can leave a database transaction open
(with SQLite, every later write then finds the database locked). The first Ctrl-C therefore only
asks: a running ``learn()`` stops at its next rollout start (:func:`crl.continual.loop.request_checkpoint`),
and otherwise the trial stops at its next task end, or the worker before its next trial. A second
Ctrl-C stops at once.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

from crl.continual.loop import request_checkpoint


class StopRequest:
    """Whether Ctrl-C was pressed; :meth:`check` raises ``KeyboardInterrupt`` at a consistent point."""

    def __init__(self) -> None:
        self.requested = False

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """The SIGINT handler."""
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        request_checkpoint()

    def check(self) -> None:
        """Stop here if Ctrl-C was pressed."""
        if self.requested:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Handle SIGINT inside the block."""
        self.requested = False
        previous = signal.signal(signal.SIGINT, self.handle)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


STOP = StopRequest()
"""This process's stop request (signals are per process)."""
