"""MLflow runs of a study: one parent run per study, a child run per trial, a grandchild run per seed.

The parent run carries the tags ``crl.study = <study name>`` and ``crl.study.storage = <storage URL>``
(without its password): every launch of the study, on any machine, finds and reuses it, and a study
of the same name in another storage (a new Optuna study) gets its own. Two workers that start
together may both create one; each then keeps the earliest and deletes its own if it is not that
one, so all of them agree on one parent.
"""

from __future__ import annotations

from collections.abc import Mapping

from mlflow import MlflowClient
from mlflow.entities import Param, Run, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from crl.config.errors import ConfigError, one_line
from crl.study.config import StudyConfig, filter_string, storage_tag
from crl.tracking.runs import check_experiment, create_run, flatten
from crl.train import log_texts

STUDY_TAG = "crl.study"
"""The parent run's tag holding the study's name."""
STORAGE_TAG = "crl.study.storage"
"""The parent run's tag holding the study's storage URL, without its password (:func:`storage_tag`)."""
TRIAL_TAG = "optuna.trial_number"
"""A trial run's tag: the number of the Optuna trial whose run it is (the last one, when trials continued it)."""
CONTINUED_TAG = "optuna.continued_trials"
"""A trial run's tag: the numbers of the interrupted trials it holds before the current one, comma-separated."""
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


def tracking_client(config: StudyConfig) -> MlflowClient:
    """The MLflow client of the study's tracking URI, whose experiment can take runs.

    :raises ConfigError: a URI MLflow has no store for (e.g. an unknown scheme), or a deleted experiment
    """
    try:
        client = MlflowClient(tracking_uri=config.tracking_uri)
    except MlflowException as error:
        raise ConfigError(
            f"{config.source}: key 'tracking.tracking_uri' = {config.tracking_uri!r} (--tracking-uri, "
            f"MLFLOW_TRACKING_URI or the base curriculum's): MLflow cannot use it ({one_line(error.message)})"
        ) from None
    where = f"{config.source}: the base's key 'tracking.experiment'"
    check_experiment(client, config.curriculum.tracking.experiment, where)
    return client


def set_shared_tag(client: MlflowClient, run_id: str, key: str, value: str) -> None:
    """``client.set_tag`` on a run that several workers tag at once (the study's parent run).

    MLflow's SQL stores write a tag by looking it up and inserting it when it is not there; two
    workers that set the same new tag together can both insert, and the second fails on the table's
    unique key (SQLite: "UNIQUE constraint failed", PostgreSQL: "duplicate key value violates unique
    constraint"). Set again, the tag is there and is updated.
    """
    try:
        client.set_tag(run_id, key, value)
    except MlflowException as error:
        if "unique constraint" not in str(error).lower():
            raise
        client.set_tag(run_id, key, value)


def _study_runs(client: MlflowClient, experiment: str, config: StudyConfig) -> list[str]:
    """The study's parent runs (its name in its storage), earliest first.

    A parent run made before runs were tagged with their storage (crl 0.1.0 up to 42b81e7) has only
    the name: it is taken as this storage's and tagged, so that a study launched then goes on in it.
    """
    order = ["attributes.start_time ASC", "attributes.run_id ASC"]
    named = client.search_runs([experiment], f"tags.`{STUDY_TAG}` = {filter_string(config.name)}", order_by=order)
    parents = [run for run in named if MLFLOW_PARENT_RUN_ID not in run.data.tags]
    tag = storage_tag(config.storage_url)
    found = [run.info.run_id for run in parents if run.data.tags.get(STORAGE_TAG) == tag]
    untagged = [run.info.run_id for run in parents if STORAGE_TAG not in run.data.tags]
    if not found and untagged:
        set_shared_tag(client, untagged[0], STORAGE_TAG, tag)
        found = untagged[:1]
    return found


def study_parent_run(client: MlflowClient, config: StudyConfig, texts: Mapping[str, str]) -> str:
    """The study's parent run, created on the study's first launch (with its params and ``texts`` as artifacts).

    :param texts: ``{file name: text}`` logged as the new run's artifacts (the study file, the base curriculum)
    """
    experiment = experiment_id(client, config.curriculum.tracking.experiment)
    found = _study_runs(client, experiment, config)
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
            tags={STUDY_TAG: config.name, STORAGE_TAG: storage_tag(config.storage_url), "study_file": config.source},
            params=params,
        )
        log_texts(client, created, dict(texts))
        found = _study_runs(client, experiment, config)
        if found[0] != created:
            client.delete_run(created)
    client.update_run(found[0], status=RUNNING)
    return found[0]


def create_trial_run(client: MlflowClient, config: StudyConfig, parent_id: str, number: int, worker: str) -> str:
    """A trial's run under the study's parent run (its parameters follow: :func:`log_trial_params`)."""
    return create_run(
        client,
        config.curriculum.tracking.experiment,
        trial_name(config, number),
        tags={TRIAL_TAG: str(number), STUDY_TAG + ".trial_of": config.name, "worker": worker},
        params={"trial_number": str(number)},
        parent_run_id=parent_id,
    )


def reopen_trial_run(client: MlflowClient, run_id: str, number: int, worker: str) -> None:
    """Set a stopped trial's run (Ctrl-C, a dead worker) running again, as the run of trial ``number``,
    which continues it."""
    tags = client.get_run(run_id).data.tags
    continued = [text for text in (tags.get(CONTINUED_TAG), tags.get(TRIAL_TAG)) if text]
    client.set_tag(run_id, CONTINUED_TAG, ",".join(continued))
    client.set_tag(run_id, TRIAL_TAG, str(number))
    client.set_tag(run_id, "worker", worker)
    client.update_run(run_id, status=RUNNING)


def log_trial_params(client: MlflowClient, run_id: str, params: Mapping[str, object]) -> None:
    """The trial's drawn parameters, ``{path: value}``, as its run's params."""
    items = [Param(path, str(value)) for path, value in params.items()]
    for start in range(0, len(items), 100):  # MLflow's batch limit for params
        client.log_batch(run_id, params=items[start : start + 100], synchronous=True)


def trial_name(config: StudyConfig, number: int) -> str:
    return f"{config.name}-trial{number}"


def seed_runs(client: MlflowClient, run_id: str) -> list[Run]:
    """The seed runs under the trial run ``run_id``, the latest first."""
    experiment = client.get_run(run_id).info.experiment_id
    return client.search_runs(
        [experiment],
        f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{run_id}'",
        max_results=10_000,
        order_by=["attributes.start_time DESC"],
    )


def end_trial_run(client: MlflowClient, run_id: str, state: str, status: str) -> None:
    """End a trial's run and its seeds' runs still running, tagging the Optuna state (COMPLETE, PRUNED, FAIL)."""
    client.set_tag(run_id, STATE_TAG, state)
    for seed_run in seed_runs(client, run_id):
        if seed_run.info.status == RUNNING:
            client.set_terminated(seed_run.info.run_id, status)
    client.set_terminated(run_id, status)
