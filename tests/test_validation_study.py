"""The validation study's statistics, experiment files, runner and report (bench/validation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric
from rich.console import Console

from bench.validation.experiment import (
    ExperimentError,
    experiment_paths,
    load_experiment,
    override_arguments,
)
from bench.validation.report import write_report
from bench.validation.run import check_all, mlflow_experiment, run_experiment, variant_arguments
from bench.validation.stats import difference_interval, iqm, iqm_interval
from crl import train
from crl.config.build import build_sequence
from crl.config.curriculum import load_curriculum
from crl.config.errors import ConfigError
from crl.continual import ContinualResult
from crl.tracking.runs import create_run

ROOT = Path(__file__).parents[1]
RANK = "plasticity/actor/layer1/pca_rank"


def test_iqm_is_the_mean_of_the_middle_half() -> None:
    # 8 entries: the lowest 2 and the highest 2 are cut, whatever their size
    scores = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [-100.0, 100.0]])
    assert iqm(scores) == pytest.approx((2 + 3 + 4 + 5) / 4)


def test_iqm_interval_brackets_the_point_and_stays_within_the_data() -> None:
    scores = np.array([3.0, 5.0, 4.0, 6.0, 5.5, 4.5])
    interval = iqm_interval(scores, repetitions=2_000)
    assert interval.point == pytest.approx(iqm(scores[:, None]))
    assert 3.0 <= interval.low <= interval.point <= interval.high <= 6.0
    assert interval.low < interval.high


def test_difference_interval_excludes_zero_only_for_separated_groups() -> None:
    control = np.array([1.0, 1.2, 0.9, 1.1, 1.05])
    separated = difference_interval(control + 2.0, control, repetitions=2_000)
    assert separated.point == pytest.approx(2.0)
    assert separated.low > 0 and separated.excludes_zero()
    overlapping = difference_interval(control[::-1] + 0.01, control, repetitions=2_000)
    assert overlapping.low < 0 < overlapping.high and not overlapping.excludes_zero()
    with pytest.raises(ValueError, match="treatment has 2 tasks, control 1"):
        difference_interval(np.ones((5, 2)), np.ones((5, 1)))


def test_intervals_depend_on_their_seed_only_and_leave_numpys_generator_alone() -> None:
    treatment, control = np.array([1.0, 3.0, 2.0, 5.0, 4.0]), np.array([2.0, 1.0, 4.0, 3.0, 0.5])
    for interval in (
        lambda seed: difference_interval(treatment, control, seed=seed, repetitions=500),
        lambda seed: iqm_interval(treatment, seed=seed, repetitions=500),
    ):
        np.random.seed(1)
        first = interval(7)
        after = np.random.random()
        np.random.seed(2)
        assert interval(7) == first
        assert interval(8) != first
        np.random.seed(1)
        interval(9)
        assert np.random.random() == after  # the global generator continues as if nothing drew from it


def test_shipped_experiments_and_their_variants_validate() -> None:
    paths = experiment_paths()
    assert {path.stem for path in paths} == {
        "gradient_activity",
        "normalize_and_project",
        "ppo_epochs_pfo",
        "ppo_epochs_long",
        "ppo_epochs_switches",
        "dqn_replay_ratio",
        "task_switches",
        "adaptive_replay_ratio",
        "resets_replay_ratio",
        "weight_constraints",
        "sharpness",
        "trac",
        "trac_ppo",
    }
    check_all(paths)
    for path in paths:
        assert len(load_experiment(path).seeds) >= 5


EXPERIMENT = """
title: toy
direction: more epochs lower the rank
curriculum: {curriculum}
seeds: [0, 1, 2, 3, 4]
variants:
  few: {{}}
  many: {{hyperparameters.learning_starts: 500, interventions: [{{name: redo, tau: 0.2}}]}}
measures:
  rank: {{source: metric, key: {rank}, reduce: mean_last_fraction, fraction: 0.5, label: feature rank}}
  return: {{source: result, key: performance_after_training, label: return}}
claims:
  - {{text: many lowers the rank, measure: rank, treatment: many, control: few, direction: lower}}
  - {{text: many raises the return, measure: return, treatment: many, control: few, direction: higher}}
curves:
  - {{key: {rank}, label: rank}}
"""


def write_experiment(tmp_path: Path, text: str = EXPERIMENT) -> Path:
    path = tmp_path / "toy.yaml"
    path.write_text(text.format(curriculum=ROOT / "curricula" / "default.yaml", rank=RANK))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("seeds: [0, 1, 2, 3, 4]", "seeds: [0, 1]"), "key 'seeds' = [0, 1]: List should have at least 5 items"),
        (
            ("treatment: many, control: few, direction: lower", "treatment: mnay, control: few, direction: lower"),
            "claims[0].treatment = 'mnay': not in variants ['few', 'many']",
        ),
        (("title: toy", "title: toy\ntitel: x"), "unknown key 'titel'"),
        (("key: performance_after_training", "key: forgetting"), "'forgetting' is not a result measure; allowed:"),
        (
            ("curves:\n  - {{key: {rank}", "curves:\n  - {{key: interventions/sam/sharpness"),
            "key 'interventions/sam/sharpness' is not a metric of the plasticity suite",
        ),
    ],
)
def test_bad_experiment_files_name_the_key_and_what_is_allowed(tmp_path: Path, change: tuple, message: str) -> None:
    path = write_experiment(tmp_path, EXPERIMENT.replace(*change))
    with pytest.raises(ExperimentError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_experiment(path)


def test_variant_overrides_reach_the_curriculum(tmp_path: Path) -> None:
    path = write_experiment(tmp_path)
    experiment = load_experiment(path)
    assert override_arguments({"interventions": [{"name": "redo", "tau": 0.2}], "n_envs": 4}) == [
        "--set",
        "interventions=[{name: redo, tau: 0.2}]",
        "--set",
        "n_envs=4",
    ]
    curriculum = train.resolve(train.parse_args(variant_arguments(path, experiment, "many")))
    assert curriculum.hyperparameters["learning_starts"] == 500
    assert [(spec["name"], spec["tau"]) for spec in curriculum.interventions] == [("redo", 0.2)]
    assert curriculum.seeds == [0, 1, 2, 3, 4]
    assert curriculum.tracking.experiment == "validation/toy" and curriculum.tracking.run_name == "many"


def test_a_bad_variant_fails_before_anything_trains(tmp_path: Path) -> None:
    path = write_experiment(tmp_path, EXPERIMENT.replace("learning_starts: 500", "learning_strats: 500"))
    with pytest.raises(ConfigError, match="learning_strats"):
        check_all([path])


def test_minatar_preset_trains_a_chosen_subset_of_games(tmp_path: Path) -> None:
    path = ROOT / "bench" / "validation" / "curricula" / "dqn_minatar_breakout.yaml"
    sequence = build_sequence(load_curriculum(path), str(path))
    assert [task.name for task in sequence.tasks] == ["Breakout"]
    bad = load_curriculum(path, ["sequence.options.games=[Pong]"])
    with pytest.raises(ConfigError, match="'Pong' is not a MinAtar game; available:"):
        build_sequence(bad, str(path))


def _result(seed: int, returns: list[float]) -> ContinualResult:
    return ContinualResult(
        "toy",
        ("a", "b"),
        (100, 100),
        "mean_return",
        np.array([100, 200]),
        np.array([[returns[0], returns[0]], [0.0, returns[1]]]),
        seed,
    )


def log_variant(
    client: MlflowClient, path: Path, name: str, ranks: list[float], returns: list[float], tmp_path: Path
) -> str:
    """A finished launch as crl.train records it: a parent run and 5 child runs with metrics and result.json."""
    parent = create_run(client, mlflow_experiment(path), name)
    for seed in range(5):
        child = create_run(client, mlflow_experiment(path), f"{name}-seed{seed}", parent_run_id=parent)
        rank = ranks[seed]
        points = [Metric(RANK, value, 0, step) for step, value in ((0, 50.0), (100, rank + 1), (200, rank - 1))]
        client.log_batch(child, metrics=points, synchronous=True)
        directory = tmp_path / name / str(seed)
        directory.mkdir(parents=True)
        _result(seed, [returns[seed], returns[seed] + 1]).save(directory / "result.json")
        client.log_artifact(child, str(directory / "result.json"))
        client.set_terminated(child, "FINISHED")
    client.set_terminated(parent, "FINISHED")
    return parent


def test_report_decides_each_claim_from_the_runs(tmp_path: Path) -> None:
    path = write_experiment(tmp_path)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    log_variant(client, path, "few", [40.0, 42.0, 41.0, 39.0, 43.0], [10.0, 12.0, 11.0, 9.0, 10.5], tmp_path)
    log_variant(client, path, "many", [20.0, 22.0, 21.0, 19.0, 23.0], [11.0, 9.5, 10.0, 12.0, 10.2], tmp_path)
    output = tmp_path / "docs" / "RESULTS.md"
    output.parent.mkdir()
    write_report([path], client.tracking_uri, output, Console(quiet=True), repetitions=2_000)
    text = output.read_text()
    assert "**1 of 2 claims reproduced**" in text
    rank_row = next(line for line in text.splitlines() if line.startswith("| many lowers the rank"))
    # the rank measure is the mean of the last half of the points: (rank + 1 + rank - 1) / 2 = rank
    assert "-20 [" in rank_row and "**reproduced**" in rank_row
    return_row = next(line for line in text.splitlines() if line.startswith("| many raises the return"))
    assert "not reproduced (interval includes zero)" in return_row
    assert "| `few` | (the curriculum as is) | 5 |" in text
    assert {png.name for png in (tmp_path / "docs" / "results").glob("*.png")} == {
        "toy_intervals.png",
        "toy_curve0.png",
    }


def test_runner_skips_variants_whose_launch_finished(tmp_path: Path) -> None:
    path = write_experiment(tmp_path)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    for name in ("few", "many"):
        log_variant(client, path, name, [1.0] * 5, [1.0] * 5, tmp_path)
    console = Console(record=True, width=200)
    assert run_experiment(path, client.tracking_uri, workers=1, console=console) == 0
    output = console.export_text()
    assert "toy/few: finished" in output and "toy/many: finished" in output
    assert len(client.search_runs([client.get_experiment_by_name("validation/toy").experiment_id])) == 12
