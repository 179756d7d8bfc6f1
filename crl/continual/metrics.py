"""Continual-learning metrics of SPEC.md §4 (Continual World's definitions), with bootstrap CIs over seeds.

With ``p[i, t]`` the performance on task ``i`` after ``t`` environment steps of the sequence, task ``i``
trained on ``(s_i, e_i]`` and ``T`` the end of the sequence:

- average performance ``P = mean_i p[i, T]`` (optionally each ``p[i, T]`` averaged over the last
  ``window`` evaluations, as CW reports);
- forgetting ``F_i = p[i, e_i] - p[i, T]`` and ``F = mean_i F_i`` over all tasks (the last task's
  ``F_i`` is 0 by definition, and counts, as in the CW paper's ``1/N sum_i``);
- forward transfer ``FT_i = (AUC_i - AUC_i_ref) / (1 - AUC_i_ref)``, ``AUC_i`` the mean of the
  evaluations of task ``i`` made while it is trained (at steps in ``(s_i, e_i]``), ``AUC_i_ref`` the
  same for single-task agents trained from scratch on task ``i``; ``FT = mean_i FT_i``.

The ``1`` in ``FT``'s denominator is the best possible success rate. For returns pass
``max_performance``, the best possible return: the formula is the same with ``1`` replaced by it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from crl.continual.results import ContinualResult


def final_performance(result: ContinualResult, window: int = 1) -> np.ndarray:
    """Per task, the mean of its last ``window`` evaluations."""
    if window < 1 or window > result.performance.shape[1]:
        raise ValueError(f"window must lie in [1, {result.performance.shape[1]}] (evaluation points), got {window}")
    return result.performance[:, -window:].mean(axis=1)


def average_performance(result: ContinualResult, window: int = 1) -> float:
    """``P``: mean over tasks of the final performance."""
    return float(final_performance(result, window).mean())


def performance_after_training(result: ContinualResult) -> np.ndarray:
    """Per task, its performance at the end of its own training: how well the agent learned it."""
    return np.asarray(
        [result.performance[task, result.column_at(int(end))] for task, end in enumerate(result.task_ends)]
    )


def forgetting(result: ContinualResult) -> np.ndarray:
    """``F_i``: performance on task ``i`` at the end of its training minus at the end of the sequence."""
    return performance_after_training(result) - result.performance[:, -1]


def area_under_curve(result: ContinualResult) -> np.ndarray:
    """``AUC_i``: mean of task ``i``'s evaluations made while task ``i`` is trained."""
    areas = []
    for task, (start, end) in enumerate(zip(result.task_starts, result.task_ends, strict=True)):
        during = (result.eval_steps > start) & (result.eval_steps <= end)
        areas.append(result.performance[task, during].mean())
    return np.asarray(areas)


def reference_auc(single_task_runs: Sequence[ContinualResult]) -> dict[str, float]:
    """``AUC_ref`` per task name: the mean AUC of single-task runs (one task each, any number of seeds)."""
    areas: dict[str, list[float]] = defaultdict(list)
    for run in single_task_runs:
        if run.n_tasks != 1:
            raise ValueError(f"reference runs must have one task each, got {run.n_tasks} ({list(run.task_names)})")
        areas[run.task_names[0]].append(float(area_under_curve(run)[0]))
    return {name: float(np.mean(values)) for name, values in areas.items()}


def forward_transfer(
    result: ContinualResult, reference: Mapping[str, float], max_performance: float = 1.0
) -> np.ndarray:
    """``FT_i = (AUC_i - AUC_i_ref) / (max_performance - AUC_i_ref)``.

    :param reference: ``AUC_ref`` per task name (see :func:`reference_auc`)
    :param max_performance: best possible performance (1 for success rates)
    """
    missing = sorted(set(result.task_names) - set(reference))
    if missing:
        raise ValueError(f"no reference AUC for task(s) {missing}; reference has {sorted(reference)}")
    areas = area_under_curve(result)
    references = np.asarray([reference[name] for name in result.task_names])
    return (areas - references) / (max_performance - references)


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds with its bootstrap confidence interval (``nan`` bounds for a single seed)."""

    mean: float
    low: float
    high: float
    n_seeds: int


def bootstrap_ci(
    values: Sequence[float] | np.ndarray, confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0
) -> Estimate:
    """Percentile bootstrap confidence interval of the mean of per-seed values.

    :param values: one value per seed
    :param confidence: coverage of the interval
    :param n_resamples: bootstrap resamples
    :param seed: seed of the resampling (so a report is reproducible)
    """
    sample = np.asarray(values, dtype=np.float64)
    if sample.ndim != 1 or sample.size == 0:
        raise ValueError(f"values must be a non-empty 1-D sequence (one per seed), got shape {sample.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    mean = float(sample.mean())
    if sample.size == 1:
        return Estimate(mean, float("nan"), float("nan"), 1)
    # Resample seeds with replacement; the interval is the central `confidence` mass of the resampled means.
    resamples = np.random.default_rng(seed).integers(0, sample.size, size=(n_resamples, sample.size))
    means = sample[resamples].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Estimate(mean, float(low), float(high), sample.size)


@dataclass(frozen=True)
class ContinualSummary:
    """The SPEC.md §4 metrics of several seeds' runs of one sequence, each with its bootstrap CI."""

    average_performance: Estimate
    forgetting: Estimate
    forward_transfer: Estimate | None

    def to_dict(self) -> dict[str, dict[str, float] | None]:
        return asdict(self)


def summarize(
    runs: Sequence[ContinualResult],
    reference: Mapping[str, float] | None = None,
    window: int = 1,
    max_performance: float = 1.0,
    confidence: float = 0.95,
) -> ContinualSummary:
    """Average performance, forgetting and (given ``reference``) forward transfer over seeds.

    :param runs: one run per seed, all of the same sequence
    :param reference: ``AUC_ref`` per task name (:func:`reference_auc`); without it no forward transfer
    :param window: evaluations averaged into each task's final performance
    """
    if not runs:
        raise ValueError("summarize needs at least one run")
    if len({run.task_names for run in runs}) != 1:
        raise ValueError("all runs must be of the same sequence (same task names in the same order)")
    transfer = None
    if reference is not None:
        transfer = bootstrap_ci([forward_transfer(run, reference, max_performance).mean() for run in runs], confidence)
    return ContinualSummary(
        average_performance=bootstrap_ci([average_performance(run, window) for run in runs], confidence),
        forgetting=bootstrap_ci([forgetting(run).mean() for run in runs], confidence),
        forward_transfer=transfer,
    )
