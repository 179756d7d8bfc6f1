"""MLflow runs of a launch: a parent run per launch, a child run per seed, params and provenance tags.

Runs are created through an explicit :class:`mlflow.MlflowClient` (no active-run stack), so a child run
can be written from any process given its id.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import stable_baselines3
from mlflow import MlflowClient
from mlflow.entities import Experiment, LifecycleStage, Param
from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

import crl
from crl.config.errors import ConfigError

MAX_PARAM_LENGTH = 6000
"""MLflow's limit on a param value's length (longer values are cut)."""


@contextlib.contextmanager
def quiet_downloads() -> Iterator[None]:
    """Inside: MLflow's artifact downloads draw no progress bar (one per download, noise for a small file)."""
    variable = MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name
    before = os.environ.get(variable)
    os.environ[variable] = "false"
    try:
        yield
    finally:
        if before is None:
            del os.environ[variable]
        else:
            os.environ[variable] = before


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}, "c": [{"d": 2}]}`` -> ``{"a.b": "1", "c.0.d": "2"}`` (MLflow params are strings)."""
    flat: dict[str, str] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, list) and any(isinstance(item, Mapping) for item in value):
            flat.update(flatten({str(index): item for index, item in enumerate(value)}, f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_LENGTH]
    return flat


def git_commit(directory: Path | None = None) -> str:
    """The commit of the repository crl runs from (``"unknown"`` outside a git checkout)."""
    directory = directory or Path(crl.__file__).resolve().parent
    try:
        output = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return output.stdout.strip()


def provenance_tags() -> dict[str, str]:
    """The code a run used: git commit, crl's and SB3's versions."""
    return {
        "git_commit": git_commit(),
        "crl_version": crl.__version__,
        "sb3_version": stable_baselines3.__version__,
    }


def check_experiment(client: MlflowClient, experiment: str, where: str) -> Experiment | None:
    """The experiment named ``experiment``, if it exists; it must not be deleted.

    Deleting an experiment (in the UI, or ``mlflow experiments delete``) only marks it deleted: its
    name stays taken until ``mlflow gc`` removes it, and MLflow refuses new runs in it.

    :param where: what names the experiment in the error (e.g. the curriculum's key)
    :raises ConfigError: a deleted experiment, naming ``where``, the name and how to restore it
    """
    found = client.get_experiment_by_name(experiment)
    if found is not None and found.lifecycle_stage == LifecycleStage.DELETED:
        uri, number = client.tracking_uri, found.experiment_id
        restore = f"MLFLOW_TRACKING_URI={shlex.quote(uri)} mlflow experiments restore --experiment-id {number}"
        remove = shlex.join(["mlflow", "gc", "--backend-store-uri", uri, "--experiment-ids", number])
        raise ConfigError(
            f"{where} = {experiment!r}: MLflow's experiment {number} of that name is deleted; "
            f"restore it ({restore}), remove it for good ({remove}) or give another name"
        )
    return found


def create_run(
    client: MlflowClient,
    experiment: str,
    name: str,
    tags: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
) -> str:
    """Create a run in ``experiment`` (created if needed) and return its id.

    :param parent_run_id: makes it a child run of that run (shown nested in ``mlflow ui``)
    :raises ConfigError: the experiment is deleted (:func:`check_experiment`)
    """
    found = check_experiment(client, experiment, "experiment")
    experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
    all_tags = {MLFLOW_RUN_NAME: name, **provenance_tags(), **(tags or {})}
    if parent_run_id is not None:
        all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    run = client.create_run(experiment_id, tags=all_tags, run_name=name)
    if params:
        items = [Param(key, value) for key, value in params.items()]
        for start in range(0, len(items), 100):  # MLflow's batch limit for params
            client.log_batch(run.info.run_id, params=items[start : start + 100], synchronous=True)
    return run.info.run_id
