"""What the plots read from a run: metric histories on the sequence's step axis, task boundaries, results.

A run is read from MLflow (a child run, or a parent run whose child runs -- one per seed -- are read)
or from a local directory holding a ``result.json`` and optionally SB3's ``progress.csv``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from crl.config.errors import one_line
from crl.continual.results import ContinualResult
from crl.tracking.runs import quiet_downloads

PLASTICITY_PREFIX = "plasticity/"
TASK_METRIC = "task"
"""``crl.train`` logs the task's index at each task's first step under this name."""
RESULT_FILE = "result.json"
PROGRESS_FILE = "progress.csv"
INTERVENTIONS_PARAM = "interventions"
NO_INTERVENTION = "no intervention"
STEP_COLUMN = "time/total_timesteps"
RESULT_KEYS = ", ".join(field.name for field in dataclasses.fields(ContinualResult) if field.init)
"""The keys of a ``result.json`` (``ContinualResult.to_dict``), for error messages."""


class PlotError(ValueError):
    """A run or directory that cannot be plotted (unknown id, missing files, nothing to plot)."""


@dataclass(frozen=True)
class Curve:
    """One metric's history: ``values[k]`` measured at env step ``steps[k]``, steps increasing.

    :param steps: environment steps of the whole sequence
    :param values: the metric's values
    """

    steps: np.ndarray
    values: np.ndarray

    @classmethod
    def from_points(cls, points: Iterable[tuple[int, float]]) -> Curve:
        """The curve of ``(step, value)`` points; of several values at one step the last one counts."""
        by_step = dict(points)  # a resumed run may log a step twice: keep the latest
        steps = np.array(sorted(by_step), dtype=np.int64)
        return cls(steps, np.array([by_step[step] for step in steps], dtype=np.float64))


@dataclass(frozen=True)
class RunRecord:
    """Everything the plots need of one run (one seed).

    :param name: the run's name (or the directory's)
    :param group: the intervention set the run belongs to, with every parameter (runs of one group are
        seeds of one setting)
    :param short_group: ``group`` without the parameters (shown where it tells the groups apart)
    :param metrics: the ``plasticity/...`` metric histories
    :param result: the run's performance matrix, if it has one
    :param task_starts: global step at which each task starts
    :param task_ends: global step at which each task ends
    :param task_names: one name per task (the task's index as text when unknown)
    """

    name: str
    group: str
    short_group: str
    metrics: Mapping[str, Curve]
    result: ContinualResult | None
    task_starts: np.ndarray = field(repr=False)
    task_ends: np.ndarray = field(repr=False)
    task_names: tuple[str, ...]

    @classmethod
    def build(
        cls,
        name: str,
        group: tuple[str, str],
        metrics: Mapping[str, Curve],
        result: ContinualResult | None,
        task_curve: Curve | None = None,
    ) -> RunRecord:
        """A record whose task boundaries come from ``result`` or else from the ``task`` metric's history.

        Without a result the last task ends at the last step of any metric.

        :param group: ``(group, short_group)``
        """
        if result is not None:
            return cls(name, *group, metrics, result, result.task_starts, result.task_ends, result.task_names)
        if task_curve is None or task_curve.steps.size == 0:
            empty = np.zeros(0, dtype=np.int64)
            return cls(name, *group, metrics, None, empty, empty, ())
        last_step = max([int(task_curve.steps[-1]), *(int(curve.steps[-1]) for curve in metrics.values())])
        starts = task_curve.steps
        ends = np.append(starts[1:], max(last_step, int(starts[-1]) + 1))
        names = tuple(str(int(index)) for index in task_curve.values)
        return cls(name, *group, metrics, None, starts, ends, names)


def load_runs(source: str, client: MlflowClient | None = None) -> list[RunRecord]:
    """The runs behind ``source``: a local directory, or an MLflow run id (a parent run gives its children).

    :param source: a directory path or an MLflow run id
    :param client: the MLflow client (by default one for the current tracking URI); unused for directories
    :raises PlotError: if ``source`` is neither an existing directory nor a known run id
    """
    path = Path(source)
    if path.is_dir():
        return [load_directory(path)]
    return load_mlflow_runs(client if client is not None else MlflowClient(), source)


def load_directory(directory: Path) -> RunRecord:
    """A run written to disk: ``result.json`` (required) and SB3's ``progress.csv`` (optional).

    :raises PlotError: no ``result.json``, or one that is not a saved ``ContinualResult``
    """
    result_path = directory / RESULT_FILE
    if not result_path.is_file():
        raise PlotError(f"{directory}: no {RESULT_FILE} in this directory")
    result = load_result(result_path, str(result_path))
    progress = directory / PROGRESS_FILE
    metrics = read_progress_csv(progress, result.task_starts) if progress.is_file() else {}
    name = directory.resolve().name
    return RunRecord.build(name, (name, name), metrics, result)


def read_progress_csv(path: Path, task_starts: np.ndarray) -> dict[str, Curve]:
    """The ``plasticity/...`` columns of an SB3 ``progress.csv`` on the sequence's step axis.

    The continual loop restarts SB3's ``time/total_timesteps`` at every task, so a row whose step is not
    above the previous row's begins the next task; its global step is the task's start plus SB3's step.

    :param path: the CSV file
    :param task_starts: global step at which each task starts
    """
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    if rows and STEP_COLUMN not in rows[0]:
        raise PlotError(f"{path}: no {STEP_COLUMN!r} column")
    points: dict[str, list[tuple[int, float]]] = {}
    task, previous = 0, -1
    for row in rows:
        if not row[STEP_COLUMN]:
            continue
        step = int(float(row[STEP_COLUMN]))
        if step <= previous:
            task += 1
        if task >= len(task_starts):
            raise PlotError(f"{path}: the steps restart {task} times, more than the {len(task_starts)} tasks")
        previous = step
        for key, value in row.items():
            if key.startswith(PLASTICITY_PREFIX) and value:
                points.setdefault(key, []).append((int(task_starts[task]) + step, float(value)))
    return {key: Curve.from_points(values) for key, values in sorted(points.items())}


def load_mlflow_runs(client: MlflowClient, run_id: str) -> list[RunRecord]:
    """The run ``run_id``, or its child runs (ordered by name) if it has any.

    :raises PlotError: if the tracking store has no run ``run_id``
    """
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise PlotError(f"{run_id!r} is neither a directory nor a run id at {client.tracking_uri}") from None
    children = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.{MLFLOW_PARENT_RUN_ID} = '{run_id}'", max_results=10_000
    )
    leaves = sorted(children, key=_run_name) if children else [run]
    return [_read_mlflow_run(client, leaf, parent=run if children else None) for leaf in leaves]


def _run_name(run: Run) -> str:
    return run.data.tags.get(MLFLOW_RUN_NAME) or run.info.run_id


def _read_mlflow_run(client: MlflowClient, run: Run, parent: Run | None) -> RunRecord:
    run_id = run.info.run_id
    keys = sorted(key for key in run.data.metrics if key.startswith(PLASTICITY_PREFIX))
    metrics = {key: _history(client, run_id, key) for key in keys}
    task_curve = _history(client, run_id, TASK_METRIC) if TASK_METRIC in run.data.metrics else None
    params = run.data.params if _has_interventions(run.data.params) or parent is None else parent.data.params
    result = _download_result(client, run_id)
    return RunRecord.build(_run_name(run), intervention_label(params), metrics, result, task_curve)


def _history(client: MlflowClient, run_id: str, key: str) -> Curve:
    return Curve.from_points((point.step, point.value) for point in client.get_metric_history(run_id, key))


def _download_result(client: MlflowClient, run_id: str) -> ContinualResult | None:
    if RESULT_FILE not in {artifact.path for artifact in client.list_artifacts(run_id)}:
        return None
    with tempfile.TemporaryDirectory() as directory, quiet_downloads():
        return load_result(
            Path(client.download_artifacts(run_id, RESULT_FILE, directory)), f"run {run_id}'s {RESULT_FILE}"
        )


def load_result(path: Path, name: str) -> ContinualResult:
    """The :class:`ContinualResult` saved at ``path``.

    :param name: how the error names the file
    :raises PlotError: the file is not JSON, or not a whole result (a key missing, a value of the wrong shape)
    """
    try:
        return ContinualResult.load(path)
    except json.JSONDecodeError as error:
        raise PlotError(
            f"{name}: not JSON ({error.msg} at line {error.lineno}); expected a saved ContinualResult"
        ) from None
    except (TypeError, ValueError, KeyError) as error:
        # ContinualResult(**data) names a missing or unknown key in a TypeError; shapes and steps raise ValueError.
        raise PlotError(
            f"{name}: not a saved ContinualResult ({one_line(str(error))}); expected the keys {RESULT_KEYS}"
        ) from None


def _has_interventions(params: Mapping[str, str]) -> bool:
    return any(key == INTERVENTIONS_PARAM or key.startswith(f"{INTERVENTIONS_PARAM}.") for key in params)


def intervention_label(params: Mapping[str, str]) -> tuple[str, str]:
    """A run's intervention set from its flattened ``interventions`` params, with and without parameters.

    ``crl.train`` logs the resolved interventions as ``interventions.<i>.name`` and
    ``interventions.<i>.<parameter>``: e.g. ``("redo(every=1000, tau=0.1)", "redo")``.

    :param params: the run's params
    """
    entries: dict[int, dict[str, str]] = {}
    for key, value in params.items():
        parts = key.split(".", 2)
        if parts[0] == INTERVENTIONS_PARAM and len(parts) == 3 and parts[1].isdigit():
            entries.setdefault(int(parts[1]), {})[parts[2]] = value
    if not entries:
        return NO_INTERVENTION, NO_INTERVENTION
    labels, names = [], []
    for index in sorted(entries):
        entry = dict(entries[index])
        name = entry.pop("name", f"intervention {index}")
        options = ", ".join(f"{key}={value}" for key, value in sorted(entry.items()) if value not in ("None", ""))
        labels.append(f"{name}({options})" if options else name)
        names.append(name)
    return " + ".join(labels), " + ".join(names)
