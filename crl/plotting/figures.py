"""The figures: plasticity metrics and per-task evaluations against env steps, the performance matrix.

Figures are built on :class:`matplotlib.figure.Figure` with an Agg canvas, never through pyplot, so
plotting keeps no global state and works without a display. Each function returns the figure, for the
caller to save (and for tests to inspect).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from crl.continual.results import ContinualResult
from crl.plotting.runs import Curve, PlotError, RunRecord

TASK_SHADES = ("#e8e8e8", "#f7f7f7")
"""Alternating background colours of consecutive tasks."""
TASK_SPAN_GID = "task-span"
"""The ``gid`` of each task's background span (one per task and axes)."""
MAX_TASK_LABELS = 10
"""Above this many tasks the spans are labelled by index instead of name."""
MAX_ANNOTATED_CELLS = 400
"""The performance matrix's cells are written out up to this many."""


def new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def task_boundaries(runs: Sequence[RunRecord]) -> RunRecord | None:
    """The run whose task boundaries every plot of ``runs`` shades (one with a result, if any).

    :raises PlotError: if runs with results disagree on where their tasks start
    """
    with_result = [run for run in runs if run.result is not None]
    for run in with_result[1:]:
        if not np.array_equal(run.task_starts, with_result[0].task_starts):
            raise PlotError(
                f"runs {with_result[0].name!r} and {run.name!r} have different task boundaries: "
                f"{with_result[0].task_starts.tolist()} vs {run.task_starts.tolist()}"
            )
    candidates = with_result or [run for run in runs if run.task_starts.size]
    return candidates[0] if candidates else None


def shade_tasks(ax: Axes, boundaries: RunRecord | None, max_names: int = MAX_TASK_LABELS) -> None:
    """One background span per task, alternating shades, labelled with the task above the axes.

    :param max_names: above this many tasks the spans are labelled by index (names would overlap)
    """
    if boundaries is None:
        return
    n_tasks = len(boundaries.task_starts)
    above = blended_transform_factory(ax.transData, ax.transAxes)
    for index, (start, end) in enumerate(zip(boundaries.task_starts, boundaries.task_ends, strict=True)):
        ax.axvspan(float(start), float(end), color=TASK_SHADES[index % 2], zorder=0, linewidth=0, gid=TASK_SPAN_GID)
        label = boundaries.task_names[index] if n_tasks <= max_names else str(index)
        ax.text((start + end) / 2, 1.0, label, transform=above, ha="center", va="bottom", fontsize=6, clip_on=False)


def mean_and_range(curves: Sequence[Curve]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Steps, mean, min and max of ``curves`` over the steps all of them cover.

    Seeds of one setting are measured at the same steps as a rule; where they are not, each curve is
    linearly interpolated at the union of their steps inside the common range.
    """
    first = max(int(curve.steps[0]) for curve in curves)
    last = min(int(curve.steps[-1]) for curve in curves)
    steps = np.unique(np.concatenate([curve.steps for curve in curves]))
    steps = steps[(steps >= first) & (steps <= last)]
    values = np.stack([np.interp(steps, curve.steps, curve.values) for curve in curves])
    return steps, values.mean(axis=0), values.min(axis=0), values.max(axis=0)


def draw_runs(ax: Axes, curves: Sequence[tuple[RunRecord, Curve]]) -> None:
    """One line per run; where runs belong to several intervention groups, one line per group.

    A group of several runs (seeds) is drawn as its mean with a min-max band.
    """
    groups: dict[str, list[tuple[RunRecord, Curve]]] = {}
    for run, curve in curves:
        if curve.steps.size:
            groups.setdefault(run.group, []).append((run, curve))
    if len(groups) == 1:
        for run, curve in next(iter(groups.values())):
            ax.plot(curve.steps, curve.values, label=run.name, linewidth=1)
    else:
        labels = group_labels([members[0][0] for members in groups.values()])
        for label, members in zip(labels, groups.values(), strict=True):
            if len(members) == 1:
                ax.plot(members[0][1].steps, members[0][1].values, label=label, linewidth=1)
                continue
            steps, mean, low, high = mean_and_range([curve for _, curve in members])
            (line,) = ax.plot(steps, mean, label=f"{label} (mean of {len(members)})", linewidth=1)
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    if groups:
        ax.legend(fontsize=6, loc="best")


def group_labels(representatives: Sequence[RunRecord]) -> list[str]:
    """The groups' names: the interventions' names where they tell the groups apart, else with parameters."""
    short = [run.short_group for run in representatives]
    return short if len(set(short)) == len(short) else [run.group for run in representatives]


def plasticity_figure(runs: Sequence[RunRecord], key: str) -> Figure:
    """The metric ``key`` of every run against env steps, tasks shaded.

    :param runs: the runs (those without the metric are left out)
    :param key: a ``plasticity/<network>/<layer>/<metric>`` name
    """
    figure = new_figure(7, 3.5)
    ax = figure.add_subplot()
    shade_tasks(ax, task_boundaries(runs))
    draw_runs(ax, [(run, run.metrics[key]) for run in runs if key in run.metrics])
    ax.set_xlabel("environment steps")
    ax.set_ylabel(key.rsplit("/", 1)[-1])
    ax.set_title(key, fontsize=9, pad=12)
    return figure


def evaluation_figure(runs: Sequence[RunRecord]) -> Figure:
    """One axes per task: its evaluated performance against env steps, every task's span shaded.

    :param runs: the runs (those without a result are left out)
    :raises PlotError: if no run has a result
    """
    boundaries = task_boundaries(runs)
    with_result = [run for run in runs if run.result is not None]
    if boundaries is None or boundaries.result is None:
        raise PlotError("no run has a result: nothing to draw the evaluation curves from")
    reference = boundaries.result
    n_columns = min(reference.n_tasks, 3)
    n_rows = -(-reference.n_tasks // n_columns)
    figure = new_figure(4 * n_columns, 2.6 * n_rows)
    axes = figure.subplots(n_rows, n_columns, squeeze=False, sharex=True, sharey=True).ravel()
    for task, ax in enumerate(axes[: reference.n_tasks]):
        shade_tasks(ax, boundaries, max_names=MAX_TASK_LABELS // n_columns)  # a panel is 1/n_columns wide
        draw_runs(ax, [(run, task_curve(run.result, task)) for run in with_result if run.result is not None])
        ax.set_title(f"task {task}: {reference.task_names[task]}", fontsize=8, pad=12)
        ax.set_ylabel(reference.measure, fontsize=7)
    for ax in axes[reference.n_tasks :]:
        ax.set_axis_off()
    for ax in axes[-n_columns:]:
        ax.set_xlabel("environment steps")
    return figure


def task_curve(result: ContinualResult, task: int) -> Curve:
    """Task ``task``'s performance at every evaluation point of ``result``."""
    return Curve(result.eval_steps, result.performance[task])


def performance_matrix_figure(results: Sequence[ContinualResult], title: str) -> Figure:
    """The performance matrix (tasks x evaluation points) as a heatmap; the mean over ``results``.

    :param results: results of one setting (seeds), with the same tasks and evaluation steps
    :param title: the figure's title
    :raises PlotError: if the results' tasks or evaluation steps differ
    """
    reference = results[0]
    for result in results[1:]:
        if result.task_names != reference.task_names or not np.array_equal(result.eval_steps, reference.eval_steps):
            raise PlotError(f"{title}: the results have different tasks or evaluation steps and cannot be averaged")
    performance = np.mean([result.performance for result in results], axis=0)
    n_tasks, n_points = performance.shape
    figure = new_figure(max(5.0, 0.45 * n_points + 2.5), max(2.5, 0.35 * n_tasks + 1.5))
    ax = figure.add_subplot()
    image = ax.imshow(performance, aspect="auto", cmap="viridis", interpolation="nearest")
    figure.colorbar(image, ax=ax, label=reference.measure)
    ax.set_yticks(range(n_tasks), [f"{index}: {name}" for index, name in enumerate(reference.task_names)], fontsize=7)
    ax.set_xticks(range(n_points), [f"{step:,}" for step in reference.eval_steps], rotation=90, fontsize=6)
    ax.set_xlabel("evaluation at environment step")
    suffix = f" (mean of {len(results)} runs)" if len(results) > 1 else ""
    ax.set_title(f"{title}{suffix}", fontsize=9)
    if performance.size <= MAX_ANNOTATED_CELLS:
        middle = np.nanmean(performance) if np.isfinite(performance).any() else 0.0
        for (row, column), value in np.ndenumerate(performance):
            colour = "black" if value > middle else "white"
            ax.text(column, row, f"{value:.2g}", ha="center", va="center", fontsize=5, color=colour)
    return figure
