"""Render the validation study from MLflow into ``docs/RESULTS.md`` and ``docs/results/*.png``.

For every experiment: its variants' finished runs (one per seed) are read back; every measure becomes
a ``seeds x tasks`` score matrix per variant, summarised as IQM with a 95 % stratified-bootstrap
interval (:mod:`bench.validation.stats`); every claim's effect ``IQM(treatment) - IQM(control)`` gets
its interval and a verdict; curves of the logged metrics are drawn per variant. Wall time is the sum
of the child runs' durations (one core each).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch as th
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from rich.console import Console

from bench.validation.experiment import Claim, Experiment, Measure, load_experiment
from bench.validation.run import mlflow_experiment, variant_parent_runs
from bench.validation.stats import REPETITIONS, Interval, difference_interval, iqm, iqm_interval
from crl.continual import ContinualResult
from crl.continual.metrics import area_under_curve, final_performance, performance_after_training
from crl.plotting.figures import new_figure, shade_tasks, task_boundaries
from crl.plotting.runs import Curve, RunRecord, load_mlflow_runs

RESULT_MEASURES: dict[str, Callable[[ContinualResult], np.ndarray]] = {
    "performance_after_training": performance_after_training,
    "final_performance": final_performance,
    "area_under_curve": area_under_curve,
}
COMMAND = "python -m bench.validation report"
CURVE_REPETITIONS = 2_000


@dataclass(frozen=True)
class VariantRuns:
    """A variant's finished runs, one per seed, and their total wall time in seconds."""

    name: str
    records: list[RunRecord]
    seconds: float


@dataclass(frozen=True)
class Verdict:
    """A claim decided: the effect's interval and whether it lies on the expected side of zero."""

    claim: Claim
    effect: Interval
    control_iqm: float

    @property
    def reproduced(self) -> bool:
        return self.effect.low > 0 if self.claim.direction == "higher" else self.effect.high < 0

    @property
    def opposite(self) -> bool:
        return self.effect.high < 0 if self.claim.direction == "higher" else self.effect.low > 0

    def text(self) -> str:
        if self.reproduced:
            return "**reproduced**"
        return "**opposite** (interval excludes zero)" if self.opposite else "not reproduced (interval includes zero)"


def metric_score(curve: Curve, measure: Measure) -> float:
    """One run's value of a ``metric`` measure: its last value or its mean over the last steps."""
    if curve.values.size == 0:
        raise ValueError(f"metric {measure.key!r} was never logged")
    if measure.reduce == "last":
        return float(curve.values[-1])
    count = max(1, round(measure.fraction * curve.values.size))
    return float(curve.values[-count:].mean())


def run_scores(record: RunRecord, measure: Measure) -> np.ndarray:
    """One run's scores of ``measure``: one per task for result measures, else a single value."""
    if measure.source == "metric":
        if measure.key not in record.metrics:
            raise ValueError(f"run {record.name!r} has no metric {measure.key!r}")
        return np.array([metric_score(record.metrics[measure.key], measure)])
    if record.result is None:
        raise ValueError(f"run {record.name!r} has no result.json")
    return RESULT_MEASURES[measure.key](record.result)[measure.from_task :]


def score_matrices(measure: Measure, variants: Mapping[str, VariantRuns]) -> dict[str, np.ndarray]:
    """Variant -> ``seeds x tasks`` scores, divided per task by the ``normalize_by`` variant's IQM."""
    matrices = {name: np.stack([run_scores(run, measure) for run in runs.records]) for name, runs in variants.items()}
    if measure.normalize_by is None:
        return matrices
    if measure.normalize_by not in matrices:
        return {}
    reference = np.array([iqm(column[:, None]) for column in matrices[measure.normalize_by].T])
    return {name: scores / reference for name, scores in matrices.items()}


def decide(claim: Claim, matrices: Mapping[str, np.ndarray], repetitions: int = REPETITIONS) -> Verdict | None:
    """The claim's verdict, or ``None`` when one of its variants has no runs."""
    if claim.treatment not in matrices or claim.control not in matrices:
        return None
    effect = difference_interval(matrices[claim.treatment], matrices[claim.control], repetitions=repetitions)
    return Verdict(claim, effect, iqm(matrices[claim.control]))


def load_variants(client: MlflowClient, path: Path, experiment: Experiment) -> dict[str, VariantRuns]:
    """The variants whose launch has finished, with their child runs."""
    parents = variant_parent_runs(client, path)
    variants = {}
    for name in experiment.variants:
        parent = parents.get(name)
        if parent is None or parent.info.status != "FINISHED":
            continue
        variants[name] = VariantRuns(name, load_mlflow_runs(client, parent.info.run_id), _seconds(client, parent))
    return variants


def _seconds(client: MlflowClient, parent: Run) -> float:
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.{MLFLOW_PARENT_RUN_ID} = '{parent.info.run_id}'"
    )
    return sum((child.info.end_time - child.info.start_time) / 1000 for child in children if child.info.end_time)


def curve_figure(key: str, label: str, variants: Mapping[str, VariantRuns], path: Path, repetitions: int) -> None:
    """IQM over seeds of a metric at each measurement, with its 95 % interval band, one line per variant."""
    figure = new_figure(6.0, 3.2)
    ax = figure.subplots()
    every_record = [record for runs in variants.values() for record in runs.records]
    shade_tasks(ax, task_boundaries(every_record))
    for name, runs in variants.items():
        curves = [record.metrics[key] for record in runs.records if key in record.metrics]
        if len(curves) < 2:
            continue
        points = min(curve.values.size for curve in curves)
        steps = np.median([curve.steps[:points] for curve in curves], axis=0)
        values = np.stack([curve.values[:points] for curve in curves])
        estimates = [iqm_interval(values[:, k], repetitions=repetitions) for k in range(points)]
        ax.plot(steps, [estimate.point for estimate in estimates], label=name)
        ax.fill_between(steps, [e.low for e in estimates], [e.high for e in estimates], alpha=0.2, linewidth=0)
    ax.set_xlabel("environment steps")
    ax.set_ylabel(label, fontsize=8)
    ax.legend(fontsize=7)
    figure.savefig(path, dpi=110)


def interval_figure(experiment: Experiment, estimates: Mapping[str, Mapping[str, Interval]], path: Path) -> None:
    """Every measure's IQM and 95 % interval per variant, one panel per measure."""
    measures = [name for name in experiment.measures if estimates[name]]
    figure = new_figure(3.3 * len(measures), 0.45 * len(experiment.variants) + 1.0)
    axes = np.atleast_1d(figure.subplots(1, len(measures)))
    for ax, measure in zip(axes, measures, strict=True):
        names = [name for name in experiment.variants if name in estimates[measure]]
        for row, estimate in enumerate(estimates[measure][name] for name in names):
            ax.plot([estimate.low, estimate.high], [row, row], linewidth=6, alpha=0.5, solid_capstyle="butt")
            ax.plot([estimate.point], [row], marker="|", color="black", markersize=12)
        ax.set_yticks(range(len(names)), names if ax is axes[0] else [""] * len(names), fontsize=8)
        ax.set_title(measure, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    figure.savefig(path, dpi=110)


def experiment_section(
    path: Path,
    experiment: Experiment,
    variants: Mapping[str, VariantRuns],
    figures: Path,
    docs: Path,
    repetitions: int = REPETITIONS,
) -> tuple[str, list[Verdict]]:
    """The Markdown section of one experiment, and its claims' verdicts."""
    lines = [f"## {experiment.title}", "", f"**Published direction.** {experiment.direction}", ""]
    lines += [
        f"**Setup.** [`{experiment.curriculum}`]({_relative(path.parent / experiment.curriculum, docs)}), "
        f"variants from [`{path.name}`]({_relative(path, docs)}), seeds {experiment.seeds}; "
        f"MLflow experiment `{mlflow_experiment(path)}`.",
        "",
        "| variant | overrides | runs | wall time (sum over seeds, one core each) |",
        "|---|---|---|---|",
    ]
    for name, overrides in experiment.variants.items():
        runs = variants.get(name)
        settings = ", ".join(f"`{key}={value}`" for key, value in overrides.items()) or "(the curriculum as is)"
        done = f"{len(runs.records)}" if runs else "not run"
        wall = f"{runs.seconds / 60:.1f} min" if runs else ""
        lines.append(f"| `{name}` | {settings} | {done} | {wall} |")
    total = sum(runs.seconds for runs in variants.values())
    lines += ["", f"Wall time of the experiment: {total / 60:.1f} core-minutes.", ""]
    matrices = {name: score_matrices(measure, variants) for name, measure in experiment.measures.items()}
    estimates = {
        measure: {variant: iqm_interval(scores, repetitions=repetitions) for variant, scores in by_variant.items()}
        for measure, by_variant in matrices.items()
    }
    lines += _measure_table(experiment, estimates)
    verdicts = [
        verdict
        for claim in experiment.claims
        if (verdict := decide(claim, matrices[claim.measure], repetitions)) is not None
    ]
    lines += _claim_table(experiment, verdicts)
    stem = path.stem
    if any(matrices.values()):
        interval_figure(experiment, estimates, figures / f"{stem}_intervals.png")
        lines += [f"![IQM and 95 % intervals]({_relative(figures / f'{stem}_intervals.png', docs)})", ""]
    for index, curve in enumerate(experiment.curves):
        shown = {name: runs for name, runs in variants.items() if curve.variants is None or name in curve.variants}
        if shown:
            file = figures / f"{stem}_curve{index}.png"
            curve_figure(curve.key, curve.label, shown, file, min(repetitions, CURVE_REPETITIONS))
            lines += [f"![{curve.label}]({_relative(file, docs)})", ""]
    if experiment.discussion:
        lines += ["**Discussion.** " + experiment.discussion.strip(), ""]
    return "\n".join(lines), verdicts


def _measure_table(experiment: Experiment, estimates: Mapping[str, Mapping[str, Interval]]) -> list[str]:
    names = list(experiment.measures)
    lines = ["IQM over seeds (and tasks) with its 95 % stratified-bootstrap interval:", ""]
    lines += ["| variant | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for variant in experiment.variants:
        cells = [estimates[m][variant].text() if variant in estimates[m] else "" for m in names]
        lines.append(f"| `{variant}` | " + " | ".join(cells) + " |")
    lines += [""] + [f"- `{name}`: {measure.label}" for name, measure in experiment.measures.items()] + [""]
    return lines


def _claim_table(experiment: Experiment, verdicts: Sequence[Verdict]) -> list[str]:
    lines = ["| claim | expected | effect: IQM(treatment) - IQM(control) [95 % CI] | relative to control | verdict |"]
    lines.append("|---|---|---|---|---|")
    for verdict in verdicts:
        claim = verdict.claim
        relative = verdict.effect.point / abs(verdict.control_iqm) if verdict.control_iqm else float("nan")
        lines.append(
            f"| {claim.text} (`{claim.treatment}` vs `{claim.control}`, {claim.measure}) | {claim.direction} | "
            f"{verdict.effect.text()} | {relative:+.0%} | {verdict.text()} |"
        )
    missing = len(experiment.claims) - len(verdicts)
    if missing:
        lines.append(f"| {missing} claim(s) not decided: a variant has no finished runs | | | | |")
    return [*lines, ""]


def _relative(path: Path, start: Path) -> str:
    """``path`` as a link from a document in ``start``."""
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def write_report(
    paths: Sequence[Path], tracking_uri: str, output: Path, console: Console, repetitions: int = REPETITIONS
) -> None:
    """Write the report of the experiments ``paths`` to ``output``, its figures beside it in ``results/``.

    :param repetitions: bootstrap resamples of every interval (curves: at most ``CURVE_REPETITIONS``)
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    figures = output.parent / "results"
    figures.mkdir(parents=True, exist_ok=True)
    sections, verdicts = [], []
    for path in paths:
        experiment = load_experiment(path)
        variants = load_variants(client, path, experiment)
        console.print(f"{path.stem}: {len(variants)}/{len(experiment.variants)} variants finished")
        section, decided = experiment_section(path, experiment, variants, figures, output.parent, repetitions)
        sections.append(section)
        verdicts += decided
    output.write_text(_header(verdicts, repetitions) + "\n\n".join(sections))
    console.print(f"wrote {output} and {len(list(figures.glob('*.png')))} figures in {figures}")


def _header(verdicts: Sequence[Verdict], repetitions: int) -> str:
    reproduced = sum(verdict.reproduced for verdict in verdicts)
    return "\n".join(
        [
            "# Validation: the published plasticity findings at CPU scale",
            "",
            "Generated by `python -m bench.validation report` from the runs of `python -m bench.validation run`",
            "(see [bench/validation/README.md](../bench/validation/README.md)); do not edit by hand: the",
            "discussions live in the experiment files.",
            "",
            f"Machine: {platform.processor() or platform.machine()}, {th.get_num_threads()} torch threads available,",
            f"Python {platform.python_version()}, torch {th.__version__}; every run trains on one torch thread.",
            "",
            f"**{reproduced} of {len(verdicts)} claims reproduced** (the 95 % interval of the effect lies on the",
            "expected side of zero). IQM = interquartile mean over seeds and tasks; intervals: stratified",
            f"bootstrap (rliable), {repetitions:,} resamples (metric curves: {CURVE_REPETITIONS:,}).",
            "",
            "",
        ]
    )
