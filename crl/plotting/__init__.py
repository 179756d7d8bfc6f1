"""Plots of runs: plasticity metrics and evaluations against env steps with tasks shaded, performance matrices.

:func:`write_run_plots` draws an MLflow run's plots and logs them as its artifacts; :func:`write_plots`
draws any :class:`RunRecord` s (from :func:`load_runs`: MLflow runs or local directories);
``python -m crl.plot`` is the command line.
"""

from crl.plotting.figures import evaluation_figure, performance_matrix_figure, plasticity_figure
from crl.plotting.runs import Curve, PlotError, RunRecord, load_runs
from crl.plotting.write import write_plots, write_run_plots

__all__ = [
    "Curve",
    "PlotError",
    "RunRecord",
    "evaluation_figure",
    "load_runs",
    "performance_matrix_figure",
    "plasticity_figure",
    "write_plots",
    "write_run_plots",
]
