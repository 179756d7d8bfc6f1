"""``python -m crl.train FILE``: train through a curriculum, one MLflow child run per seed.

Everything that can be wrong with the curriculum is checked before the first MLflow run is created:
the file is validated, the task sequence and the first seed's model are built, the checkpoint
directory is written to and MLflow opens the tracking store. A problem prints one line and exits with
code 2, leaving no run behind. Then a parent run is created for the launch and a child run per seed;
SB3's logger writes into the child run with ``step`` = environment steps of the whole sequence; each
evaluation (a column of the performance matrix) is logged as it is made, so a seed that fails keeps
its history; the continual metrics, the resolved ``config.yml``, the command and the final model are
logged at the end of each seed.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch as th
from mlflow import MlflowClient
from mlflow.entities import Metric, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger

from crl.algorithms import ContinualAlgorithm
from crl.config.build import build_model, build_sequence
from crl.config.curriculum import (
    Curriculum,
    apply_overrides,
    check_task_names,
    load_curriculum,
    read_yaml,
    validate_curriculum,
)
from crl.config.errors import ConfigError, one_line, print_error
from crl.continual import (
    ContinualResult,
    average_performance,
    backward_transfer,
    forgetting,
    learn_continual,
    performance_after_training,
    performance_maintenance,
)
from crl.continual.loop import (
    EVALUATION_PREFIX,
    ContinualPosition,
    TaskEndHook,
    check_schedules,
    request_checkpoint,
    task_metric,
)
from crl.plotting import PlotError, write_run_plots
from crl.process import ProcessSettings, add_keep_freed_memory_option, leave_process_group, release_freed_memory
from crl.tracking.checkpoint import Checkpoint, latest_checkpoint, load_checkpoint, save_checkpoint
from crl.tracking.mlflow_writer import MLflowOutputFormat
from crl.tracking.runs import check_experiment, create_run, flatten, quiet_downloads
from crl.wrappers import TaskSequence

CONFIG_ERROR_EXIT = 2
FAILED_EXIT = 1
INTERRUPTED_EXIT = 130
CHECKPOINT_TAG = "checkpoint_dir"
"""The child run's tag naming the directory of its checkpoints."""
PLOTS_DIRECTORY = Path("plots")
"""Where a launch writes its parent run's plots, one folder per parent run id."""
COMMAND = ("python", "-m", "crl.train")
"""How a launch is recorded and a resume suggested (``crl-train`` is the same entry point)."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="crl-train", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("curriculum", type=Path, help="the curriculum YAML file")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, help="run this one seed (instead of the curriculum's seeds)")
    seeds.add_argument("--seeds", type=str, help="comma-separated seeds, e.g. 0,1,2")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a key"
    )
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, then the file's)")
    parser.add_argument(
        "--resume", metavar="RUN_ID", help="continue a launch (its parent run id) or one seed (its child run id)"
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        help="seeds trained at once, each in its own process (default: the number of seeds, at most the cores)",
    )
    parser.add_argument(
        "--torch-threads",
        type=positive_int,
        default=1,
        help="torch threads per seed process (default 1: small RL batches gain little from more, and lose "
        "badly when the cores are shared)",
    )
    add_keep_freed_memory_option(parser)
    return parser.parse_args(argv)


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def resolve(args: argparse.Namespace) -> Curriculum:
    """The curriculum with the command line's overrides (``--set``, ``--seed(s)``, ``--tracking-uri``).

    The tracking URI (``--tracking-uri``, else ``MLFLOW_TRACKING_URI``) is taken as it is, not read as
    YAML as ``--set`` values are: `` #`` would start a comment and cut the URI short.
    """
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seeds=[{args.seed}]")
    if args.seeds is not None:
        overrides.append(f"seeds=[{args.seeds}]")
    data = apply_overrides(read_yaml(args.curriculum), overrides)
    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    tracking = data.get("tracking")
    if tracking_uri and (tracking is None or isinstance(tracking, dict)):  # another value is validation's to report
        data["tracking"] = {**(tracking or {}), "tracking_uri": tracking_uri}
    return validate_curriculum(data, source=str(args.curriculum))


class RunTakenOver(Exception):
    """Raised by a hook when another process continues the run (a study trial's copy, after this
    worker was taken for dead): training stops, and the run and its checkpoints are left as they are."""


@dataclass(frozen=True)
class OwnershipChecks:
    """Checks of a process that may lose its run to another (a study trial's copy, once the worker is
    taken for dead); each raises :class:`RunTakenOver` when the run is no longer this process's.

    :param before_saving: called before each checkpoint is written, and before a finished seed logs its
        model and result and removes its checkpoints
    :param before_write: called before each batch of metrics is logged (often: it may skip checks to stay cheap)
    """

    before_saving: Callable[[], None]
    before_write: Callable[[], None]


class TrainingProgress(BaseCallback):
    """Shows task i/n, steps, steps/s and the last evaluation; points the MLflow writer at global steps.

    The loop hands each evaluation to :meth:`show_evaluation` as it is made: SB3's logger, which also
    records it, forgets it at its next dump.

    :param progress: the rich progress display
    :param sequence: the tasks (for their budgets and names)
    :param writer: the MLflow output format whose step offset follows the current task
    :param seed: the seed, for the display
    """

    def __init__(self, progress: Progress, sequence: TaskSequence, writer: MLflowOutputFormat, seed: int) -> None:
        super().__init__()
        self.progress = progress
        self.sequence = sequence
        self.writer = writer
        self.seed = seed
        self.starts = np.concatenate(([0], np.cumsum(sequence.budgets)))
        self.last_evaluation = "-"
        self.started = time.perf_counter()
        self.bar = progress.add_task(f"seed {seed}", total=int(self.starts[-1]), info="")

    @property
    def task_start(self) -> int:
        assert isinstance(self.model, ContinualAlgorithm) and self.model.current_task is not None
        return int(self.starts[self.model.current_task])

    def _on_training_start(self) -> None:
        self.writer.step_offset = self.task_start
        # The task boundary: the task's index from its first step on.
        self.writer.log({"task": float(self.model.current_task)}, self.task_start)  # type: ignore[attr-defined]

    def _on_step(self) -> bool:
        if self.n_calls % 100 == 0:
            self._refresh()
        return True

    def show_evaluation(self, column: np.ndarray) -> None:
        """Show the average over the tasks of an evaluation just made.

        :param column: the evaluation's performance, one value per task
        """
        self.last_evaluation = f"{float(np.mean(column)):.3g}"
        # SB3 sets the model at the first learn(); a task's last evaluation comes after learn() returned.
        if getattr(self, "model", None) is not None:
            self._refresh()

    def _refresh(self) -> None:
        task = self.model.current_task  # type: ignore[attr-defined]
        steps = self.task_start + self.model.num_timesteps
        speed = steps / max(time.perf_counter() - self.started, 1e-9)
        self.progress.update(
            self.bar,
            completed=steps,
            info=f"{speed:,.0f} steps/s | task {task + 1}/{len(self.sequence)} {self.sequence.task_names[task]} | "
            f"last eval {self.last_evaluation}",
        )


def train_seed(
    curriculum: Curriculum,
    sequence: TaskSequence,
    model: ContinualAlgorithm,
    seed: int,
    client: MlflowClient,
    run_id: str,
    progress: Progress,
    root: Path,
    resumed: Checkpoint | None = None,
    resuming: bool = False,
    on_task_end: TaskEndHook | None = None,
    ownership: OwnershipChecks | None = None,
) -> ContinualResult:
    """Train one seed through the sequence, logging into the child run ``run_id``.

    :param root: the checkpoints' root directory (the run's are in ``root / run_id``)
    :param resumed: continue from this checkpoint (its model is ``model``)
    :param resuming: the run exists already: log only the steps it does not have yet
    :param on_task_end: passed to :func:`crl.learn_continual` (e.g. a study's pruning)
    :param ownership: checks that stop training with :class:`RunTakenOver` once another process continues the run
    """
    # The loop records the evaluations in SB3's logger too; they are logged here, at their exact steps.
    before_write = None if ownership is None else ownership.before_write
    writer = MLflowOutputFormat(run_id, client, exclude_prefixes=(EVALUATION_PREFIX,), before_write=before_write)
    if resuming:
        writer.skip_logged()
    model.set_logger(Logger(folder=None, output_formats=[writer]))  # type: ignore[attr-defined]
    if resumed is not None:
        resumed.restore_logger_state()
    callback = TrainingProgress(progress, sequence, writer, seed)
    client.set_tag(run_id, CHECKPOINT_TAG, str(root / run_id))

    def checkpoint(position: ContinualPosition) -> None:
        if ownership is not None:
            ownership.before_saving()
        save_checkpoint(root, model, position, run_id, seed)

    def evaluated(step: int, column: np.ndarray) -> None:
        # Logged at once, so that a seed that fails keeps its evaluations; the writer skips the steps a
        # resumed run already holds.
        writer.log(evaluation_metrics(sequence.task_names, column), step)
        callback.show_evaluation(column)

    result = learn_continual(
        model,  # type: ignore[arg-type]
        sequence,
        eval_every=curriculum.evaluation.every,
        n_eval_episodes=curriculum.evaluation.n_episodes,
        deterministic_eval=curriculum.evaluation.deterministic,
        seed=seed,
        callback=callback,
        position=None if resumed is None else resumed.position,
        checkpoint=checkpoint,
        checkpoint_every=curriculum.checkpoint.every,
        checkpoint_at_task_end=curriculum.checkpoint.at_task_end,
        on_task_end=on_task_end,
        on_evaluation=evaluated,
        **curriculum.continual.model_dump(),
    )
    progress.update(callback.bar, completed=int(callback.starts[-1]))
    log_result(client, run_id, result)
    return result


def evaluation_metrics(task_names: Sequence[str], column: np.ndarray) -> dict[str, float]:
    """The MLflow metrics of one evaluation: each task's performance and their average.

    :param task_names: the sequence's tasks (the index keeps repeated tasks apart)
    :param column: the evaluation's performance, one value per task
    """
    metrics = {
        task_metric(index, name): float(value)
        for index, (name, value) in enumerate(zip(task_names, column, strict=True))
    }
    metrics[f"{EVALUATION_PREFIX}average"] = float(np.mean(column))
    return metrics


def log_result(client: MlflowClient, run_id: str, result: ContinualResult, final: bool = True) -> None:
    """The evaluations the run does not hold yet at their steps, and the continual metrics at the last step.

    :mod:`crl.train` logs every evaluation as it is made; evaluations at or before the last step of
    the run's ``continual/average`` are not logged again.

    :param final: the run went through the whole sequence (else only the evaluations so far are logged)
    """
    history = client.get_metric_history(run_id, f"{EVALUATION_PREFIX}average")
    logged_through = max((point.step for point in history), default=-1)
    metrics = []
    for column, step in enumerate(result.eval_steps):
        if step > logged_through:
            values = evaluation_metrics(result.task_names, result.performance[:, column])
            metrics += [Metric(key, value, 0, int(step)) for key, value in values.items()]
    end = int(result.eval_steps[-1])
    if final:
        metrics.append(Metric("final/average_performance", average_performance(result), 0, end))
        metrics.append(Metric("final/forgetting", float(np.mean(forgetting(result))), 0, end))
        # Relative performance and sample efficiency need single-task reference runs, which a launch has not.
        if result.n_tasks > 1:
            metrics.append(Metric("final/backward_transfer", float(np.mean(backward_transfer(result))), 0, end))
        maintenance = float(np.mean(performance_maintenance(result)))
        metrics.append(Metric("final/performance_maintenance", maintenance, 0, end))
    for start in range(0, len(metrics), 1000):  # MLflow's batch limit for metrics
        client.log_batch(run_id, metrics=metrics[start : start + 1000], synchronous=True)


def summary_table(seeds: Sequence[int], results: Sequence[ContinualResult]) -> Table:
    """Per seed: the continual metrics, and each task's performance right after its training (plasticity)."""
    table = Table(title="continual metrics")
    for column in ("seed", "average performance", "forgetting", "each task after its training"):
        table.add_column(column, justify="right")
    for seed, result in zip(seeds, results, strict=True):
        learned = " ".join(f"{value:.3g}" for value in performance_after_training(result))
        table.add_row(str(seed), f"{average_performance(result):.4g}", f"{np.mean(forgetting(result)):.4g}", learned)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=True)
    source = str(args.curriculum)
    try:
        curriculum = resolve(args)
        sequence = build_sequence(curriculum, source)
        check_task_names(curriculum.sequence, sequence.task_names, source)  # names a preset or env id gives
        first_model = build_model(curriculum, sequence, curriculum.seeds[0], source)
        try:
            check_schedules(first_model, sequence, whole_training=True)
        except ValueError as error:
            raise ConfigError(f"{source}: {error}") from None
        check_writable(Path(curriculum.checkpoint.directory), f"{source}: key 'checkpoint.directory'")
        client = tracking_client(curriculum, _tracking_uri_origin(args, source), f"{source}: key 'tracking.experiment'")
        parent_id: str | None = None
        children: dict[int, str] = {}
        launch_seeds = list(curriculum.seeds)
        if args.resume is not None:
            parent_id, children, launch_seeds = resumed_runs(client, args.resume, curriculum)
            for seed, child_id in children.items():
                check_writable(
                    checkpoint_root(client, child_id, curriculum), f"--resume {args.resume}: seed {seed}'s checkpoints"
                )
        # Resuming one child run continues that seed only; the launch's other seeds are left as they are.
        seeds = list(children) if args.resume is not None and args.resume != parent_id else curriculum.seeds
    except ConfigError as error:
        print_error(console, error)
        return CONFIG_ERROR_EXIT
    name = curriculum.tracking.run_name or args.curriculum.stem
    arguments = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join([*COMMAND, *arguments])
    previous_status = None
    if parent_id is None:
        parent_id = create_run(
            client,
            curriculum.tracking.experiment,
            name,
            tags={**run_tags(curriculum), "curriculum": source},
            params=flatten(curriculum.model_dump()),
        )
        log_texts(client, parent_id, {"config.yml": curriculum.to_yaml(), "command.txt": command + "\n"})
    else:
        previous_status = client.get_run(parent_id).info.status
        client.update_run(parent_id, status=RunStatus.to_string(RunStatus.RUNNING))
    status = RunStatus.to_string(RunStatus.FAILED)
    pending = [
        seed for seed in seeds if seed not in children or client.get_run(children[seed]).info.status != "FINISHED"
    ]
    workers = min(args.workers or os.cpu_count() or 1, len(pending))
    settings = ProcessSettings.from_args(args)
    previous_handler, previous_threads = signal.getsignal(signal.SIGINT), th.get_num_threads()
    try:
        if workers > 1:
            # The runs exist before any worker starts: an interrupted launch resumes them all by the parent's id.
            for seed in pending:
                if seed not in children:  # a resumed seed keeps its run (and its checkpoints)
                    children[seed] = create_child_run(client, curriculum, name, seed, parent_id)
            launch = ParallelLaunch(curriculum, source, parent_id, name, workers, console, settings)
            results = launch.run({seed: children[seed] for seed in pending})
        else:
            settings.apply()
            signal.signal(signal.SIGINT, _checkpoint_and_stop)
            results = {}
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            with Progress(*columns, TextColumn("{task.fields[info]}"), console=console) as progress:
                for seed in pending:
                    model = first_model if seed == curriculum.seeds[0] else None
                    run_id = children.get(seed)
                    results[seed] = run_child(
                        curriculum, sequence, model, seed, client, parent_id, name, progress, run_id
                    )
        console.print(summary_table(list(results), list(results.values())))
        if len(results) < len(pending):
            failed = [seed for seed in pending if seed not in results]
            resume = shlex.join([*COMMAND, *_without_resume(arguments), "--resume", parent_id])
            message = f"seed(s) {failed} failed; once the cause is fixed, continue them from their last checkpoint:"
            console.print(f"{message}\n  {resume}", soft_wrap=True, highlight=False, markup=False)
            return FAILED_EXIT
        plots = log_plots(client, parent_id, PLOTS_DIRECTORY / parent_id)
        console.print(f"{len(plots)} plots in {PLOTS_DIRECTORY / parent_id} (also logged to the parent run)")
        status = launch_status(client, parent_id, [*launch_seeds, *seeds], previous_status, console)
    except KeyboardInterrupt:
        status = RunStatus.to_string(RunStatus.KILLED)
        resume = shlex.join([*COMMAND, *_without_resume(arguments), "--resume", parent_id])
        message = f"interrupted; the last checkpoint is saved. Resume with:\n  {resume}"
        # unwrapped and not read as markup: the command, brackets and all, is copied as is
        console.print(message, soft_wrap=True, highlight=False, markup=False)
        return INTERRUPTED_EXIT
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        th.set_num_threads(previous_threads)
        client.set_terminated(parent_id, status)
    console.print(f"MLflow parent run {parent_id} at {curriculum.tracking.tracking_uri}")
    return 0


def launch_status(
    client: MlflowClient, parent_id: str, seeds: Sequence[int], previous: str | None, console: Console
) -> str:
    """The parent run's status once the seeds trained now have finished: ``FINISHED`` only when every
    seed of the launch has a finished child run (``--resume CHILD_ID`` trains one seed only).

    Otherwise the launch is unfinished: ``FAILED`` if it was (a seed failed), else ``KILLED``, and a
    line says which seeds remain.

    :param seeds: the launch's seeds (its ``config.yml``'s, and any trained now)
    :param previous: the parent's status before this resume (``None`` for a new launch)
    """
    unfinished = unfinished_seeds(client, parent_id, seeds)
    if not unfinished:
        return RunStatus.to_string(RunStatus.FINISHED)
    failed = RunStatus.to_string(RunStatus.FAILED)
    status = failed if previous == failed else RunStatus.to_string(RunStatus.KILLED)
    listed = ", ".join(str(seed) for seed in unfinished)
    message = (
        f"seed(s) {listed} of the launch have not finished (parent run {status}): resume {parent_id} to train them"
    )
    console.print(message, soft_wrap=True, highlight=False, markup=False)
    return status


def unfinished_seeds(client: MlflowClient, parent_id: str, seeds: Sequence[int]) -> list[int]:
    """The ``seeds`` without a finished child run under the parent run ``parent_id``."""
    experiment_id = client.get_run(parent_id).info.experiment_id
    children = client.search_runs([experiment_id], f"tags.{MLFLOW_PARENT_RUN_ID} = '{parent_id}'", max_results=10_000)
    finished = RunStatus.to_string(RunStatus.FINISHED)
    done = {
        int(child.data.tags["seed"])
        for child in children
        if child.info.status == finished and "seed" in child.data.tags
    }
    return sorted(set(seeds) - done)


def check_writable(directory: Path, where: str) -> None:
    """Check that checkpoints can be written under ``directory``, before any training.

    The directories created for the check are removed again (the first checkpoint creates them), so a
    configuration error found later leaves nothing behind.

    :param where: what names the directory in the error (e.g. the curriculum's key)
    :raises ConfigError: naming ``where``, the directory and the reason
    """
    missing = [path for path in (directory, *directory.parents) if not path.exists()]
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ConfigError(
            f"{where} = {str(directory)!r}: cannot write checkpoints there ({reason}); give a writable directory"
        ) from None
    finally:
        for path in missing:  # deepest first
            with contextlib.suppress(OSError):
                path.rmdir()


def _tracking_uri_origin(args: argparse.Namespace, source: str) -> str:
    """Where the tracking URI comes from, to name it in an error."""
    key = "key 'tracking.tracking_uri'"
    if args.tracking_uri:
        return f"{key} (--tracking-uri)"
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return f"{key} (MLFLOW_TRACKING_URI)"
    return f"{source}: {key}"


def tracking_client(
    curriculum: Curriculum, where: str, experiment_where: str = "key 'tracking.experiment'"
) -> MlflowClient:
    """An MLflow client of the curriculum's tracking URI, whose store MLflow could open and whose
    experiment can take runs.

    :param where: what names the URI in the error
    :param experiment_where: what names the experiment in the error
    :raises ConfigError: MLflow refuses the URI (unknown scheme, the retired file store, ...), or the
        experiment is deleted
    """
    uri = curriculum.tracking.tracking_uri
    try:
        client = MlflowClient(tracking_uri=uri)
        # MLflow opens the tracking store at the first request: a URI it cannot use fails here.
        check_experiment(client, curriculum.tracking.experiment, experiment_where)
    except MlflowException as error:
        reason = one_line(error.message).split(". ")[0].strip()
        raise ConfigError(
            f"{where} = {uri!r}: MLflow cannot use it ({reason}); use a database URI such as "
            f"sqlite:///mlflow.db or a tracking server's http(s)://HOST:PORT"
        ) from None
    return client


def log_plots(client: MlflowClient, run_id: str, out_dir: Path) -> list[Path]:
    """Write the run's plots under ``out_dir`` and log them as its ``plots/`` artifacts.

    A run with nothing to plot (e.g. a curriculum that logs no metric) gets none: plots are a
    by-product, and their absence must not fail a finished training run.
    """
    try:
        return write_run_plots(client, run_id, out_dir)
    except PlotError:
        return []


def _checkpoint_and_stop(signum: int, frame: FrameType | None) -> None:
    """First Ctrl-C: checkpoint at the next consistent point and stop; a second one stops at once."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if not request_checkpoint():
        raise KeyboardInterrupt


def _without_resume(argv: Sequence[str]) -> list[str]:
    arguments = list(argv)
    if "--resume" in arguments:
        at = arguments.index("--resume")
        del arguments[at : at + 2]
    return [argument for argument in arguments if not argument.startswith("--resume=")]


def log_texts(client: MlflowClient, run_id: str, texts: dict[str, str]) -> None:
    """Log each ``{file name: text}`` as an artifact of the run."""
    with tempfile.TemporaryDirectory() as directory:
        for file_name, text in texts.items():
            (Path(directory) / file_name).write_text(text)
            client.log_artifact(run_id, str(Path(directory) / file_name))


def resumed_runs(client: MlflowClient, run_id: str, curriculum: Curriculum) -> tuple[str, dict[int, str], list[int]]:
    """The parent run, ``{seed: child run id}`` to continue, given a parent's or a child's id, and the
    launch's seeds (those of its ``config.yml``).

    :raises ConfigError: no such run, a run without ``config.yml``, or a ``config.yml`` that differs
        from the curriculum given now (seeds and ``tracking`` aside), naming the first differing key
    """
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"--resume {run_id}: no such run at {curriculum.tracking.tracking_uri}") from None
    parent_id = run.data.tags.get(MLFLOW_PARENT_RUN_ID, run_id)
    with tempfile.TemporaryDirectory() as directory, quiet_downloads():
        try:
            path = client.download_artifacts(parent_id, "config.yml", directory)
        except (MlflowException, OSError):
            raise ConfigError(
                f"--resume {run_id}: run {parent_id} has no config.yml artifact, so it is not a launch of crl.train; "
                f"give the parent or child run id that crl.train printed"
            ) from None
        saved = load_curriculum(path)
    # `seeds` may change on resume; `tracking` says where the run is stored, and the same store can be
    # reached through another URI (a relative path from another working directory, a server).
    difference = first_difference(
        saved.model_dump(exclude=RESUME_FREE_KEYS), curriculum.model_dump(exclude=RESUME_FREE_KEYS)
    )
    if difference is not None:
        key, was, now = difference
        raise ConfigError(
            f"--resume {run_id}: the curriculum differs from the run's config.yml at key {key!r}: {now!r} now, "
            f"{was!r} in the run; give the same curriculum and --set overrides"
        )
    if parent_id != run_id:
        return parent_id, {int(run.data.tags["seed"]): run_id}, list(saved.seeds)
    children = client.search_runs([run.info.experiment_id], f"tags.{MLFLOW_PARENT_RUN_ID} = '{parent_id}'")
    return parent_id, {int(child.data.tags["seed"]): child.info.run_id for child in children}, list(saved.seeds)


RESUME_FREE_KEYS = {"seeds", "tracking"}
"""Curriculum keys a resume may change: the seeds to train, and where the runs are tracked."""
_ABSENT = "(absent)"


def first_difference(saved: Any, given: Any, key: str = "") -> tuple[str, Any, Any] | None:
    """The first key (``a.b.0.c``, as ``--set`` names it) whose value differs, with both values; ``None`` if equal.

    :param saved: a curriculum's ``model_dump()`` (or a value inside it)
    :param given: another one
    :param key: the path of ``saved`` and ``given`` in the curriculum
    """
    if isinstance(saved, Mapping) and isinstance(given, Mapping):
        names = [*saved, *(name for name in given if name not in saved)]
        pairs: list[tuple[str, Any, Any]] = [
            (str(name), saved.get(name, _ABSENT), given.get(name, _ABSENT)) for name in names
        ]
    elif isinstance(saved, list) and isinstance(given, list) and len(saved) == len(given):
        pairs = [(str(index), item, other) for index, (item, other) in enumerate(zip(saved, given, strict=True))]
    else:
        return None if saved == given else (key or "(top level)", saved, given)
    for name, value, other in pairs:
        found = first_difference(value, other, f"{key}.{name}" if key else name)
        if found is not None:
            return found
    return None


def run_child(
    curriculum: Curriculum,
    sequence: TaskSequence,
    model: ContinualAlgorithm | None,
    seed: int,
    client: MlflowClient,
    parent_id: str,
    name: str,
    progress: Progress,
    run_id: str | None = None,
    on_task_end: TaskEndHook | None = None,
    plots: bool = True,
    resumed: Checkpoint | None = None,
    ownership: OwnershipChecks | None = None,
) -> ContinualResult:
    """One seed in its own child run (terminated as finished, failed or killed; left as it is when a hook
    raises :class:`RunTakenOver`).

    :param model: the seed's model, or ``None`` to build it
    :param run_id: continue this child run from its latest checkpoint (from the start if it has none)
    :param resumed: the child run's checkpoint, already loaded (e.g. to hand its model to ``on_task_end``)
    :param on_task_end: passed to :func:`crl.learn_continual` (e.g. a study's pruning)
    :param plots: write the run's plots and log them as artifacts
    :param ownership: passed to :func:`train_seed`; its ``before_saving`` is also called before the finished
        seed logs its model and result and removes its checkpoints
    """
    # A process that keeps freed memory would otherwise also keep the buffers of the runs it finished
    release_freed_memory()
    resuming = run_id is not None
    if run_id is None:
        run_id = create_child_run(client, curriculum, name, seed, parent_id)
    else:
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
    status: str | None = RunStatus.to_string(RunStatus.FAILED)
    root = checkpoint_root(client, run_id, curriculum)
    try:
        if resumed is None:
            found = latest_checkpoint(root, run_id) if resuming else None
            resumed = load_checkpoint(found) if found is not None else None
        if resumed is not None:
            model = resumed.model
        elif model is None:
            model = build_model(curriculum, sequence, seed)
        result = train_seed(
            curriculum, sequence, model, seed, client, run_id, progress, root, resumed, resuming, on_task_end, ownership
        )  # fmt: skip
        if ownership is not None:
            ownership.before_saving()
        with tempfile.TemporaryDirectory() as directory:
            model.save(Path(directory) / "model.zip")  # type: ignore[attr-defined]
            result.save(Path(directory) / "result.json")
            client.log_artifact(run_id, str(Path(directory) / "model.zip"))
            client.log_artifact(run_id, str(Path(directory) / "result.json"))
            if plots:
                log_plots(client, run_id, Path(directory) / "plots")
        status = RunStatus.to_string(RunStatus.FINISHED)
        if not curriculum.checkpoint.keep_after_finish:
            shutil.rmtree(root / run_id, ignore_errors=True)  # the final model is logged; a buffer can be gigabytes
        return result
    except KeyboardInterrupt:
        status = RunStatus.to_string(RunStatus.KILLED)
        raise
    except RunTakenOver:
        status = None  # the process that continues the run ends it
        raise
    finally:
        if status is not None:
            client.set_terminated(run_id, status)


def checkpoint_root(client: MlflowClient, run_id: str, curriculum: Curriculum) -> Path:
    """The root of the run's checkpoints: the one its tag names, so that a resume from another working
    directory finds them; for a run that has none yet, the curriculum's ``checkpoint.directory``."""
    tagged = client.get_run(run_id).data.tags.get(CHECKPOINT_TAG)
    return Path(tagged).parent if tagged else Path(curriculum.checkpoint.directory).resolve()


def run_tags(curriculum: Curriculum) -> dict[str, str]:
    """Tags to group and filter runs by in the MLflow UI (e.g. ``tags.interventions = 'layer_norm'``)."""
    names = [spec if isinstance(spec, str) else spec["name"] for spec in curriculum.interventions]
    return {"algorithm": curriculum.algorithm, "interventions": ",".join(names) or "none"}


def create_child_run(client: MlflowClient, curriculum: Curriculum, name: str, seed: int, parent_id: str) -> str:
    """The child run of one seed, under the launch's parent run, with the launch's parameters; returns its id."""
    return create_run(
        client,
        curriculum.tracking.experiment,
        f"{name}-seed{seed}",
        tags={**run_tags(curriculum), "seed": str(seed)},
        params={**flatten(curriculum.model_dump()), "seed": str(seed)},
        parent_run_id=parent_id,
    )


class ParallelLaunch:
    """Trains seeds in up to ``workers`` ``spawn``ed processes at a time, one process per seed.

    Each worker builds its own sequence and model and writes into the child run it is given (the
    parent process creates the runs). Workers live in their own process group, so a Ctrl-C at the
    terminal reaches only the parent, which forwards it once to every worker: each checkpoints and
    stops as in a sequential launch, and seeds not started yet are not started.

    :param curriculum: the resolved curriculum
    :param source: the curriculum's file, for error messages
    :param parent_id: the launch's parent run
    :param name: the launch's name (child runs are ``<name>-seed<seed>``)
    :param workers: the number of processes
    :param console: where each finished or failed seed is reported
    :param settings: what each worker process sets up (torch threads, glibc's allocator)
    """

    def __init__(
        self,
        curriculum: Curriculum,
        source: str,
        parent_id: str,
        name: str,
        workers: int,
        console: Console,
        settings: ProcessSettings | None = None,
    ) -> None:
        self.curriculum = curriculum
        self.source = source
        self.parent_id = parent_id
        self.name = name
        self.workers = workers
        self.settings = settings or ProcessSettings()
        self.console = console
        self.context = multiprocessing.get_context("spawn")
        self.stop = self.context.Event()

    def run(self, runs: dict[int, str]) -> dict[int, ContinualResult]:
        """Train each ``{seed: child run id}``; return the results of the seeds that finished.

        A failed seed is reported, its run marked failed, and the other seeds go on; so does a seed
        whose process died (killed, out of memory): each seed has a pool of its own, since a pool
        whose process dies fails every seed it holds.

        :raises KeyboardInterrupt: after a Ctrl-C, once every worker has checkpointed and stopped
        """
        client = MlflowClient(tracking_uri=self.curriculum.tracking.tracking_uri)
        results: dict[int, ContinualResult] = {}
        waiting = list(runs.items())
        running: dict[Future[ContinualResult], tuple[int, ProcessPoolExecutor]] = {}
        interrupted = False
        previous_handler = signal.signal(signal.SIGINT, self._forward_interrupt)
        try:
            while waiting or running:
                while waiting and len(running) < self.workers and not (interrupted or self.stop.is_set()):
                    seed, run_id = waiting.pop(0)
                    running.update(self._start(seed, run_id))
                if not running:
                    break
                done, _ = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in done:
                    seed, executor = running.pop(future)
                    executor.shutdown()
                    interrupted |= self._collect(future, seed, results)
                    if seed not in results:
                        stopped = RunStatus.KILLED if interrupted else RunStatus.FAILED
                        _terminate_if_running(client, runs[seed], RunStatus.to_string(stopped))
        finally:
            signal.signal(signal.SIGINT, previous_handler)
            for _, executor in running.values():
                executor.shutdown(cancel_futures=True)
        for _, run_id in waiting:  # never started after a Ctrl-C
            _terminate_if_running(client, run_id, RunStatus.to_string(RunStatus.KILLED))
        if interrupted or self.stop.is_set():
            raise KeyboardInterrupt
        return {seed: results[seed] for seed in runs if seed in results}

    def _start(self, seed: int, run_id: str) -> dict[Future[ContinualResult], tuple[int, ProcessPoolExecutor]]:
        """One seed in a new single-process pool."""
        # The worker starts (on submit) with SIGINT ignored, so that a Ctrl-C while it imports is not
        # fatal; the seed then installs the checkpointing handler.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            executor = ProcessPoolExecutor(
                1, mp_context=self.context, initializer=_start_worker, initargs=(self.stop, self.settings)
            )
            future = executor.submit(
                _train_in_worker, self.curriculum, self.source, seed, self.parent_id, self.name, run_id
            )
        finally:
            signal.signal(signal.SIGINT, self._forward_interrupt)
        return {future: (seed, executor)}

    def _collect(self, future: Future[ContinualResult], seed: int, results: dict[int, ContinualResult]) -> bool:
        """Report a finished seed and keep its result; return whether it stopped on a Ctrl-C."""
        try:
            results[seed] = future.result()
        except KeyboardInterrupt:
            return True
        except BrokenProcessPool:
            self.console.print(
                f"[red]seed {seed} failed:[/red] its process died (killed, or out of memory?)", highlight=False
            )
        except Exception as error:  # a failed seed must not stop the others
            self.console.print(f"[red]seed {seed} failed:[/red] {error!r}", highlight=False)
        else:
            self.console.print(f"seed {seed} finished ({average_performance(results[seed]):.4g} average performance)")
        return False

    def _forward_interrupt(self, signum: int, frame: FrameType | None) -> None:
        self.stop.set()
        for process in multiprocessing.active_children():
            os.kill(process.pid, signal.SIGINT)  # type: ignore[arg-type]


def _terminate_if_running(client: MlflowClient, run_id: str, status: str) -> None:
    """End a run that its worker could not end (it died, or never started the seed)."""
    if client.get_run(run_id).info.status == RunStatus.to_string(RunStatus.RUNNING):
        client.set_terminated(run_id, status)


_STOP: Event | None = None
"""In a worker: set by the parent after a Ctrl-C, so that the worker starts no further seed."""


def _start_worker(stop: Event, settings: ProcessSettings) -> None:
    global _STOP
    _STOP = stop
    leave_process_group()
    settings.apply()


def _train_in_worker(
    curriculum: Curriculum, source: str, seed: int, parent_id: str, name: str, run_id: str
) -> ContinualResult:
    """One seed in a worker process, into the existing child run ``run_id``."""
    if _STOP is not None and _STOP.is_set():
        raise KeyboardInterrupt
    signal.signal(signal.SIGINT, _checkpoint_and_stop)
    sequence = build_sequence(curriculum, source)
    client = MlflowClient(tracking_uri=curriculum.tracking.tracking_uri)
    with Progress(disable=True) as progress:
        return run_child(curriculum, sequence, None, seed, client, parent_id, name, progress, run_id)


if __name__ == "__main__":
    sys.exit(main())
