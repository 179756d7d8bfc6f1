"""The terminal view of a study: trials finished out of ``n_trials``, the best value, the running trials."""

from __future__ import annotations

import datetime
import time
from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console, Group, RenderableType
from rich.progress import Progress
from rich.table import Table

from crl.study.trial import ERROR_ATTR, WORKER_ATTR, counted
from crl.study.worker import TrialCounts

BEST_SHOWN = 10
"""Trials in the final table."""
READ_SECONDS = 2.0
"""How often the live view re-reads the study (from the display's refresh thread)."""


def best_trials(trials: Sequence[FrozenTrial], direction: optuna.study.StudyDirection) -> list[FrozenTrial]:
    """The complete trials, best first."""
    complete = [trial for trial in trials if trial.state == TrialState.COMPLETE]
    return sorted(complete, key=lambda trial: trial.value, reverse=direction == optuna.study.StudyDirection.MAXIMIZE)  # type: ignore[arg-type, return-value]


def _params(trial: FrozenTrial) -> str:
    return ", ".join(
        f"{path}={value:.4g}" if isinstance(value, float) else f"{path}={value}" for path, value in trial.params.items()
    )


class StudyDisplay:
    """A rich renderable of a study, refreshed by :meth:`update` (which reads the storage).

    :param study: the study
    :param n_trials: the finished trials it needs
    :param console: where a line is printed for each trial that finishes
    :param training: the training progress bars of this process's trial, shown below
    """

    def __init__(self, study: optuna.Study, n_trials: int, console: Console, training: Progress | None = None) -> None:
        self.study = study
        self.n_trials = n_trials
        self.console = console
        self.training = training
        self.trials: list[FrozenTrial] = []
        self.read_at = 0.0
        self.read()
        self.reported = {trial.number for trial in self.trials if trial.state.is_finished()}

    def read(self) -> None:
        """Read the study's trials."""
        self.trials = self.study.get_trials(deepcopy=False)
        self.read_at = time.monotonic()

    def update(self, *_: object) -> None:
        """Read the trials; print one line per trial finished since the last update (an Optuna callback too)."""
        self.read()
        for trial in counted(self.trials):
            if trial.state.is_finished() and trial.number not in self.reported:
                self.reported.add(trial.number)
                self.console.print(self.trial_line(trial), highlight=False)

    @staticmethod
    def trial_line(trial: FrozenTrial) -> str:
        if trial.state == TrialState.COMPLETE:
            outcome = f"value {trial.value:.4g}"
        elif trial.state == TrialState.FAIL:
            outcome = f"[red]failed[/red] {trial.user_attrs.get(ERROR_ATTR, '(worker stopped)')}"
        else:
            outcome = "pruned"
        return f"trial {trial.number} {outcome} | {_params(trial)}"

    @property
    def counts(self) -> TrialCounts:
        return TrialCounts.of(self.trials)

    def __rich__(self) -> RenderableType:
        if time.monotonic() - self.read_at > READ_SECONDS:  # e.g. trials started by other workers
            self.read()
        counts = self.counts
        header = (
            f"[bold]{self.study.study_name}[/bold]: {counts.finished}/{self.n_trials} trials finished "
            f"({counts.complete} complete, {counts.pruned} pruned, {counts.failed} failed), "
            f"{counts.running} running, {counts.waiting} queued"
        )
        best = best_trials(self.trials, self.study.direction)
        lines: list[RenderableType] = [header]
        if best:
            lines.append(f"best {best[0].value:.4g} (trial {best[0].number}: {_params(best[0])})")
        running = [trial for trial in self.trials if trial.state == TrialState.RUNNING]
        if running:
            table = Table("trial", "worker", "running for", "parameters", title="running trials", title_justify="left")
            now = datetime.datetime.now()
            for trial in running:
                elapsed = now - trial.datetime_start if trial.datetime_start else datetime.timedelta()
                table.add_row(
                    str(trial.number),
                    str(trial.user_attrs.get(WORKER_ATTR, "")),
                    str(elapsed).split(".")[0],
                    _params(trial),
                )
            lines.append(table)
        if self.training is not None and self.training.task_ids:
            lines.append(self.training)
        return Group(*lines)

    def summary(self) -> Table:
        """The best trials, best first."""
        table = Table("trial", "value", "parameters", title=f"{self.study.study_name}: best trials")
        for trial in best_trials(self.trials, self.study.direction)[:BEST_SHOWN]:
            table.add_row(str(trial.number), f"{trial.value:.4g}", _params(trial))
        return table
