"""MLflow runs of a study: one parent run per study, a child run per trial, a grandchild run per seed.

The parent run carries the tag ``crl.study = <study name>``: every launch of the study, on any machine,
finds and reuses it. Two workers that start together may both create one; each then keeps the
earliest and deletes its own if it is not that one, so all of them agree on one parent.
"""

from __future__ import annotations

from collections.abc import Mapping

from mlflow import MlflowClient
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from crl.study.config import StudyConfig
from crl.tracking.runs import create_run, flatten
from crl.train import log_texts

STUDY_TAG = "crl.study"
"""The parent run's tag holding the study's name."""
TRIAL_TAG = "optuna.trial_number"
STATE_TAG = "optuna.state"
RUNNING = RunStatus.to_string(RunStatus.RUNNING)
FINISHED = RunStatus.to_string(RunStatus.FINISHED)
FAILED = RunStatus.to_string(RunStatus.FAILED)
KILLED = RunStatus.to_string(RunStatus.KILLED)


def experiment_id(client: MlflowClient, name: str) -> str:
    """The experiment's id, created if needed (by whichever worker comes first)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # another worker created it meanwhile
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _study_runs(client: MlflowClient, experiment: str, name: str) -> list[str]:
    """The study's parent runs, earliest first."""
    runs = client.search_runs(
        [experiment], f"tags.`{STUDY_TAG}` = '{name}'", order_by=["attributes.start_time ASC", "attributes.run_id ASC"]
    )
    return [run.info.run_id for run in runs if MLFLOW_PARENT_RUN_ID not in run.data.tags]


def study_parent_run(client: MlflowClient, config: StudyConfig, texts: Mapping[str, str]) -> str:
    """The study's parent run, created on the study's first launch (with its params and ``texts`` as artifacts).

    :param texts: ``{file name: text}`` logged as the new run's artifacts (the study file, the base curriculum)
    """
    experiment = experiment_id(client, config.curriculum.tracking.experiment)
    found = _study_runs(client, experiment, config.name)
    if not found:
        params = {
            **{f"study.{key}": value for key, value in flatten(config.spec.model_dump(mode="json")).items()},
            **flatten(config.curriculum.model_dump()),
            "study.n_trials": str(config.n_trials),
        }
        created = create_run(
            client,
            config.curriculum.tracking.experiment,
            config.name,
            tags={STUDY_TAG: config.name, "study_file": config.source},
            params=params,
        )
        log_texts(client, created, dict(texts))
        found = _study_runs(client, experiment, config.name)
        if found[0] != created:
            client.delete_run(created)
    client.update_run(found[0], status=RUNNING)
    return found[0]


def create_trial_run(
    client: MlflowClient, config: StudyConfig, parent_id: str, number: int, params: Mapping[str, object], worker: str
) -> str:
    """A trial's run under the study's parent run, with the trial's parameters."""
    return create_run(
        client,
        config.curriculum.tracking.experiment,
        trial_name(config, number),
        tags={TRIAL_TAG: str(number), STUDY_TAG + ".trial_of": config.name, "worker": worker},
        params={"trial_number": str(number), **{path: str(value) for path, value in params.items()}},
        parent_run_id=parent_id,
    )


def trial_name(config: StudyConfig, number: int) -> str:
    return f"{config.name}-trial{number}"


def end_trial_run(client: MlflowClient, run_id: str, state: str, status: str) -> None:
    """End a trial's run and its seeds' runs still running, tagging the Optuna state (COMPLETE, PRUNED, FAIL)."""
    client.set_tag(run_id, STATE_TAG, state)
    experiment = client.get_run(run_id).info.experiment_id
    for seed_run in client.search_runs([experiment], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{run_id}'"):
        if seed_run.info.status == RUNNING:
            client.set_terminated(seed_run.info.run_id, status)
    client.set_terminated(run_id, status)
