"""An SB3 logger output format that sends every numeric value to an MLflow run.

SB3's documented MLflow integration is a ``KVWriter`` whose ``write`` logs the dumped key-values
with ``step`` = the logger's step (env steps). This one logs to an explicit run through
:class:`mlflow.MlflowClient` in one batch per dump, so several runs (one per seed, in other
processes) can be written at once without relying on MLflow's active-run stack.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from numbers import Real
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric
from stable_baselines3.common.logger import KVWriter

EXCLUDE_NAME = "mlflow"
"""Pass ``exclude="mlflow"`` to ``logger.record`` to keep a value out of MLflow."""


class MLflowOutputFormat(KVWriter):
    """Writes the numeric values of each ``logger.dump(step)`` as metrics of one MLflow run.

    Strings, videos, figures and values excluded for ``"mlflow"`` are skipped; so are NaN and
    infinite values, which MLflow's SQL stores reject.

    :param run_id: the run that receives the metrics
    :param client: the MLflow client to use (by default one for the current tracking URI)
    :param exclude_prefixes: keys starting with one of these are not logged (e.g. values the caller
        logs itself at their exact steps)
    :param before_write: called before each batch is logged; an exception it raises (e.g.
        :class:`crl.train.RunTakenOver`) stops the batch from being logged
    """

    def __init__(
        self,
        run_id: str,
        client: MlflowClient | None = None,
        exclude_prefixes: tuple[str, ...] = (),
        before_write: Callable[[], None] | None = None,
    ) -> None:
        self.run_id = run_id
        self.client = client if client is not None else MlflowClient()
        self.exclude_prefixes = exclude_prefixes
        self.before_write = before_write
        self.step_offset = 0
        """Added to SB3's step: env steps before the current ``learn()`` call (earlier tasks of a sequence)."""
        self.logged_through: dict[str, int] = {}
        """Per key, the last step the run already holds: values at steps up to it are not logged again."""

    def skip_logged(self) -> None:
        """Skip, per key, the steps the run already has: a resumed run re-trains the steps after its
        checkpoint that the interrupted process had already logged, so its history gets neither a
        duplicated step nor a gap (the values are the same where training is reproduced bitwise)."""
        keys = self.client.get_run(self.run_id).data.metrics
        self.logged_through = {
            key: max(metric.step for metric in self.client.get_metric_history(self.run_id, key)) for key in keys
        }

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        self.log(
            {
                key: float(value)
                for key, value in key_values.items()
                if _is_loggable(value)
                and EXCLUDE_NAME not in (key_excluded.get(key) or ())
                and not key.startswith(self.exclude_prefixes)
            },
            self.step_offset + step,
        )

    def log(self, values: dict[str, float], step: int) -> None:
        """Log ``values`` at the global ``step``, except keys the run already has at or after it."""
        timestamp = int(time.time() * 1000)
        metrics = [
            Metric(key, value, timestamp, step)
            for key, value in values.items()
            if step > self.logged_through.get(key, -1)
        ]
        if metrics:
            if self.before_write is not None:
                self.before_write()
            self.client.log_batch(self.run_id, metrics=metrics, synchronous=True)
            self.logged_through.update({metric.key: step for metric in metrics})

    def close(self) -> None:
        """Nothing to release: the run's lifetime belongs to whoever created it."""


def _is_loggable(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, Real):
        return False
    return math.isfinite(float(value))
