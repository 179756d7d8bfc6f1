"""One trial: its curriculum trained seed after seed, each seed in its own MLflow run, reported at task ends.

Seeds: a trial trains the curriculum's seeds (the study's ``seeds``, else the base curriculum's) one
after the other; each seed's value is the objective's measure of its run, and the trial's value
their aggregate. At the end of every task the measure of the evaluations so far is reported to
Optuna at step ``position of the seed * number of tasks + task``, so the pruner compares trials at
the same seed and task. A trial stops as pruned when the pruner says so, or when it diverged: its
network's parameters or its measure are not finite. Any other exception fails the trial, and the
study goes on.

Interruptions: a trial checkpoints as the base curriculum's ``checkpoint`` says (``every`` so many
steps, ``at_task_end``), under :func:`trial_checkpoints`, and a Ctrl-C also writes one as it stops at
a rollout's start. A trial stopped by Ctrl-C, or whose worker died (killed, out of memory, a lost
machine: :class:`crl.study.storage.StaleTrialHandler`), is queued again (:func:`queue_again`), and the
copy continues the stopped trial's MLflow run: its finished seeds keep their values, the stopped
seed resumes in its own run from its latest checkpoint (the steps since the checkpoint are trained
again), and a seed without a checkpoint (none written yet, or on a disk the new worker does not
see) trains from its start in a new run. A trial's checkpoints are removed once it ends and no copy
will continue it (completed, pruned, failed, not retried). A worker taken for dead while alive (paused
past the grace period) stops its trial as soon as it sees it (:meth:`TrialRunner.check_owner`) and
leaves the run and the checkpoints to the copy.
"""

from __future__ import annotations

import contextlib
import math
import re
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

import optuna
import torch as th
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from optuna.exceptions import TrialPruned, UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState
from rich.progress import Progress

from crl.algorithms import ContinualAlgorithm
from crl.config.build import build_model, build_sequence
from crl.config.curriculum import Curriculum
from crl.continual import ContinualResult
from crl.continual.loop import ContinualPosition, evaluations_result
from crl.study.config import StudyConfig
from crl.study.interrupt import STOP
from crl.study.objective import aggregate, measure
from crl.study.runs import (
    FAILED,
    FINISHED,
    KILLED,
    RUNNING,
    TRIAL_TAG,
    create_trial_run,
    end_trial_run,
    log_trial_params,
    reopen_trial_run,
    seed_runs,
    trial_name,
)
from crl.study.schema import ObjectiveSpec
from crl.tracking.checkpoint import Checkpoint, latest_checkpoint, load_checkpoint
from crl.tracking.runs import quiet_downloads
from crl.train import (
    CHECKPOINT_TAG,
    OwnershipChecks,
    RunTakenOver,
    checkpoint_root,
    create_child_run,
    log_result,
    log_texts,
    run_child,
)
from crl.wrappers import TaskSequence

RUN_ATTR = "mlflow_run_id"
"""The trial's user attribute holding its MLflow run's id."""
WORKER_ATTR = "worker"
"""The trial's user attribute naming the process that runs it (``host:pid``)."""
SURPLUS_ATTR = "surplus"
"""Set on a trial started when the study already had its trials (workers that asked at the same moment)."""
ERROR_ATTR = "error"
RETRY_HISTORY = "retry_history"
"""A queued copy's system attribute (Optuna's): the numbers of the trials it repeats, the first first."""
INTERRUPTED_ATTR = "crl.interrupted"
"""A queued copy's system attribute: the numbers in its retry history whose trial a Ctrl-C interrupted."""
OWNER_CHECK_SECONDS = 5.0
"""At most this many seconds (or ``storage.heartbeat_interval``, if shorter) between two checks, before
metrics are logged, that a trial still holds its run; a check is one MLflow read."""


class SurplusTrial(Exception):
    """The study had all its trials when this one started; it is failed and not counted."""


def retried_numbers(trials: Iterable[FrozenTrial]) -> set[int]:
    """The numbers of failed trials that a later trial retries."""
    return {trial.system_attrs[RETRY_HISTORY][-1] for trial in trials if trial.system_attrs.get(RETRY_HISTORY)}


def queue_again(study: optuna.Study, trial: FrozenTrial, interrupted: bool) -> None:
    """Queue a copy of ``trial`` with its parameters, for the next free worker to train, continuing the
    trial's MLflow run (:func:`continued_run`).

    The copy's system attributes are those of Optuna's ``RetryHeartbeatStaleTrialCallback``
    (``failed_trial``, ``retry_history``), so :func:`retried_numbers` and Optuna's tools read it alike;
    an interrupted trial is also noted in :data:`INTERRUPTED_ATTR`, as ``max_retry`` limits the retries of
    dead workers' trials only (:func:`dead_worker_retries`).

    :param interrupted: ``trial`` stopped on Ctrl-C (else its worker died)
    """
    previous = trial.system_attrs.get(INTERRUPTED_ATTR, [])
    system_attrs = {
        "failed_trial": trial.number,
        **trial.system_attrs,
        RETRY_HISTORY: [*trial.system_attrs.get(RETRY_HISTORY, []), trial.number],
        INTERRUPTED_ATTR: [*previous, trial.number] if interrupted else list(previous),
    }
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=trial.user_attrs,
            system_attrs=system_attrs,
        )
    )


def dead_worker_retries(trial: FrozenTrial) -> int:
    """How many of the trials that ``trial`` repeats failed because their worker died (not on Ctrl-C)."""
    interrupted = set(trial.system_attrs.get(INTERRUPTED_ATTR, []))
    return sum(number not in interrupted for number in trial.system_attrs.get(RETRY_HISTORY, []))


def continued_run(trial: FrozenTrial) -> str | None:
    """The MLflow run that ``trial``, a queued copy, continues: the run of the trial it repeats (stopped by
    Ctrl-C, or its worker died); ``None`` for a new trial, or a copy of a trial that had no run yet."""
    if not trial.system_attrs.get(RETRY_HISTORY):
        return None
    run_id = trial.user_attrs.get(RUN_ATTR)
    return run_id if isinstance(run_id, str) else None


def study_checkpoints(config: StudyConfig) -> Path:
    """The study's checkpoints: a directory named after it in the base curriculum's ``checkpoint.directory``."""
    # The name is free text (quotes, slashes); the trial runs' ids below it keep studies apart anyway.
    return Path(config.curriculum.checkpoint.directory).resolve() / re.sub(r"[^\w.-]", "_", config.name)


def trial_checkpoints(config: StudyConfig, run_id: str) -> Path:
    """The root of a trial's checkpoints (its seed runs' are in ``<root>/<seed run id>``).

    :param run_id: the trial's MLflow run
    """
    return study_checkpoints(config) / run_id


def remove_checkpoints(client: MlflowClient, directory: Path, run_id: str) -> None:
    """Remove the checkpoints of the trial run ``run_id`` under the study's ``directory``, and those its seed
    runs name elsewhere (a ``checkpoint.directory`` changed between launches); then the study's directory if empty.
    """
    places = [directory / run_id]
    with contextlib.suppress(MlflowException):  # no run to name them: the study's directory only
        tagged = [run.data.tags.get(CHECKPOINT_TAG) for run in seed_runs(client, run_id)]
        places += [Path(tag) for tag in tagged if tag]
    for place in places:
        shutil.rmtree(place, ignore_errors=True)
    with contextlib.suppress(OSError):  # others' checkpoints are in it still
        directory.rmdir()


def counted(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that count against ``n_trials``: all but failed trials being retried and surplus trials."""
    retried = retried_numbers(trials)
    return [trial for trial in trials if trial.number not in retried and not trial.user_attrs.get(SURPLUS_ATTR)]


def parameters_finite(model: ContinualAlgorithm) -> bool:
    return all(bool(th.isfinite(parameter).all()) for parameter in model.policy.parameters())  # type: ignore[attr-defined]


class TaskEndReport:
    """At each task's end: prune a diverged trial, report the measure so far, ask the pruner.

    :param trial: the Optuna trial
    :param objective: the study's objective
    :param model: the seed's model (checked for non-finite parameters)
    :param client: the MLflow client
    :param seed_run_id: the seed's run (for a logged metric's value)
    :param trial_run_id: the trial's run, which gets the reported values as ``objective/intermediate``
    :param first_step: the report step of the seed's first task
    :param still_owner: raises :class:`~crl.train.RunTakenOver` when another trial continues the run
    """

    def __init__(
        self,
        trial: optuna.Trial,
        objective: ObjectiveSpec,
        model: ContinualAlgorithm,
        client: MlflowClient,
        seed_run_id: str,
        trial_run_id: str,
        first_step: int,
        still_owner: Callable[[], None] = lambda: None,
    ) -> None:
        self.trial = trial
        self.objective = objective
        self.model = model
        self.client = client
        self.seed_run_id = seed_run_id
        self.trial_run_id = trial_run_id
        self.first_step = first_step
        self.still_owner = still_owner
        self.result: ContinualResult | None = None
        """The evaluations so far."""

    def report_missed(self, position: ContinualPosition, sequence: TaskSequence, seed: int) -> None:
        """At a resume from a task's end checkpoint: the report of that task, if the stopped trial did not make it.

        The checkpoint is written before the task's report, so a stop between the two (a Ctrl-C at the
        task's end, a dead worker) leaves the report unmade, and the resumed seed starts at the next task.

        :param position: where the resumed seed starts (its checkpoint's)
        """
        if position.task == 0 or position.steps_done or position.task_started:
            return  # a mid-task checkpoint: the task's end, and its report, are still ahead
        step = self.first_step + position.task - 1
        running = self.trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if any(trial.number == self.trial.number and step in trial.intermediate_values for trial in running):
            return
        self(position.task - 1, evaluations_result(sequence, position.eval_steps, position.eval_columns, seed))

    def __call__(self, task: int, result: ContinualResult) -> None:
        STOP.check()
        self.still_owner()
        self.result = result
        if not parameters_finite(self.model):
            raise TrialPruned(f"diverged: non-finite network parameters after task {task}")
        value = measure(self.objective, result, self.client, self.seed_run_id)
        if value is None:  # the metric has not been logged yet
            return
        if not math.isfinite(value):
            raise TrialPruned(f"diverged: objective {value} after task {task}")
        step = self.first_step + task
        try:
            self.trial.report(value, step)
        except UpdateFinishedTrialError as error:  # failed by another worker since the check above (a pause)
            raise RunTakenOver(f"trial {self.trial.number} was failed by another worker: {error}") from error
        self.client.log_metric(self.trial_run_id, "objective/intermediate", value, step=step)
        if self.trial.should_prune():
            raise TrialPruned(f"pruned at step {step} (value {value:.4g})")


class Throttled:
    """Calls ``check`` at most once per ``seconds``: when called sooner after the last check, does nothing.

    The first call after a pause of the process always checks, since the pause counts toward ``seconds``.

    :param check: the check (e.g. one that raises)
    :param seconds: the least time between two checks
    :param clock: seconds of a monotonic clock
    """

    def __init__(self, check: Callable[[], None], seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.check = check
        self.seconds = seconds
        self.clock = clock
        self.last: float | None = None

    def __call__(self) -> None:
        now = self.clock()
        if self.last is not None and now - self.last < self.seconds:
            return
        self.last = now
        self.check()


class TrialRunner:
    """Optuna's objective function: draws a trial's parameters, trains its curriculum, returns its value.

    :param config: the study
    :param client: the MLflow client
    :param parent_id: the study's parent run
    :param worker: this process's name (``host:pid``), recorded on each trial
    :param progress: where each seed's training shows its progress
    """

    def __init__(
        self, config: StudyConfig, client: MlflowClient, parent_id: str, worker: str, progress: Progress
    ) -> None:
        self.config = config
        self.client = client
        self.parent_id = parent_id
        self.worker = worker
        self.progress = progress
        self.taken_over = False
        """Whether another worker failed the last trial while this one ran it (took this worker for dead):
        the trial stopped on :meth:`check_owner`, or ended just after its last check."""

    def __call__(self, trial: optuna.Trial) -> float:
        frozen = next(frozen for frozen in trial.study.get_trials(deepcopy=False) if frozen.number == trial.number)
        continued = self.continued(frozen)
        if self.is_surplus(trial):
            trial.set_user_attr(SURPLUS_ATTR, True)
            if continued is not None:  # nobody will continue it
                remove_checkpoints(self.client, study_checkpoints(self.config), continued)
            raise SurplusTrial(f"the study had its {self.config.n_trials} trials when trial {trial.number} started")
        try:
            # The run first: whatever fails after it (drawing, the trial's curriculum) has its error.txt.
            if continued is None:
                run_id = create_trial_run(self.client, self.config, self.parent_id, trial.number, self.worker)
            else:
                run_id = continued
                reopen_trial_run(self.client, run_id, trial.number, self.worker)
        except Exception as error:
            trial.set_user_attr(ERROR_ATTR, repr(error)[:1000])  # no run to hold the traceback
            raise
        trial.set_user_attr(RUN_ATTR, run_id)
        trial.set_user_attr(WORKER_ATTR, self.worker)
        state, status, interrupted, taken_over = TrialState.FAIL, FAILED, False, False
        try:
            if continued is not None:
                report_earlier(trial, frozen)
            curriculum = self.trial_curriculum(trial, run_id)
            value = self.train(trial, curriculum, run_id, continued is not None)
            state, status = TrialState.COMPLETE, FINISHED
            return value
        except TrialPruned:
            state, status = TrialState.PRUNED, KILLED
            raise
        except KeyboardInterrupt:
            status, interrupted = KILLED, True
            frozen = next(frozen for frozen in trial.study.get_trials(deepcopy=False) if frozen.number == trial.number)
            # Always queued again, whatever storage.max_retry (which is for dead workers): the next launch
            # continues it from its checkpoints. Unless it was taken for dead already, and queued then.
            if frozen.state == TrialState.RUNNING:
                queue_again(trial.study, frozen, interrupted=True)
            raise
        except RunTakenOver:
            taken_over = True
            raise
        except Exception as error:
            if self.owns_run(run_id, trial.number) and not self.failed_elsewhere(trial):
                trial.set_user_attr(ERROR_ATTR, repr(error)[:1000])
                log_texts(self.client, run_id, {"error.txt": traceback.format_exc()})
            raise
        finally:
            # Also taken for dead when failed after its last check: Optuna will refuse to record its end.
            self.taken_over = taken_over or self.failed_elsewhere(trial)
            if not self.taken_over:  # else the run and its checkpoints are the copy's, queued or started
                self.end_run(run_id, trial.number, state, status, keep_checkpoints=interrupted)

    @staticmethod
    def failed_elsewhere(trial: optuna.Trial) -> bool:
        """Whether another worker failed ``trial`` while this one ran it (it took this worker for dead)."""
        states = trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return all(running.number != trial.number for running in states)

    def owns_run(self, run_id: str, number: int) -> bool:
        """Whether trial ``number`` still holds its run ``run_id``.

        It does not once another worker took it for dead (no heartbeat for the grace period: a paused
        process, a database out of reach) and the copy queued for it continues the run: that copy's
        worker tags the run with its own trial number (:func:`~crl.study.runs.reopen_trial_run`).
        """
        return self._holder(run_id) == str(number)

    def _holder(self, run_id: str) -> str | None:
        """The number of the trial that holds the run ``run_id`` (its tag :data:`~crl.study.runs.TRIAL_TAG`)."""
        return self.client.get_run(run_id).data.tags.get(TRIAL_TAG)

    def check_owner(self, run_id: str, number: int) -> None:
        """Raise :class:`~crl.train.RunTakenOver` once trial ``number`` was taken for dead: its run is ended
        (by the worker that failed the trial, :class:`~crl.study.storage.StaleTrialHandler`) or continued by
        the trial's copy (:meth:`owns_run`).

        Checked at each task end, before each checkpoint and, at most every :data:`OWNER_CHECK_SECONDS`,
        before metrics are logged: a worker taken for dead stops there, before it logs steps that the copy
        trains again or writes over the copy's checkpoints.
        """
        run = self.client.get_run(run_id)
        holder = run.data.tags.get(TRIAL_TAG)
        if holder != str(number) or run.info.status != RUNNING:
            continued = f"is continued by trial {holder}" if holder != str(number) else f"was ended {run.info.status}"
            raise RunTakenOver(
                f"trial {number}'s run {run_id} {continued}: this worker was taken for dead "
                "(no heartbeat for storage.grace_period)"
            )

    def ownership_checks(self, run_id: str, number: int) -> OwnershipChecks:
        """The checks that trial ``number`` still holds its run ``run_id`` (:meth:`check_owner`)."""
        check = partial(self.check_owner, run_id, number)
        seconds = min(OWNER_CHECK_SECONDS, self.config.spec.storage.heartbeat_interval)
        return OwnershipChecks(before_saving=check, before_write=Throttled(check, seconds))

    def end_run(self, run_id: str, number: int, state: TrialState, status: str, keep_checkpoints: bool) -> None:
        """End trial ``number``'s run and, unless ``keep_checkpoints`` (a copy will continue them), its checkpoints.

        Nothing when the run is no longer the trial's (:meth:`owns_run`): the copy that continues it
        ends it, and uses its checkpoints.
        """
        if not self.owns_run(run_id, number):
            return
        end_trial_run(self.client, run_id, state.name, status)
        if not keep_checkpoints:  # no trial will continue it: its checkpoints would only take room
            remove_checkpoints(self.client, study_checkpoints(self.config), run_id)

    def continued(self, trial: FrozenTrial) -> str | None:
        """The run of the stopped trial that ``trial`` continues (:func:`continued_run`), if it still exists."""
        run_id = continued_run(trial)
        if run_id is None:
            return None
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return None
        return run_id if run.info.lifecycle_stage == "active" else None

    def trial_curriculum(self, trial: optuna.Trial, run_id: str) -> Curriculum:
        """Draw the trial's parameters, log them to its run with the curriculum they give (``config.yml``).

        A continued trial draws its stopped trial's parameters: the run gets the same params and file again.
        """
        parameters = self.config.space.suggest(trial)
        log_trial_params(self.client, run_id, parameters.params)
        curriculum = self.config.trial_curriculum(parameters)
        log_texts(self.client, run_id, {"config.yml": curriculum.to_yaml()})
        return curriculum

    def is_surplus(self, trial: optuna.Trial) -> bool:
        """Whether the trials numbered before this one already make the study's ``n_trials``.

        Trial numbers are given out atomically by the storage, so of two workers that started a
        trial at the same moment for the last place, exactly the later one is surplus.
        """
        # Over all trials: a retry is numbered after the failed trial it replaces.
        earlier = [frozen for frozen in counted(trial.study.get_trials(deepcopy=False)) if frozen.number < trial.number]
        return len(earlier) >= self.config.n_trials

    def train(self, trial: optuna.Trial, curriculum: Curriculum, run_id: str, continuing: bool = False) -> float:
        """Train every seed of ``curriculum`` into a run under ``run_id``; the aggregate of their measures.

        :param continuing: ``run_id`` is a stopped trial's run: its finished seeds are not trained
            again, its stopped seed continues from its latest checkpoint
        """
        sequence = build_sequence(curriculum, self.config.source)
        # Checkpoints as the base curriculum says, in the trial's own directory: a copy of the trial,
        # after a Ctrl-C or a dead worker, continues from them (crl.study.interrupt: a Ctrl-C writes one too).
        directory = str(trial_checkpoints(self.config, run_id))
        curriculum = curriculum.model_copy(
            update={"checkpoint": curriculum.checkpoint.model_copy(update={"directory": directory})}
        )
        earlier = latest_seed_runs(self.client, run_id) if continuing else {}
        return self._train_seeds(trial, curriculum, sequence, run_id, earlier)

    def _train_seeds(
        self, trial: optuna.Trial, curriculum: Curriculum, sequence: TaskSequence, run_id: str, earlier: dict[int, Run]
    ) -> float:
        objective = self.config.spec.objective
        # A continued trial's new seed runs are named as its earlier ones.
        name = trial_name(self.config, trial.number) if not earlier else self.client.get_run(run_id).info.run_name
        values = []
        for position, seed in enumerate(curriculum.seeds):
            value = self._finished_value(run_id, seed, earlier.get(seed))
            if value is None:
                value = self._train_seed(trial, curriculum, sequence, run_id, name, position, seed, earlier.get(seed))
            values.append(value)
        value = aggregate(objective, values)
        self.client.log_metric(run_id, "objective", value)
        return value

    def _train_seed(
        self,
        trial: optuna.Trial,
        curriculum: Curriculum,
        sequence: TaskSequence,
        run_id: str,
        name: str,
        position: int,
        seed: int,
        earlier: Run | None,
    ) -> float:
        """Train one seed, continuing its ``earlier`` run from its checkpoint if it has one; its measure.

        :param position: the seed's place in the trial's seeds (for the pruner's steps)
        :param earlier: the seed's run in the stopped trial that this one continues
        """
        objective = self.config.spec.objective
        resumed = self._checkpoint(curriculum, earlier)
        if earlier is not None and resumed is not None:
            seed_run, model = earlier.info.run_id, resumed.model
        else:  # from the start, in a new run: an earlier one (killed) keeps the history it has
            seed_run = create_child_run(self.client, curriculum, name, seed, run_id)
            model = build_model(curriculum, sequence, seed, self.config.source)
        ownership = self.ownership_checks(run_id, trial.number)
        first_step = position * len(sequence)
        report = TaskEndReport(
            trial, objective, model, self.client, seed_run, run_id, first_step, ownership.before_saving
        )
        try:
            if resumed is not None:
                report.report_missed(resumed.position, sequence, seed)
            # No plots per seed: many trials; crl.plot draws any run's on demand.
            result = run_child(
                curriculum, sequence, model, seed, self.client, run_id, name, self.progress,
                run_id=seed_run, on_task_end=report, plots=False, resumed=resumed, ownership=ownership,
            )  # fmt: skip
        except TrialPruned:
            self._stopped(seed_run, report)
            raise
        except RunTakenOver:
            raise
        except Exception as error:
            if parameters_finite(model):
                raise
            self._stopped(seed_run, report)
            raise TrialPruned(f"diverged: non-finite network parameters ({error!r})") from error
        finally:
            for task in list(self.progress.task_ids):
                self.progress.remove_task(task)
        return self._seed_value(run_id, seed, seed_run, result)

    def _checkpoint(self, curriculum: Curriculum, earlier: Run | None) -> Checkpoint | None:
        """The latest checkpoint of a seed's ``earlier`` run, loaded; ``None`` if there is none."""
        if earlier is None:
            return None
        run_id = earlier.info.run_id
        found = latest_checkpoint(checkpoint_root(self.client, run_id, curriculum), run_id)
        return None if found is None else load_checkpoint(found)

    def _seed_value(self, run_id: str, seed: int, seed_run: str, result: ContinualResult) -> float:
        """Log the measure of a seed's finished run to the trial's run as ``objective/seed_<seed>``; return it.

        :raises TrialPruned: the measure is not finite
        """
        value = measure(self.config.spec.objective, result, self.client, seed_run)
        if value is None:
            raise RuntimeError(f"metric {self.config.spec.objective.key!r} was never logged in run {seed_run}")
        self.client.log_metric(run_id, f"objective/seed_{seed}", value)
        if not math.isfinite(value):
            raise TrialPruned(f"diverged: objective {value} for seed {seed}")
        return value

    def _finished_value(self, run_id: str, seed: int, earlier: Run | None) -> float | None:
        """The value of a seed whose ``earlier`` run finished (not trained again); ``None`` if it has to be trained.

        :param run_id: the trial's run, which holds the seed's value once measured
        """
        if earlier is None or earlier.info.status != FINISHED:
            return None
        logged = self.client.get_run(run_id).data.metrics.get(f"objective/seed_{seed}")
        if logged is not None:
            return float(logged)
        # Interrupted between the seed's end and its measure: measured from the run's result.json.
        with tempfile.TemporaryDirectory() as directory, quiet_downloads():
            try:
                path = self.client.download_artifacts(earlier.info.run_id, "result.json", directory)
            except (MlflowException, OSError):
                return None
            result = ContinualResult.load(path)
        return self._seed_value(run_id, seed, earlier.info.run_id, result)

    def _stopped(self, seed_run: str, report: TaskEndReport) -> None:
        """End a seed's run stopped by pruning, with the evaluations it made."""
        if report.result is not None:
            log_result(self.client, seed_run, report.result, final=False)
        self.client.set_terminated(seed_run, KILLED)


def latest_seed_runs(client: MlflowClient, run_id: str) -> dict[int, Run]:
    """``{seed: its latest run}`` under the trial run ``run_id``."""
    latest: dict[int, Run] = {}
    for run in seed_runs(client, run_id):
        if "seed" in run.data.tags:
            latest.setdefault(int(run.data.tags["seed"]), run)
    return latest


def report_earlier(trial: optuna.Trial, frozen: FrozenTrial) -> None:
    """Report to ``trial`` the values the stopped trial it continues reported, so that the pruner
    sees its whole curve (the resumed seed reports its remaining tasks at their own steps).

    :param frozen: ``trial`` as stored, a queued copy (its ``failed_trial`` the stopped trial's number)
    """
    number = frozen.system_attrs.get("failed_trial")
    stopped = [earlier for earlier in trial.study.get_trials(deepcopy=False) if earlier.number == number]
    for earlier in stopped:
        for step, value in sorted(earlier.intermediate_values.items()):
            trial.report(value, step)
