"""``python -m crl.train FILE``: train through a curriculum, one MLflow child run per seed.

Everything that can be wrong with the curriculum is checked before the first MLflow run is created:
the file is validated, the task sequence and the first seed's model are built. A problem prints one
line and exits with code 2, leaving no run behind. Then a parent run is created for the launch and a
child run per seed; SB3's logger writes into the child run with ``step`` = environment steps of the
whole sequence; the performance matrix, the continual metrics, the resolved ``config.yml``, the
command and the final model are logged at the end of each seed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, RunStatus
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger

from crl.algorithms import ContinualAlgorithm
from crl.config.build import build_model, build_sequence
from crl.config.curriculum import Curriculum, load_curriculum
from crl.config.errors import ConfigError
from crl.continual import ContinualResult, average_performance, forgetting, learn_continual
from crl.tracking.mlflow_writer import MLflowOutputFormat
from crl.tracking.runs import create_run, flatten
from crl.wrappers import TaskSequence

CONFIG_ERROR_EXIT = 2
EVALUATION_PREFIX = "continual/"
"""The loop records evaluations under this prefix; they are logged from the result at their exact steps."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="crl-train", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("curriculum", type=Path, help="the curriculum YAML file")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, help="run this one seed (instead of the curriculum's seeds)")
    seeds.add_argument("--seeds", type=str, help="comma-separated seeds, e.g. 0,1,2")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a key"
    )
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, then the file's)")
    return parser.parse_args(argv)


def resolve(args: argparse.Namespace) -> Curriculum:
    """The curriculum with the command line's overrides (``--set``, ``--seed(s)``, ``--tracking-uri``)."""
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seeds=[{args.seed}]")
    if args.seeds is not None:
        overrides.append(f"seeds=[{args.seeds}]")
    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if tracking_uri:
        overrides.append(f"tracking.tracking_uri={tracking_uri}")
    return load_curriculum(args.curriculum, overrides)


class TrainingProgress(BaseCallback):
    """Shows task i/n, steps, steps/s and the last evaluation; points the MLflow writer at global steps.

    :param progress: the rich progress display
    :param sequence: the tasks (for their budgets and names)
    :param writer: the MLflow output format whose step offset follows the current task
    :param seed: the seed, for the display
    """

    def __init__(self, progress: Progress, sequence: TaskSequence, writer: MLflowOutputFormat, seed: int) -> None:
        super().__init__()
        self.progress = progress
        self.sequence = sequence
        self.writer = writer
        self.seed = seed
        self.starts = np.concatenate(([0], np.cumsum(sequence.budgets)))
        self.last_evaluation = "-"
        self.started = time.perf_counter()
        self.bar = progress.add_task(f"seed {seed}", total=int(self.starts[-1]), info="")

    @property
    def task_start(self) -> int:
        assert isinstance(self.model, ContinualAlgorithm) and self.model.current_task is not None
        return int(self.starts[self.model.current_task])

    def _on_training_start(self) -> None:
        self.writer.step_offset = self.task_start
        # The task boundary: the task's index from its first step on.
        self.writer.client.log_batch(
            self.writer.run_id,
            metrics=[Metric("task", float(self.model.current_task), 0, self.task_start)],  # type: ignore[attr-defined, arg-type]
        )

    def _on_step(self) -> bool:
        if self.n_calls % 100 == 0:
            average = self.model.logger.name_to_value.get(f"{EVALUATION_PREFIX}average")
            if average is not None:
                self.last_evaluation = f"{average:.3g}"
            task = self.model.current_task  # type: ignore[attr-defined]
            steps = self.task_start + self.model.num_timesteps
            speed = steps / max(time.perf_counter() - self.started, 1e-9)
            self.progress.update(
                self.bar,
                completed=steps,
                info=f"{speed:,.0f} steps/s | task {task + 1}/{len(self.sequence)} {self.sequence.task_names[task]} | "
                f"last eval {self.last_evaluation}",
            )
        return True


def train_seed(
    curriculum: Curriculum,
    sequence: TaskSequence,
    model: ContinualAlgorithm,
    seed: int,
    client: MlflowClient,
    run_id: str,
    progress: Progress,
) -> ContinualResult:
    """Train one seed through the sequence, logging into the child run ``run_id``."""
    writer = MLflowOutputFormat(run_id, client, exclude_prefixes=(EVALUATION_PREFIX,))
    model.set_logger(Logger(folder=None, output_formats=[writer]))  # type: ignore[attr-defined]
    callback = TrainingProgress(progress, sequence, writer, seed)
    result = learn_continual(
        model,  # type: ignore[arg-type]
        sequence,
        eval_every=curriculum.evaluation.every,
        n_eval_episodes=curriculum.evaluation.n_episodes,
        deterministic_eval=curriculum.evaluation.deterministic,
        seed=seed,
        callback=callback,
        **curriculum.continual.model_dump(),
    )
    progress.update(callback.bar, completed=int(callback.starts[-1]))
    log_result(client, run_id, result)
    return result


def log_result(client: MlflowClient, run_id: str, result: ContinualResult) -> None:
    """The performance matrix at its evaluation steps, and the continual metrics at the last step."""
    metrics = []
    for column, step in enumerate(result.eval_steps):
        for index, name in enumerate(result.task_names):
            value = float(result.performance[index, column])
            metrics.append(Metric(f"{EVALUATION_PREFIX}{index}_{name}", value, 0, int(step)))
        metrics.append(Metric(f"{EVALUATION_PREFIX}average", float(result.performance[:, column].mean()), 0, int(step)))
    end = int(result.eval_steps[-1])
    metrics.append(Metric("final/average_performance", average_performance(result), 0, end))
    metrics.append(Metric("final/forgetting", float(np.mean(forgetting(result))), 0, end))
    for start in range(0, len(metrics), 1000):  # MLflow's batch limit for metrics
        client.log_batch(run_id, metrics=metrics[start : start + 1000], synchronous=True)


def summary_table(seeds: Sequence[int], results: Sequence[ContinualResult]) -> Table:
    table = Table(title="continual metrics")
    for column in ("seed", "average performance", "forgetting"):
        table.add_column(column, justify="right")
    for seed, result in zip(seeds, results, strict=True):
        table.add_row(str(seed), f"{average_performance(result):.4g}", f"{np.mean(forgetting(result)):.4g}")
    return table


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=True)
    source = str(args.curriculum)
    try:
        curriculum = resolve(args)
        sequence = build_sequence(curriculum, source)
        first_model = build_model(curriculum, sequence, curriculum.seeds[0], source)
    except ConfigError as error:
        console.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
        return CONFIG_ERROR_EXIT
    client = MlflowClient(tracking_uri=curriculum.tracking.tracking_uri)
    name = curriculum.tracking.run_name or args.curriculum.stem
    parent_id = create_run(
        client,
        curriculum.tracking.experiment,
        name,
        tags={"curriculum": source},
        params=flatten(curriculum.model_dump()),
    )
    command = shlex.join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)])
    status = RunStatus.to_string(RunStatus.FAILED)
    try:
        with tempfile.TemporaryDirectory() as directory:
            (Path(directory) / "config.yml").write_text(curriculum.to_yaml())
            (Path(directory) / "command.txt").write_text(command + "\n")
            client.log_artifact(parent_id, str(Path(directory) / "config.yml"))
            client.log_artifact(parent_id, str(Path(directory) / "command.txt"))
        results = []
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, TextColumn("{task.fields[info]}"), console=console) as progress:
            for index, seed in enumerate(curriculum.seeds):
                model = first_model if index == 0 else build_model(curriculum, sequence, seed, source)
                results.append(run_child(curriculum, sequence, model, seed, client, parent_id, name, progress))
        console.print(summary_table(curriculum.seeds, results))
        status = RunStatus.to_string(RunStatus.FINISHED)
    except KeyboardInterrupt:
        status = RunStatus.to_string(RunStatus.KILLED)
        raise
    finally:
        client.set_terminated(parent_id, status)
    console.print(f"MLflow parent run {parent_id} at {curriculum.tracking.tracking_uri}")
    return 0


def run_child(
    curriculum: Curriculum,
    sequence: TaskSequence,
    model: ContinualAlgorithm,
    seed: int,
    client: MlflowClient,
    parent_id: str,
    name: str,
    progress: Progress,
) -> ContinualResult:
    """One seed in its own child run (terminated as finished, failed or killed)."""
    run_id = create_run(
        client,
        curriculum.tracking.experiment,
        f"{name}-seed{seed}",
        tags={"seed": str(seed)},
        params={"seed": str(seed)},
        parent_run_id=parent_id,
    )
    status = RunStatus.to_string(RunStatus.FAILED)
    try:
        result = train_seed(curriculum, sequence, model, seed, client, run_id, progress)
        with tempfile.TemporaryDirectory() as directory:
            model.save(Path(directory) / "model.zip")  # type: ignore[attr-defined]
            result.save(Path(directory) / "result.json")
            client.log_artifact(run_id, str(Path(directory) / "model.zip"))
            client.log_artifact(run_id, str(Path(directory) / "result.json"))
        status = RunStatus.to_string(RunStatus.FINISHED)
        return result
    except KeyboardInterrupt:
        status = RunStatus.to_string(RunStatus.KILLED)
        raise
    finally:
        client.set_terminated(run_id, status)


if __name__ == "__main__":
    sys.exit(main())
