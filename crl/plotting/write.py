"""Write a run's plots as PNG files, and log them as artifacts of the run."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure
from mlflow import MlflowClient

from crl.plotting.figures import evaluation_figure, group_labels, performance_matrix_figure, plasticity_figure
from crl.plotting.runs import RESULT_FILE, PlotError, RunRecord, load_mlflow_runs

PLOTS_ARTIFACT_PATH = "plots"
EVALUATION_FILE = "evaluation.png"
PERFORMANCE_MATRIX_FILE = "performance_matrix.png"
DPI = 120


def write_plots(runs: Sequence[RunRecord], out_dir: str | Path) -> list[Path]:
    """Write every plot of ``runs`` under ``out_dir`` and return the files written.

    - ``plasticity/<network>/<layer>/<metric>.png``: each plasticity metric against env steps;
    - ``evaluation.png``: every task's performance against env steps;
    - ``performance_matrix.png`` (one group) or ``performance_matrix_<group>.png`` (one per
      intervention group): the performance matrix, averaged over the group's seeds.

    :param runs: the runs to draw together (e.g. the seeds of a launch)
    :param out_dir: the directory to write to (created if needed)
    :raises PlotError: if the runs have nothing to plot
    """
    out_dir = Path(out_dir)
    keys = sorted({key for run in runs for key in run.metrics})
    with_result = [run for run in runs if run.result is not None]
    if not keys and not with_result:
        names = ", ".join(run.name for run in runs)
        raise PlotError(f"nothing to plot: no plasticity metrics and no {RESULT_FILE} in run(s) {names}")
    written = [save(plasticity_figure(runs, key), out_dir / f"{key}.png") for key in keys]
    if with_result:
        written.append(save(evaluation_figure(runs), out_dir / EVALUATION_FILE))
        groups: dict[str, list[RunRecord]] = {}
        for run in with_result:
            groups.setdefault(run.group, []).append(run)
        labels = group_labels([members[0] for members in groups.values()])
        for label, members in zip(labels, groups.values(), strict=True):
            name = PERFORMANCE_MATRIX_FILE if len(groups) == 1 else f"performance_matrix_{slug(label)}.png"
            results = [run.result for run in members if run.result is not None]
            title = members[0].name if len(members) == 1 else label
            written.append(save(performance_matrix_figure(results, title), out_dir / name))
    return written


def save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path


def slug(text: str) -> str:
    """``text`` as a file-name part: runs of other characters than letters, digits, ``._-`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "group"


def write_run_plots(
    client: MlflowClient, run_id: str, out_dir: str | Path, artifact_path: str = PLOTS_ARTIFACT_PATH
) -> list[Path]:
    """Write the plots of MLflow run ``run_id`` (of its child runs, for a parent) and log them to the run.

    Call it after the run's ``result.json`` is logged; before that only the plasticity plots are drawn.

    :param client: the client of the run's tracking store
    :param run_id: the run (a seed's child run or a launch's parent run)
    :param out_dir: where the PNG files are written
    :param artifact_path: the run's artifact directory that receives them (the layout under ``out_dir``
        is kept; other files in ``out_dir`` are not logged)
    :return: the files written
    """
    out_dir = Path(out_dir)
    written = write_plots(load_mlflow_runs(client, run_id), out_dir)
    for path in written:
        folder = path.parent.relative_to(out_dir).as_posix()
        client.log_artifact(run_id, str(path), artifact_path if folder == "." else f"{artifact_path}/{folder}")
    return written
