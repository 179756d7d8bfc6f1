"""A worker: trains trials of a study until it has ``n_trials`` finished ones, however many workers share it.

Finished trials are the completed, pruned and failed ones, except failed trials that are being
retried (their worker died, or was interrupted) and surplus trials. A worker starts a trial while the
finished, running and queued trials are fewer than ``n_trials``, or when a retried trial is queued;
when the remaining trials are all running elsewhere it waits, failing the stale ones as it looks, so
that a trial whose worker died is retried by a worker still alive. Relaunching a study with the same
name therefore continues it: its finished trials count.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from crl.study.interrupt import STOP
from crl.study.trial import TrialRunner, counted

POLL_SECONDS = 1.0
"""How often a waiting worker looks at the study."""

TrialCallback = Callable[[optuna.Study, FrozenTrial], None]


def worker_name() -> str:
    """``host:pid``, recorded on each trial this process runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class TrialCounts:
    """The study's trials by what they mean for the work left.

    :param complete: finished with a value
    :param pruned: stopped by the pruner, or diverged
    :param failed: crashed (and not retried)
    :param running: being trained (or stale, not failed yet)
    :param waiting: queued (retries of trials whose worker died)
    """

    complete: int
    pruned: int
    failed: int
    running: int
    waiting: int

    @classmethod
    def of(cls, trials: Sequence[FrozenTrial]) -> TrialCounts:
        states = [trial.state for trial in counted(list(trials))]
        return cls(
            complete=states.count(TrialState.COMPLETE),
            pruned=states.count(TrialState.PRUNED),
            failed=states.count(TrialState.FAIL),
            running=states.count(TrialState.RUNNING),
            waiting=states.count(TrialState.WAITING),
        )

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.failed


def fail_stale_trials(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def run_worker(
    study: optuna.Study,
    runner: TrialRunner,
    n_trials: int,
    callbacks: Sequence[TrialCallback] = (),
    poll_seconds: float = POLL_SECONDS,
) -> None:
    """Train trials until the study has ``n_trials`` finished ones (or Ctrl-C, see :mod:`crl.study.interrupt`).

    :param callbacks: called after each trial this worker ran (e.g. a progress display)
    """
    while True:
        STOP.check()
        fail_stale_trials(study)
        counts = TrialCounts.of(study.get_trials(deepcopy=False))
        if counts.finished >= n_trials:
            return
        if counts.waiting == 0 and counts.finished + counts.running >= n_trials:
            time.sleep(poll_seconds)  # the trials left run elsewhere: wait for them, or for their retries
            continue
        # catch=(Exception,): a crashed trial is recorded as failed and the study goes on.
        try:
            study.optimize(runner, n_trials=1, catch=(Exception,), callbacks=list(callbacks))
        except Exception:
            # This worker was taken for dead (a pause longer than the grace period) and its trial failed
            # by another, which queued a copy: the trial stopped on RunTakenOver (or ended just after its
            # last check), Optuna refuses to record its end ("Cannot tell a FAIL trial"), and the worker
            # goes on with the next.
            if not runner.taken_over:
                raise
            runner.taken_over = False
