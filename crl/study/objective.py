"""A trial's value: a measure of each seed's run through the sequence, aggregated over the trial's seeds.

Measures of a :class:`~crl.continual.results.ContinualResult` (``p[i, k]`` the performance on task
``i`` at the ``k``-th evaluation, made at global step ``t_k``; ``t_0 = 0``):

- ``average_performance``: ``mean_i p[i, K]``, each ``p[i, K]`` averaged over the last ``window``
  evaluations (SPEC.md §4, :func:`crl.continual.average_performance`);
- ``auc``: the area under the curve of ``mean_i p[i, k]`` against the steps, as a step function
  (each evaluation holds since the previous one), divided by ``t_K``:
  ``sum_k (t_k - t_{k-1}) mean_i p[i, k] / t_K``; it rewards learning early as well as ending well;
- ``forgetting``: ``mean_i (p[i, e_i] - p[i, K])`` over the tasks trained so far (``e_i`` the end of
  task ``i``), SPEC.md §4's mean forgetting once every task is trained;
- ``metric``: the last value of a logged metric (e.g. a plasticity metric) in the seed's MLflow run.

The same measures on the evaluations so far are the intermediate values reported for pruning.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from mlflow import MlflowClient

from crl.continual import ContinualResult, average_performance
from crl.study.schema import ObjectiveSpec

AGGREGATES: dict[str, Callable[[np.ndarray], float]] = {
    "mean": np.mean,
    "median": np.median,
    "min": np.min,
    "max": np.max,
}


def area_under_evaluation_curve(result: ContinualResult) -> float:
    """``sum_k (t_k - t_{k-1}) mean_i p[i, k] / t_K`` (``t_0 = 0``)."""
    widths = np.diff(result.eval_steps, prepend=0)
    return float(widths @ result.performance.mean(axis=0) / result.eval_steps[-1])


def mean_forgetting(result: ContinualResult) -> float:
    """``mean_i (p[i, e_i] - p[i, K])`` over the tasks whose training has ended by the last evaluation."""
    trained = np.flatnonzero(result.task_ends <= result.eval_steps[-1])
    at_own_end = np.array([result.performance[task, result.column_at(int(result.task_ends[task]))] for task in trained])
    return float(np.mean(at_own_end - result.performance[trained, -1]))


def measure(objective: ObjectiveSpec, result: ContinualResult, client: MlflowClient, run_id: str) -> float | None:
    """The objective's measure of one seed's (possibly partial) run; ``None`` when the metric is not logged yet.

    :param run_id: the seed's MLflow run (for ``measure: metric``)
    """
    if objective.measure == "average_performance":
        return average_performance(result, window=min(objective.window, len(result.eval_steps)))
    if objective.measure == "auc":
        return area_under_evaluation_curve(result)
    if objective.measure == "forgetting":
        return mean_forgetting(result)
    assert objective.key is not None  # validated with measure 'metric'
    value = client.get_run(run_id).data.metrics.get(objective.key)
    return None if value is None else float(value)


def aggregate(objective: ObjectiveSpec, values: Sequence[float]) -> float:
    """The trial's value from its seeds' values."""
    return float(AGGREGATES[objective.aggregate](np.asarray(values, dtype=np.float64)))
