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
The normalisation needs ``AUC_i_ref < max_performance`` and ``AUC_i <= max_performance`` (``FT_i <= 1``):
a reference agent already at the best performance leaves nothing to transfer (``FT_i`` would be
``+-inf`` or ``nan``), and a ``max_performance`` below an AUC is not the best possible performance
(with returns and the default ``1``, a better agent would get a negative ``FT_i``). Both raise a
``ValueError`` naming the task, rather than yield a number.

Lifelong-learning metrics beside them (``docs/metrics.md`` gives the sources and how they relate):

- backward transfer ``BWT_i = p[i, T] - p[i, e_i]`` for the tasks before the last, ``BWT = mean_i BWT_i``
  (Lopez-Paz & Ranzato 2017);
- performance maintenance ``PM_i = p[i, T] - max_t p[i, t]``, final minus best performance;
- relative performance ``RP_i = p[i, e_i] / p_i_ref``, ``p_i_ref`` the final performance of single-task
  agents on task ``i``;
- sample efficiency ``SE_i = AUC_i / AUC_i_ref``, the area under task ``i``'s learning curve relative
  to the single-task agents' (New et al. 2022 call this ratio "performance relative to STE").
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
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
    """``AUC_i``: mean of task ``i``'s evaluations made while task ``i`` is trained.

    :raises ValueError: a task evaluated at no step of its training (its mean would be ``nan``)
    """
    areas = []
    for task, (start, end) in enumerate(zip(result.task_starts, result.task_ends, strict=True)):
        during = (result.eval_steps > start) & (result.eval_steps <= end)
        if not during.any():
            raise ValueError(
                f"task {result.task_names[task]!r} has no evaluation at a step in ({start}, {end}] (its training); "
                f"evaluation steps: {result.eval_steps.tolist()}"
            )
        areas.append(result.performance[task, during].mean())
    return np.asarray(areas)


def _per_task_reference(
    single_task_runs: Sequence[ContinualResult], measure: Callable[[ContinualResult], float]
) -> dict[str, float]:
    """``measure`` of single-task runs (one task each, any number of seeds), averaged per task name."""
    values: dict[str, list[float]] = defaultdict(list)
    for run in single_task_runs:
        if run.n_tasks != 1:
            raise ValueError(f"reference runs must have one task each, got {run.n_tasks} ({list(run.task_names)})")
        values[run.task_names[0]].append(measure(run))
    return {name: float(np.mean(per_seed)) for name, per_seed in values.items()}


def reference_auc(single_task_runs: Sequence[ContinualResult]) -> dict[str, float]:
    """``AUC_ref`` per task name: the mean AUC of single-task runs (one task each, any number of seeds)."""
    return _per_task_reference(single_task_runs, lambda run: float(area_under_curve(run)[0]))


def reference_final_performance(single_task_runs: Sequence[ContinualResult]) -> dict[str, float]:
    """``p_ref`` per task name: the mean over single-task runs of the evaluation at the end of their training."""
    return _per_task_reference(single_task_runs, lambda run: float(performance_after_training(run)[0]))


def forward_transfer(
    result: ContinualResult, reference: Mapping[str, float], max_performance: float = 1.0
) -> np.ndarray:
    """``FT_i = (AUC_i - AUC_i_ref) / (max_performance - AUC_i_ref)``.

    :param reference: ``AUC_ref`` per task name (see :func:`reference_auc`)
    :param max_performance: best possible performance (1 for success rates; the best possible return
        for returns)
    :raises ValueError: a task whose ``AUC_ref`` is not below ``max_performance``, or whose ``AUC`` is above it
    """
    areas = area_under_curve(result)
    references = _references(result, reference, "reference AUC")
    _check_normalisation(result.task_names, areas, references, max_performance)
    return (areas - references) / (max_performance - references)


def _check_normalisation(
    task_names: Sequence[str], areas: np.ndarray, references: np.ndarray, max_performance: float
) -> None:
    """Raise unless every task's ``AUC_ref < max_performance`` and ``AUC <= max_performance`` (SPEC.md §4's
    normalisation by the room the reference left to the best performance).

    :param task_names: the tasks, in the order of ``areas`` and ``references``
    :param areas: ``AUC_i`` of the run
    :param references: ``AUC_i_ref``
    :param max_performance: the best possible performance
    """
    for name, area, auc_ref in zip(task_names, areas, references, strict=True):
        # `not <` also catches nan (a reference or AUC that is not a number).
        if not auc_ref < max_performance:
            raise ValueError(
                f"forward transfer of task {name!r}: AUC_ref = {auc_ref:.6g} must be below max_performance = "
                f"{max_performance:.6g} (the best possible performance: 1 for success rates, the best return for "
                f"returns)"
            )
        if not area <= max_performance:
            raise ValueError(
                f"forward transfer of task {name!r}: AUC = {area:.6g} is above max_performance = "
                f"{max_performance:.6g} (AUC_ref = {auc_ref:.6g}); pass the best possible performance "
                f"(1 for success rates, the best return for returns)"
            )


def _references(result: ContinualResult, reference: Mapping[str, float], what: str) -> np.ndarray:
    """``reference`` in the order of ``result``'s tasks."""
    missing = sorted(set(result.task_names) - set(reference))
    if missing:
        raise ValueError(f"no {what} for task(s) {missing}; reference has {sorted(reference)}")
    return np.asarray([reference[name] for name in result.task_names], dtype=np.float64)


def _positive_references(result: ContinualResult, reference: Mapping[str, float], what: str) -> np.ndarray:
    """``reference`` in task order, checked to be a valid denominator of a ratio."""
    references = _references(result, reference, what)
    not_positive = [name for name, value in zip(result.task_names, references, strict=True) if not value > 0]
    if not_positive:
        raise ValueError(
            f"{what} must be positive to divide by, got {[reference[name] for name in not_positive]} "
            f"for task(s) {not_positive}"
        )
    return references


def backward_transfer(result: ContinualResult) -> np.ndarray:
    """``BWT_i = p[i, T] - p[i, e_i]`` for every task but the last (``BWT = mean_i BWT_i``).

    Lopez-Paz & Ranzato 2017 ("Gradient Episodic Memory for Continual Learning"):
    ``BWT = 1/(T-1) sum_{i<T} (R_{T,i} - R_{i,i})``, ``R_{j,i}`` the performance on task ``i`` after
    training task ``j``. Positive: later tasks improved earlier ones. Per task it is ``-F_i``; the
    averages differ in that CW's forgetting also counts the last task (whose ``F`` is 0).

    :return: one value per task but the last (empty for a single task)
    """
    return -forgetting(result)[:-1]


def performance_maintenance(result: ContinualResult) -> np.ndarray:
    """``PM_i = p[i, T] - max_t p[i, t]``: final minus best performance of each task (``<= 0``).

    The best is taken over every evaluation of the run, before, during and after the task's own
    training, so a task that peaked through transfer and then declined counts as not maintained.
    The DARPA L2M metrics (New et al. 2022, "Lifelong Learning Metrics") define performance
    maintenance as the mean difference between each later evaluation and the most recent terminal
    learning performance; this is its final-versus-best form.
    """
    return result.performance[:, -1] - result.performance.max(axis=1)


def relative_performance(result: ContinualResult, reference: Mapping[str, float]) -> np.ndarray:
    """``RP_i = p[i, e_i] / p_i_ref``: performance at the end of task ``i``'s training, relative to single-task agents.

    Below 1, the agent learns task ``i`` less well after the tasks before it than a fresh agent does
    (a symptom of lost plasticity); for the first task it measures the agent against its own
    reference. The ratio of terminal performances, as in New et al. 2022's comparisons with a
    single-task expert (their "performance relative to STE" ratio of learning-curve areas is
    :func:`sample_efficiency` here).

    :param reference: ``p_ref`` per task name (see :func:`reference_final_performance`), positive
    """
    references = _positive_references(result, reference, "reference final performance")
    return performance_after_training(result) / references


def sample_efficiency(result: ContinualResult, reference: Mapping[str, float]) -> np.ndarray:
    """``SE_i = AUC_i / AUC_i_ref``: the area under task ``i``'s learning curve relative to single-task agents.

    Above 1, the agent reached higher performance sooner while training task ``i`` than a fresh
    agent did. ``AUC`` as for forward transfer (:func:`area_under_curve`: the mean of the evaluations
    made while the task is trained). This ratio is New et al. 2022's "performance relative to STE"
    (L2M metrics); L2M's own "sample efficiency" instead multiplies the ratios of saturation values
    and of the times to reach them.

    :param reference: ``AUC_ref`` per task name (see :func:`reference_auc`), positive
    """
    return area_under_curve(result) / _positive_references(result, reference, "reference AUC")


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
    """The SPEC.md §4 metrics of several seeds' runs of one sequence and the lifelong-learning metrics,
    each with its bootstrap CI (``None`` where the inputs are missing)."""

    average_performance: Estimate
    forgetting: Estimate
    forward_transfer: Estimate | None
    backward_transfer: Estimate | None = None
    performance_maintenance: Estimate | None = None
    relative_performance: Estimate | None = None
    sample_efficiency: Estimate | None = None

    def to_dict(self) -> dict[str, dict[str, float] | None]:
        return asdict(self)


def summarize(
    runs: Sequence[ContinualResult],
    reference: Mapping[str, float] | None = None,
    window: int = 1,
    max_performance: float = 1.0,
    confidence: float = 0.95,
    reference_final: Mapping[str, float] | None = None,
) -> ContinualSummary:
    """Every metric over seeds: each run's mean over tasks, then its bootstrap CI over the runs.

    :param runs: one run per seed, all of the same sequence
    :param reference: ``AUC_ref`` per task name (:func:`reference_auc`); without it no forward transfer
        and no sample efficiency
    :param window: evaluations averaged into each task's final performance
    :param max_performance: the best possible performance, for forward transfer (1 for success rates;
        for returns the best possible return)
    :param reference_final: ``p_ref`` per task name (:func:`reference_final_performance`); without it
        no relative performance
    :raises ValueError: e.g. a reference that leaves forward transfer undefined (see :func:`forward_transfer`):
        the summary never averages an infinite or ``nan`` transfer
    """
    if not runs:
        raise ValueError("summarize needs at least one run")
    if len({run.task_names for run in runs}) != 1:
        raise ValueError("all runs must be of the same sequence (same task names in the same order)")

    def over_seeds(metric: Callable[[ContinualResult], np.ndarray]) -> Estimate:
        return bootstrap_ci([float(metric(run).mean()) for run in runs], confidence)

    return ContinualSummary(
        average_performance=bootstrap_ci([average_performance(run, window) for run in runs], confidence),
        forgetting=over_seeds(forgetting),
        forward_transfer=None
        if reference is None
        else over_seeds(lambda run: forward_transfer(run, reference, max_performance)),
        backward_transfer=over_seeds(backward_transfer) if runs[0].n_tasks > 1 else None,
        performance_maintenance=over_seeds(performance_maintenance),
        relative_performance=None
        if reference_final is None
        else over_seeds(lambda run: relative_performance(run, reference_final)),
        sample_efficiency=None if reference is None else over_seeds(lambda run: sample_efficiency(run, reference)),
    )
