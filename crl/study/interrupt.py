"""Ctrl-C in a study: stop at a consistent point, never inside a write to the storage or to MLflow.

A ``KeyboardInterrupt`` raised wherever Python happens to be can leave a database transaction open
(with SQLite, every later write then finds the database locked). The first Ctrl-C therefore only
asks: a running ``learn()`` stops at its next rollout start (:func:`crl.continual.loop.request_checkpoint`),
and otherwise the trial stops at its next task end, or the worker before its next trial. A second
Ctrl-C stops at once.

With ``--workers K`` the workers are processes out of the terminal's process group
(:func:`crl.process.leave_process_group`): their parent passes every SIGINT on (:meth:`StopRequest.forwarded`),
so a Ctrl-C in the terminal and a SIGINT sent to the parent alone (``kill -INT``, a scheduler) stop
them alike, and each gets it once.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator, Sequence
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
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
    def installed(self, forwarded: Event | None = None) -> Iterator[None]:
        """Handle SIGINT inside the block.

        :param forwarded: in a worker process, set by its parent when it passes a SIGINT on: one that
            came before this handler, while the process still ignored SIGINT, is taken here
        """
        self.requested = False
        previous = signal.signal(signal.SIGINT, self.handle)
        try:
            if forwarded is not None and forwarded.is_set():
                self.handle(signal.SIGINT, None)
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    @contextlib.contextmanager
    def forwarded(self, workers: Sequence[BaseProcess], forwarded: Event) -> Iterator[None]:
        """In the parent of worker processes: pass every SIGINT inside the block on to the workers.

        Each worker handles it as its own Ctrl-C (the first stops it at a consistent point, a second at
        once); the parent only notes it (:attr:`requested`) and waits for them.

        :param forwarded: set before the workers are signalled, for those that do not handle SIGINT yet
        """
        self.requested = False

        def forward(signum: int, frame: FrameType | None) -> None:
            self.requested = True
            forwarded.set()
            for process in workers:
                # Not an ended worker (exitcode reaps it): its pid may be another process's by now.
                if process.pid is not None and process.exitcode is None:
                    os.kill(process.pid, signal.SIGINT)

        previous = signal.signal(signal.SIGINT, forward)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


STOP = StopRequest()
"""This process's stop request (signals are per process)."""
