"""``python -m crl.study FILE``: an Optuna study over a curriculum, trials tracked in MLflow.

Everything that can be wrong with the study file is checked before the study or any MLflow run
exists: the file, its base curriculum, every corner of the search space as a curriculum (and its
sequence, when it differs from the base's), the sampler and pruner options, the storage URL, the
tracking URI, ``--best`` and the checkpoints' directory, and the base curriculum's sequence and
model are built. A problem prints one line and exits with code 2. Then the study is created in its storage (or joined,
with the same name: relaunching continues it), the study's MLflow parent run is found or created,
and ``--workers`` processes train trials until the study has ``n_trials`` finished ones. Workers on
other machines join by running the same command with the same ``--storage``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Sequence
from multiprocessing.synchronize import Event
from pathlib import Path

import optuna
import torch as th
from mlflow import MlflowClient
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn

from crl.config.build import build_model, build_sequence
from crl.config.curriculum import check_task_names
from crl.config.errors import ConfigError, print_error
from crl.continual.loop import check_schedules
from crl.process import ProcessSettings, add_keep_freed_memory_option, leave_process_group
from crl.study.best import write_best
from crl.study.config import StudyConfig, load_study
from crl.study.interrupt import STOP
from crl.study.progress import StudyDisplay
from crl.study.runs import FINISHED, KILLED, set_shared_tag, study_parent_run, tracking_client
from crl.study.storage import StaleTrialHandler, open_storage, open_study
from crl.study.trial import ERROR_ATTR, TrialRunner, study_checkpoints
from crl.study.worker import POLL_SECONDS, TrialCounts, run_worker, worker_name
from crl.train import CONFIG_ERROR_EXIT, FAILED_EXIT, INTERRUPTED_EXIT, check_writable, positive_int

REFRESH_PER_SECOND = 2


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="crl-study", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("study", type=Path, help="the study YAML file")
    parser.add_argument("--storage", help="Optuna storage URL (default: the file's, else optuna.db beside mlflow.db)")
    parser.add_argument("--n-trials", type=positive_int, help="finished trials the study needs (default: the file's)")
    parser.add_argument("--workers", type=positive_int, default=1, help="trials trained at once, in processes")
    parser.add_argument("--study-name", help="the study's name (default: the file's, else its stem)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, then the base's)")
    parser.add_argument("--best", type=Path, help="where the best configuration goes (default: <study name>-best.yaml)")
    parser.add_argument(
        "--torch-threads", type=positive_int, default=1, help="torch threads per worker process (default 1)"
    )
    add_keep_freed_memory_option(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=True)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the display reports each trial, MLflow keeps tracebacks
    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    try:
        config = load_study(args.study, args.n_trials, args.study_name, args.storage, tracking_uri)
        best = args.best or Path(f"{config.name}-best.yaml")
        _check_best(best, config.source)
        sequence = build_sequence(config.curriculum, config.source)
        check_task_names(config.curriculum.sequence, sequence.task_names, config.source)
        model = build_model(config.curriculum, sequence, config.curriculum.seeds[0], config.source)
        try:
            check_schedules(model, sequence, whole_training=True)
        except ValueError as error:
            raise ConfigError(f"{config.source}: the base's {error}") from None
        # Where a Ctrl-C checkpoints a trial: found unwritable then, the trial would fail instead of stopping.
        check_writable(study_checkpoints(config), f"{config.source}: the base's key 'checkpoint.directory'")
        client = tracking_client(config)
        handler = StaleTrialHandler(client, config.spec.storage.max_retry, study_checkpoints(config))
        study = open_study(config, open_storage(config, handler))
    except ConfigError as error:
        print_error(console, error)
        return CONFIG_ERROR_EXIT
    texts = {"study.yml": args.study.read_text(), "base.yml": config.curriculum.to_yaml()}
    parent_id = study_parent_run(client, config, texts)
    status, code, threads = KILLED, INTERRUPTED_EXIT, th.get_num_threads()
    all_failed = 0
    display = StudyDisplay(study, config.n_trials, console)
    settings = ProcessSettings.from_args(args)
    try:
        if args.workers == 1:
            code = _run_here(config, study, client, parent_id, display, console, settings)
        else:
            code = _run_processes(config, parent_id, args.workers, display, console, settings)
        # The parent run's status and the exit code from the trials, not from a stop request: one that
        # came as the last trials ended stopped none.
        counts = TrialCounts.of(study.get_trials(deepcopy=False))
        if counts.finished >= config.n_trials:
            status = FINISHED
            code = 0 if code == INTERRUPTED_EXIT else code
        if code == 0 and counts.failed == counts.finished > 0:
            code = FAILED_EXIT  # every trial crashed: nothing was learnt about the search space
            all_failed = counts.failed
    except KeyboardInterrupt:  # a second Ctrl-C after the trials stopped
        code = INTERRUPTED_EXIT
    finally:
        th.set_num_threads(threads)
        client.set_terminated(parent_id, status)
    if code == INTERRUPTED_EXIT:
        console.print(
            f"interrupted; the interrupted trials are queued again, to continue from their checkpoints. "
            f"Continue with the same command "
            f"(study {config.name!r} in {config.storage_url}).",
            highlight=False,
            soft_wrap=True,
        )
    display.update()
    console.print(display.summary())
    _report_best(config, study, client, parent_id, best, console)
    console.print(
        f"MLflow parent run {parent_id} at {config.tracking_uri}; Optuna study {config.name!r} at {config.storage_url}"
    )
    if all_failed:
        console.print(
            f"[red]all {all_failed} finished trials failed; each trial's traceback is its MLflow run's error.txt "
            f"(and its error the Optuna trial's user attribute {ERROR_ATTR!r})[/red]"
        )
    return code


def _check_best(path: Path, source: str) -> None:
    """``--best`` must be a file that can be written, or be created (it is written after the study).

    :raises ConfigError: a directory, or a path through a file
    """
    if path.is_dir():
        raise ConfigError(
            f"{source}: --best {str(path)!r} is a directory; give the file to write (e.g. {path / 'best.yaml'})"
        )
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{source}: --best {str(path)!r}: {str(parent)!r} is not a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(f"{source}: --best {str(path)!r}: directory {str(parent)!r} is not writable")
            return


def _columns() -> tuple[ProgressColumn, ...]:
    return (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"))  # fmt: skip


def _report_best(
    config: StudyConfig, study: optuna.Study, client: MlflowClient, parent_id: str, path: Path, console: Console
) -> None:
    """Write the best configuration, log it to the parent run with the best value and trial."""
    best = write_best(config, study, path)
    if best is None:
        console.print("no trial has completed yet: no best configuration")
        return
    client.log_artifact(parent_id, str(path), artifact_path=None)
    set_shared_tag(client, parent_id, "best_trial", str(best.number))  # every worker reports at its end
    client.log_metric(parent_id, "best_value", float(best.value), step=best.number)  # type: ignore[arg-type]
    console.print(f"best trial {best.number} ({best.value:.4g}) in {path}; train it: python -m crl.train {path}")


def _run_here(
    config: StudyConfig,
    study: optuna.Study,
    client: MlflowClient,
    parent_id: str,
    display: StudyDisplay,
    console: Console,
    settings: ProcessSettings,
) -> int:
    """Train trials in this process, showing the study and the current trial's training.

    :return: 0, or :data:`INTERRUPTED_EXIT` after Ctrl-C
    """
    settings.apply()
    display.training = Progress(*_columns(), console=console)
    runner = TrialRunner(config, client, parent_id, worker_name(), display.training)
    live = Live(console=console, get_renderable=display.__rich__, refresh_per_second=REFRESH_PER_SECOND)
    try:
        with live, STOP.installed():
            run_worker(study, runner, config.n_trials, callbacks=[display.update])
    except KeyboardInterrupt:
        return INTERRUPTED_EXIT
    return 0


def _run_processes(
    config: StudyConfig,
    parent_id: str,
    workers: int,
    display: StudyDisplay,
    console: Console,
    settings: ProcessSettings,
) -> int:
    """Train trials in ``workers`` spawned processes; show the study until they end.

    A SIGINT, from the terminal or sent to this process alone, is passed on to the workers
    (:meth:`~crl.study.interrupt.StopRequest.forwarded`), which stop as on Ctrl-C.

    :return: 0 when all ended well, :data:`INTERRUPTED_EXIT` after a SIGINT, :data:`FAILED_EXIT` when
        a worker did not end well
    """
    context = multiprocessing.get_context("spawn")
    forwarded = context.Event()
    arguments = (config, parent_id, settings, forwarded)
    processes = [context.Process(target=_worker_process, args=arguments) for _ in range(workers)]
    # Started with SIGINT ignored, which they keep until they handle it: a Ctrl-C while they import is
    # no KeyboardInterrupt in the middle of an import (the parent's handler sets `forwarded` for them).
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for process in processes:
            process.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    live = Live(console=console, get_renderable=display.__rich__, refresh_per_second=REFRESH_PER_SECOND)
    with STOP.forwarded(processes, forwarded):  # also while joining: a second SIGINT stops the workers at once
        try:
            with live:
                while any(process.is_alive() for process in processes):
                    display.update()
                    time.sleep(POLL_SECONDS)
        finally:
            for process in processes:  # each worker got the SIGINT too: it stops, its trial queued again
                process.join()
    interrupted = STOP.requested
    ended_well = (0, INTERRUPTED_EXIT) if interrupted else (0,)
    failed = [index for index, process in enumerate(processes) if process.exitcode not in ended_well]
    for index in failed:
        console.print(f"[red]worker {index} stopped with exit code {processes[index].exitcode}[/red]")
    if failed:
        return FAILED_EXIT
    return INTERRUPTED_EXIT if interrupted else 0


def _worker_process(config: StudyConfig, parent_id: str, settings: ProcessSettings, forwarded: Event) -> None:
    """One worker of a launch, in its own process.

    :param forwarded: set by the parent when it passes a SIGINT on
    """
    leave_process_group()
    settings.apply()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    client = MlflowClient(tracking_uri=config.tracking_uri)
    handler = StaleTrialHandler(client, config.spec.storage.max_retry, study_checkpoints(config))
    study = open_study(config, open_storage(config, handler))
    try:
        with Progress(disable=True) as progress, STOP.installed(forwarded):
            run_worker(study, TrialRunner(config, client, parent_id, worker_name(), progress), config.n_trials)
    except KeyboardInterrupt:
        sys.exit(INTERRUPTED_EXIT)
