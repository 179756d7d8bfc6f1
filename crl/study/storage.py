"""The Optuna storage every worker of a study shares, with heartbeats so that a dead worker's trial is retried.

An :class:`optuna.storages.RDBStorage` on the study's URL (SQLite on one machine, PostgreSQL across
machines). Each running trial sends a heartbeat every ``heartbeat_interval`` seconds; a trial without
one for ``grace_period`` seconds is failed by the next worker that looks (before each of its trials
and while it waits), its MLflow runs are marked failed, and a copy with the same parameters is
queued (:func:`~crl.study.trial.queue_again`, as Optuna's ``RetryHeartbeatStaleTrialCallback``)
unless the trial's configuration was retried ``max_retry`` times for dead workers already. The next
free worker continues it as it continues a trial stopped by Ctrl-C: in the same MLflow run, each
unfinished seed from its latest checkpoint (see :mod:`crl.study.trial`). A trial not retried loses
its checkpoints.
"""

from __future__ import annotations

import random
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from mlflow import MlflowClient
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, ProgrammingError, SQLAlchemyError

from crl.config.errors import ConfigError, one_line
from crl.study.config import StudyConfig
from crl.study.runs import FAILED, end_trial_run
from crl.study.trial import RUN_ATTR, dead_worker_retries, queue_again, remove_checkpoints

FINGERPRINT_ATTR = "crl.fingerprint"
"""The study's user attribute holding :meth:`StudyConfig.fingerprint` of the file that created it."""
SQLITE_TIMEOUT = 60
"""Seconds an SQLite connection waits for another process's write (several local workers)."""
CREATE_ATTEMPTS = 5
"""Attempts at opening a storage whose tables other workers are creating at the same moment."""


class StaleTrialHandler:
    """Called by the storage for each trial failed for a missing heartbeat: ends its MLflow runs, queues it again.

    :param client: the MLflow client
    :param max_retry: how often one trial is retried after its worker died (``None``: always); trials
        interrupted by Ctrl-C are always queued again, and do not count
    :param checkpoints: the study's checkpoints (:func:`~crl.study.trial.study_checkpoints`), where the
        trial's are removed when it is not retried
    """

    def __init__(self, client: MlflowClient, max_retry: int | None, checkpoints: Path | None = None) -> None:
        self.client = client
        self.max_retry = max_retry
        self.checkpoints = checkpoints

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        run_id = trial.user_attrs.get(RUN_ATTR)
        if run_id is not None:
            end_trial_run(self.client, run_id, "FAIL", FAILED)
        if self.max_retry is None or dead_worker_retries(trial) < self.max_retry:
            queue_again(study, trial, interrupted=False)  # the copy continues from the trial's checkpoints
        elif run_id is not None and self.checkpoints is not None:
            remove_checkpoints(self.client, self.checkpoints, run_id)


def open_storage(config: StudyConfig, handler: StaleTrialHandler) -> RDBStorage:
    """The study's storage (its tables created on first use).

    :param handler: what happens to a trial whose worker died

    :raises ConfigError: the database cannot be reached or opened
    """
    spec = config.spec.storage
    sqlite = config.storage_url.startswith("sqlite")
    engine: dict[str, Any] = {"pool_pre_ping": True}
    if sqlite:
        # isolation_level=None: pysqlite begins no transaction of its own, the "begin" listener does.
        engine = {"connect_args": {"timeout": SQLITE_TIMEOUT, "isolation_level": None}}
    attempt = 1
    while True:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = RDBStorage(
                    config.storage_url,
                    engine_kwargs=engine,
                    heartbeat_interval=spec.heartbeat_interval,
                    grace_period=spec.grace_period or 2 * spec.heartbeat_interval,
                    heartbeat_stale_trial_callback=handler,
                )
            if sqlite:
                begin_immediately(storage.engine)
            return storage
        except (IntegrityError, ProgrammingError):
            # Workers starting together on an empty database both create the tables (PostgreSQL:
            # "duplicate key value ... pg_type"); once one has, opening it again finds them.
            if attempt == CREATE_ATTEMPTS:
                raise
            attempt += 1
            time.sleep(1.0 + random.random())
        except (SQLAlchemyError, ImportError) as error:
            raise ConfigError(f"storage {config.storage_url!r} cannot be opened: {one_line(str(error))}") from None


def begin_immediately(engine: Engine) -> None:
    """Make every transaction on an SQLite ``engine`` take the database's write lock when it begins.

    Optuna hands a queued trial to one worker by reading it as waiting and setting it running in one
    transaction, with ``SELECT ... FOR UPDATE``, which SQLite ignores: two local workers could both
    read the trial as waiting, both set it running and train it, and the second to finish crashed
    ("Cannot tell a COMPLETE trial"). ``BEGIN IMMEDIATE`` serialises those transactions (SQLAlchemy's
    recipe for pysqlite); PostgreSQL locks the row itself.
    """

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def open_study(config: StudyConfig, storage: RDBStorage) -> optuna.Study:
    """Create the study, or join it; a study created from another study file is refused.

    :raises ConfigError: the study exists with another search space, objective, search or base curriculum
    """
    study = optuna.create_study(
        storage=storage,
        sampler=config.make_sampler(),
        pruner=config.make_pruner(),
        study_name=config.name,
        direction=config.direction,  # type: ignore[arg-type]
        load_if_exists=True,
    )
    fingerprint = study.user_attrs.get(FINGERPRINT_ATTR)
    # A study an earlier crl created holds the hash of its file's spelling: the same file upgrades it.
    if fingerprint is None or fingerprint == config.legacy_fingerprint():
        study.set_user_attr(FINGERPRINT_ATTR, config.fingerprint())
    elif fingerprint != config.fingerprint():
        raise ConfigError(
            f"{config.source}: study {config.name!r} in {config.storage_url} was created from a different "
            "study (search space, objective, search or base curriculum); give another --study-name"
        )
    return study
