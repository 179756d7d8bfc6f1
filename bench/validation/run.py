"""Run validation experiments: every variant is one ``crl.train`` launch (a parent run, a child run per seed).

Runs go to the MLflow experiment ``validation/<experiment>``, the parent run named after the variant.
A variant whose parent run has FINISHED is skipped, one that was interrupted is resumed (``crl.train
--resume``): rerunning the command after an interruption completes the study without redoing work.
"""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from rich.console import Console

from bench.validation.experiment import Experiment, ExperimentError, load_experiment, override_arguments
from crl import train

EXPERIMENT_PREFIX = "validation/"


def mlflow_experiment(path: Path) -> str:
    """The MLflow experiment of the validation experiment file ``path``."""
    return EXPERIMENT_PREFIX + path.stem


def variant_arguments(path: Path, experiment: Experiment, variant: str) -> list[str]:
    """``crl.train`` arguments (without ``--workers``/``--tracking-uri``) of one variant."""
    tracking = {"tracking.experiment": mlflow_experiment(path), "tracking.run_name": variant}
    seeds = ",".join(str(seed) for seed in experiment.seeds)
    curriculum = str(path.parent / experiment.curriculum)
    return [curriculum, *override_arguments({**experiment.variants[variant], **tracking}), "--seeds", seeds]


def check(path: Path, variants: list[str] | None = None) -> Experiment:
    """Validate the experiment file and every variant's curriculum (nothing is built or run).

    :param variants: variant names that must exist in the file
    """
    experiment = load_experiment(path)
    unknown = sorted(set(variants or []) - set(experiment.variants))
    if unknown:
        raise ExperimentError(f"{path}: unknown variant(s) {unknown}; variants: {list(experiment.variants)}")
    for variant in experiment.variants:
        arguments = train.parse_args(variant_arguments(path, experiment, variant))
        train.resolve(arguments)
    return experiment


def variant_parent_runs(client: MlflowClient, path: Path) -> dict[str, Run]:
    """Variant name -> its most recent parent run in the experiment's MLflow experiment."""
    found = client.get_experiment_by_name(mlflow_experiment(path))
    if found is None:
        return {}
    runs = client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"], max_results=10_000)
    return {run.data.tags[MLFLOW_RUN_NAME]: run for run in runs if MLFLOW_PARENT_RUN_ID not in run.data.tags}


def run_experiment(
    path: Path, tracking_uri: str, workers: int, console: Console, variants: list[str] | None = None
) -> int:
    """Train every variant (or those named) of one experiment that has not finished.

    :return: the first failing exit code of ``crl.train``, or 0
    """
    experiment = check(path, variants)
    client = MlflowClient(tracking_uri=tracking_uri)
    for variant in variants or experiment.variants:
        parent = variant_parent_runs(client, path).get(variant)
        if parent is not None and parent.info.status == "FINISHED":
            console.print(f"{path.stem}/{variant}: finished (run {parent.info.run_id}), skipped")
            continue
        resume = [] if parent is None else ["--resume", parent.info.run_id]
        console.print(f"{path.stem}/{variant}: {'resuming' if resume else 'training'} seeds {experiment.seeds}")
        arguments = [*variant_arguments(path, experiment, variant), "--tracking-uri", tracking_uri]
        code = train.main([*arguments, "--workers", str(workers), *resume])
        if code != 0:
            return code
    return 0


def check_all(paths: list[Path], variants: list[str] | None = None) -> None:
    """Validate every experiment before the first one trains (a typo in the last file fails at once)."""
    for path in paths:
        check(path, variants)
