"""SB3 logger values reach an MLflow run with the env step as their step."""

from pathlib import Path

import numpy as np
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
