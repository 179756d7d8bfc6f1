"""SB3 logger values reach an MLflow run with the env step as their step."""

from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from stable_baselines3.common.logger import Logger

from crl.tracking import MLflowOutputFormat


def test_numeric_values_are_logged_with_their_step(tmp_path: Path) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("writer")
    run = client.create_run(experiment)
    logger = Logger(folder=None, output_formats=[MLflowOutputFormat(run.info.run_id, client)])

    logger.record("plasticity/q_net/all/srank", 12)
    logger.record("train/loss", np.float32(0.5))
    logger.record("rollout/name", "text is skipped")
    logger.record("train/diverged", float("nan"))
    logger.record("time/fps", 900, exclude="mlflow")
    logger.dump(step=1000)
    logger.record("plasticity/q_net/all/srank", 10)
    logger.dump(step=2000)

    history = client.get_metric_history(run.info.run_id, "plasticity/q_net/all/srank")
    assert [(m.step, m.value) for m in history] == [(1000, 12.0), (2000, 10.0)]
    logged = client.get_run(run.info.run_id).data.metrics
    assert logged == {"plasticity/q_net/all/srank": 10.0, "train/loss": 0.5}


def test_a_batch_is_logged_only_after_the_check_before_it_passed(tmp_path: Path) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("writer")).info.run_id
    checks: list[int] = []

    def refuse_the_second() -> None:
        checks.append(len(checks))
        if len(checks) == 2:
            raise RuntimeError("the run is another's now")

    writer = MLflowOutputFormat(run_id, client, before_write=refuse_the_second)
    writer.log({"train/loss": 1.0}, 100)
    writer.log({}, 150)  # nothing to log: nothing checked
    with pytest.raises(RuntimeError, match="another's"):
        writer.log({"train/loss": 2.0}, 200)
    assert checks == [0, 1]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")] == [(100, 1.0)]
