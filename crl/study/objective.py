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

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from mlflow import MlflowClient

from crl.config.errors import suggest
from crl.continual import ContinualResult, average_performance
from crl.interventions import registered_interventions
from crl.study.schema import ObjectiveSpec

AGGREGATES: dict[str, Callable[[np.ndarray], float]] = {
    "mean": np.mean,
    "median": np.median,
    "min": np.min,
    "max": np.max,
}

FIXED_METRICS = (
    "task",
    "continual/average",
    "final/average_performance",
    "final/forgetting",
    "final/backward_transfer",
    "final/performance_maintenance",
    *(f"time/{name}" for name in ("episodes", "fps", "iterations", "time_elapsed", "total_timesteps")),
    *(f"rollout/{name}" for name in ("ep_len_mean", "ep_rew_mean", "exploration_rate", "success_rate")),
)
"""Metrics a run logs under fixed names (by :mod:`crl.train` and SB3's algorithms), if it logs them at all."""
ALGORITHM_METRICS: dict[str, frozenset[str]] = {
    "time/episodes": frozenset({"DQN", "SAC", "QRDQN", "TQC", "CrossQ"}),  # SB3's off-policy algorithms count episodes,
    "time/iterations": frozenset({"PPO"}),  # its on-policy ones rollouts
    "rollout/exploration_rate": frozenset({"DQN", "QRDQN"}),  # epsilon-greedy exploration
}
"""Fixed metrics that only some algorithms log -> those algorithms (the others of :data:`FIXED_METRICS`: any)."""
TASK_METRIC = re.compile(r"continual/\d+_.+")
"""``continual/<task index>_<task name>``: each task's evaluations."""
OPEN_GROUPS = ("train", "plasticity")
"""Groups whose names depend on the algorithm, its version or its networks: only their prefix is checked."""
LOGGED_NAMES = (
    "task, continual/average, continual/<index>_<task>, final/..., time/..., rollout/..., train/<algorithm's>, "
    "interventions/<intervention>/<value>, plasticity/<network>/<layer>/<metric>"
)


@dataclass(frozen=True)
class StudyLogs:
    """What the runs of a study's trials can log, as far as it is known before any runs.

    :param algorithms: the algorithms the trials train
    :param interventions: the names of the interventions that some trial's curriculum has
    :param task_metrics: ``continual/<index>_<task>`` of every sequence a trial may train, in task
        order; ``None`` when they are not known before the trials (a number drawn from a range sets
        the sequence: the tasks between the bounds are not built before)
    """

    algorithms: frozenset[str]
    interventions: frozenset[str]
    task_metrics: tuple[str, ...] | None = None


def metric_key_problem(key: str, logs: StudyLogs | None = None) -> str | None:
    """Why no run can log the metric ``key`` (for ``measure: metric``), or ``None`` when one may.

    What a run logs is not all known before it runs: ``train/`` keys are the algorithm's own (SB3's
    and crl's losses, which change with versions), ``interventions/<name>/`` keys each intervention's,
    and ``plasticity/`` keys depend on the networks and their layers. Those are checked by their
    group (and the intervention's name); the names crl and SB3 log themselves (:data:`FIXED_METRICS`,
    ``continual/``) one by one. So a misspelt ``final/forgeting`` or ``eval/mean_reward`` (no run
    evaluates through SB3's ``EvalCallback``) is refused, a misspelt ``train/los`` is not.

    :param logs: what the study's runs can log: with it, a key is also refused when it names an
        intervention no trial has, a task no trial's sequence has, or a metric of SB3 that none of the
        trials' algorithms logs (:data:`ALGORITHM_METRICS`)
    """
    group, _, rest = key.partition("/")
    if TASK_METRIC.fullmatch(key):
        if logs is None or logs.task_metrics is None or key in logs.task_metrics:
            return None
        return (
            f"no task is logged under it{suggest(key, logs.task_metrics)}; "
            f"the sequence's tasks are logged as {', '.join(logs.task_metrics)}"
        )
    if key in FIXED_METRICS:
        algorithms = ALGORITHM_METRICS.get(key)
        if logs is None or algorithms is None or algorithms & logs.algorithms:
            return None
        return (
            f"only {' and '.join(sorted(algorithms))} {'logs' if len(algorithms) == 1 else 'log'} it; "
            f"the study trains {' and '.join(sorted(logs.algorithms))}"
        )
    if group in OPEN_GROUPS and rest:
        return None
    if group == "interventions":
        name, _, value = rest.partition("/")
        known = list(registered_interventions())
        if name not in known:
            return f"no intervention is named {name!r}{suggest(name, known)}; interventions: {', '.join(known)}"
        if logs is not None and name not in logs.interventions:
            present = sorted(logs.interventions)
            return (
                f"no trial has the intervention {name!r}{suggest(name, present)}; the base curriculum and the "
                f"search space give {'the interventions ' + ', '.join(present) if present else 'no interventions'}"
            )
        if value:
            return None
    return f"no run logs it{suggest(key, FIXED_METRICS)}; runs log {LOGGED_NAMES}"


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
