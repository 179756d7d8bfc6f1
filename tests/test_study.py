"""``python -m crl.study``: study files, search spaces, objectives, trials in MLflow, pruning, relaunch.

The tests with two workers and a killed worker need a PostgreSQL server: ``.ci/run`` starts one and
sets ``CRL_TEST_POSTGRES_URL``; without it they are skipped.
"""

from __future__ import annotations

import inspect
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
import torch
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from optuna.trial import TrialState
from rich.progress import Progress

from crl.config.curriculum import load_curriculum, set_path
from crl.continual import ContinualResult, forgetting
from crl.study.cli import main
from crl.study.config import OWN_OPTIONS, PRUNERS, SAMPLERS, _annotations, load_study
from crl.study.objective import area_under_evaluation_curve, mean_forgetting, metric_key_problem
from crl.study.runs import (
    CONTINUED_TAG,
    FAILED,
    FINISHED,
    STORAGE_TAG,
    STUDY_TAG,
    TRIAL_TAG,
    create_trial_run,
    experiment_id,
    reopen_trial_run,
    set_shared_tag,
    storage_tag,
)
from crl.study.sampler import TrialSeededSampler
from crl.study.space import SearchSpace
from crl.study.storage import FINGERPRINT_ATTR, StaleTrialHandler, open_storage, open_study
from crl.study.trial import (
    RUN_ATTR,
    SURPLUS_ATTR,
    WORKER_ATTR,
    TaskEndReport,
    Throttled,
    TrialRunner,
    continued_run,
    counted,
    queue_again,
    study_checkpoints,
    trial_checkpoints,
)
from crl.study.worker import TrialCounts, run_worker
from crl.train import CONFIG_ERROR_EXIT, FAILED_EXIT, INTERRUPTED_EXIT, RunTakenOver
from crl.train import main as train

POSTGRES_URL = os.environ.get("CRL_TEST_POSTGRES_URL")
needs_postgres = pytest.mark.skipif(not POSTGRES_URL, reason="CRL_TEST_POSTGRES_URL is not set (.ci/run sets it)")

CURRICULUM = """\
algorithm: DQN
policy_options: {net_arch: [16]}
hyperparameters: {buffer_size: 500, learning_starts: 50, batch_size: 16, train_freq: 4}
interventions: [layer_norm, {name: redo, tau: 0.1, every: 100}]
sequence: {preset: cartpole_permuted, options: {n_tasks: 2}, steps_per_task: 200}
evaluation: {every: 100, n_episodes: 1}
tracking: {experiment: studies}
seeds: [0]
"""
STUDY = {
    "base": {"curriculum": "curriculum.yaml"},
    "search_space": {
        "interventions.redo.tau": {"type": "float", "low": 0.0, "high": 0.5},
        "hyperparameters.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    },
    "objective": {"measure": "auc"},
    "sampler": {"name": "random", "seed": 0},
    "n_trials": 2,
}


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow database: creating its tables takes seconds, copying it does not."""
    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_template: Path) -> Path:
    """A working directory with the base curriculum and an MLflow database."""
    monkeypatch.chdir(tmp_path)
    # Absolute: MLflow caches a store per URI, and a relative one would outlive its directory.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", _mlflow(tmp_path))
    (tmp_path / "curriculum.yaml").write_text(CURRICULUM)
    shutil.copy(mlflow_template, tmp_path / "mlflow.db")
    return tmp_path


def _mlflow(directory: Path) -> str:
    return f"sqlite:///{directory / 'mlflow.db'}"


def _optuna(directory: Path) -> str:
    """The default storage, beside mlflow.db."""
    return f"sqlite:///{directory / 'optuna.db'}"


def _write(directory: Path, name: str = "study", **changes: object) -> Path:
    data = {**STUDY, **changes}
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump({key: value for key, value in data.items() if value is not None}))
    return path


def _runs(directory: Path, experiment: str = "studies") -> list:
    client = MlflowClient(_mlflow(directory))
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def _study(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


PPO = {"algorithm": "PPO", "interventions": [], "hyperparameters": {"n_steps": 64, "batch_size": 32, "n_epochs": 2}}
"""Overrides that make the base curriculum PPO's."""


# --- study files -----------------------------------------------------------------------------------

MALFORMED = {
    "misspelled key": ({"n_trails": 3}, "unknown key 'n_trails' (did you mean 'n_trials'?)"),
    "unknown dimension type": (
        {"search_space": {"interventions.redo.tau": {"type": "flaot", "low": 0, "high": 1}}},
        "'search_space.interventions.redo.tau'",
    ),
    "low above high": (
        {"search_space": {"interventions.redo.tau": {"type": "float", "low": 0.5, "high": 0.1}}},
        "low must not exceed high",
    ),
    "log scale from zero": (
        {"search_space": {"hyperparameters.learning_rate": {"type": "float", "low": 0, "high": 1, "log": True}}},
        "a log scale needs low > 0",
    ),
    "misspelled hyperparameter": (
        {"search_space": {"hyperparameters.learnin_rate": {"type": "float", "low": 1e-4, "high": 1e-2}}},
        "unknown key 'hyperparameters.learnin_rate' (did you mean 'learning_rate'?)",
    ),
    "unknown intervention parameter": (
        {"search_space": {"interventions.redo.tua": {"type": "float", "low": 0, "high": 1}}},
        "intervention 'redo' has no parameter(s) ['tua']",
    ),
    "range outside the parameter's": (
        {"search_space": {"interventions.redo.tau": {"type": "float", "low": -1, "high": 1}}},
        "tau=-1.0: Input should be greater than or equal to 0",
    ),
    "intervention not in the curriculum": (
        {"search_space": {"interventions.pfo.coef": {"type": "float", "low": 0.1, "high": 1}}},
        "no item named 'pfo' in ['layer_norm', 'redo']",
    ),
    "misspelled intervention in a named set": (
        {"search_space": {"interventions": {"type": "categorical", "choices": {"none": [], "ln": ["layer_nrm"]}}}},
        "unknown intervention 'layer_nrm'",
    ),
    "unknown sampler": ({"sampler": "tpee"}, "key 'sampler.name' = 'tpee'"),
    "misspelled sampler option": (
        {"sampler": {"name": "tpe", "options": {"n_startup_trial": 3}}},
        "unknown key 'sampler.options.n_startup_trial' (did you mean 'n_startup_trials'?)",
    ),
    "pruner option rejected": (
        {"pruner": {"name": "median", "options": {"n_startup_trials": -1}}},
        "MedianPruner rejects them",
    ),
    "unknown measure": ({"objective": {"measure": "avg"}}, "key 'objective.measure' = 'avg'"),
    "metric without direction": (
        {"objective": {"measure": "metric", "key": "train/loss"}},
        "key 'direction' is missing",
    ),
    "plasticity metric never logged": (
        {"objective": {"measure": "metric", "key": "plasticity/q_net/all/dormant_ratio"}, "direction": "minimize"},
        "the base curriculum logs no plasticity metrics",
    ),
    "missing base curriculum": ({"base": {"curriculum": "nope.yaml"}}, "key 'base.curriculum' = 'nope.yaml'"),
    "grid over a float": ({"sampler": "grid"}, "the grid sampler takes categorical and int dimensions only"),
    "no number of trials": ({"n_trials": None}, "key 'n_trials' is missing"),
    "unnamed list choices": (
        {"search_space": {"interventions": {"type": "categorical", "choices": [[], ["layer_norm"]]}}},
        "give lists and mappings a name",
    ),
    "seed swept and seeds given": (
        {"seeds": [0, 1], "search_space": {"seed": {"type": "categorical", "choices": [0, 1]}}},
        "'seeds' and the search-space key 'seed' exclude each other",
    ),
    "not a storage URL": ({"storage": {"url": "not a url"}}, "is not a database URL"),
    "sampler option of another type": (
        {"sampler": {"name": "tpe", "options": {"n_startup_trials": "x"}}},
        "key 'sampler.options.n_startup_trials' = 'x': TPESampler takes int (Input should be a valid integer",
    ),
    "sampler option that is a function": (
        {"sampler": {"name": "tpe", "options": {"gamma": "lambda x: 1"}}},
        "key 'sampler.options.gamma' = 'lambda x: 1': TPESampler takes collections.abc.Callable[[int], int] | None "
        "(a function, which a YAML file cannot give)",
    ),
    "sampler option that is a sampler": (
        {"sampler": {"name": "qmc", "options": {"independent_sampler": "random"}}},
        "QMCSampler takes optuna.samplers._base.BaseSampler | None (an object of that class",
    ),
    "grace period within a heartbeat": (
        {"storage": {"heartbeat_interval": 60, "grace_period": 1}},
        "grace_period=1 must be longer than heartbeat_interval=60",
    ),
    "brute force over a float without a step": (
        {"sampler": "brute_force"},
        "the brute_force sampler needs a finite space: give the float dimension a 'step'",
    ),
    "brute force beyond its points": (
        {
            "sampler": "brute_force",
            "search_space": {"interventions.redo.tau": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.1}},
            "n_trials": 4,
        },
        "key 'n_trials' = 4: the brute_force sampler's space has 3 points only",
    ),
    "misspelled metric": (
        {"objective": {"measure": "metric", "key": "final/forgeting"}, "direction": "minimize"},
        "key 'objective.key' = 'final/forgeting': no run logs it (did you mean 'final/forgetting'?)",
    ),
    "metric of a group no run logs": (
        {"objective": {"measure": "metric", "key": "eval/mean_retrun"}, "direction": "maximize"},
        "key 'objective.key' = 'eval/mean_retrun': no run logs it",
    ),
    "a corner's sequence that cannot be built": (
        {"search_space": {"sequence.options.n_tasks": {"type": "int", "low": 0, "high": 3}}},
        "(search_space: sequence.options.n_tasks=0): sequence: n_tasks=0: must be an int >= 1",
    ),
    "named set without the parameter's intervention": (
        {
            "search_space": {
                "interventions": {"type": "categorical", "choices": {"none": [], "redo": ["redo"]}},
                "interventions.redo.tau": {"type": "float", "low": 0.0, "high": 0.5},
            }
        },
        "'interventions.redo': no item named 'redo' in []; every choice of 'interventions' must contain it",
    ),
    "window of a measure that takes none": (
        {"objective": {"measure": "auc", "window": 5}},
        "key 'objective.window' = 5: measure 'auc' takes no window; only 'average_performance' averages",
    ),
    "window of forgetting": (
        {"objective": {"measure": "forgetting", "window": 3}},
        "key 'objective.window' = 3: measure 'forgetting' takes no window",
    ),
    "metric of an intervention no trial has": (
        {
            "objective": {"measure": "metric", "key": "interventions/continual_backprop/replaced"},
            "direction": "minimize",
        },
        "key 'objective.key' = 'interventions/continual_backprop/replaced': no trial has the intervention "
        "'continual_backprop'; the base curriculum and the search space give the interventions layer_norm, redo",
    ),
    "misspelt task metric": (
        {"objective": {"measure": "metric", "key": "continual/0_permutaton-0"}, "direction": "maximize"},
        "key 'objective.key' = 'continual/0_permutaton-0': no task is logged under it (did you mean "
        "'continual/0_permutation-0'?); the sequence's tasks are logged as continual/0_permutation-0, "
        "continual/1_permutation-1",
    ),
    "task metric beyond the sequence": (
        {"objective": {"measure": "metric", "key": "continual/2_permutation-2"}, "direction": "maximize"},
        "key 'objective.key' = 'continual/2_permutation-2': no task is logged under it",
    ),
    "metric another algorithm logs": (
        {
            "base": {"curriculum": "curriculum.yaml", "overrides": PPO},
            "search_space": {"hyperparameters.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2}},
            "objective": {"measure": "metric", "key": "rollout/exploration_rate"},
            "direction": "maximize",
        },
        "key 'objective.key' = 'rollout/exploration_rate': only DQN and QRDQN log it; the study trains PPO",
    ),
    "intervention timed past the curriculum": (
        {
            "base": {
                "curriculum": "curriculum.yaml",
                "overrides": {"interventions": [{"name": "reset", "at_steps": [900]}]},
            },
            "search_space": {"hyperparameters.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2}},
        },
        "the base's key 'interventions[0].at_steps' = [900] (reset): [900] lie past the sequence's 400 environment "
        "steps",
    ),
    "study name that no MLflow filter can quote": (
        {"study_name": 'it\'s "x"'},
        "key 'study_name' = 'it\\'s \"x\"': MLflow cannot find a run by a value with both ' and \"",
    ),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_a_malformed_study_exits_2_with_one_line_before_anything_exists(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "curriculum.yaml").write_text(CURRICULUM)
    changes, expected = MALFORMED[case]
    path = _write(tmp_path, **changes)  # type: ignore[arg-type]
    assert main([str(path)]) == CONFIG_ERROR_EXIT
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: {path}") and "\n" not in error
    assert expected in error
    assert sorted(item.name for item in tmp_path.iterdir()) == ["curriculum.yaml", "study.yaml"]  # no database


def test_a_deleted_experiment_exits_2_before_the_study_exists(directory: Path, capsys) -> None:
    client = MlflowClient(_mlflow(directory))
    client.delete_experiment(client.create_experiment("studies"))
    assert main([str(_write(directory))]) == CONFIG_ERROR_EXIT
    error = capsys.readouterr().err
    assert "the base's key 'tracking.experiment' = 'studies': MLflow's experiment" in error and "is deleted" in error
    assert not (directory / "optuna.db").exists()


@pytest.mark.parametrize("cls", [*SAMPLERS.values(), *PRUNERS.values()], ids=lambda cls: cls.__name__)
def test_every_sampler_and_pruner_option_has_an_annotation_that_is_checked(cls: type) -> None:
    # Optuna annotates with names it imports for type checkers only; an option whose annotation
    # cannot be resolved would go unchecked (a new name must join _ANNOTATION_NAMES).
    options = set(inspect.signature(cls).parameters) - OWN_OPTIONS
    assert options <= set(_annotations(cls))


def test_a_python_tag_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.yaml").write_text("!!python/object/apply:os.system [echo hacked]\n")
    assert main(["study.yaml"]) == CONFIG_ERROR_EXIT
    assert "could not determine a constructor for the tag" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--best", "adir"], "--best 'adir' is a directory; give the file to write"),
        (["--best", "afile/best.yaml"], "--best 'afile/best.yaml': 'afile' is not a directory"),
        (
            ["--tracking-uri", "bogus://x", "--storage", "sqlite:///optuna.db"],
            "key 'tracking.tracking_uri' = 'bogus://x' (--tracking-uri, MLFLOW_TRACKING_URI or the base "
            "curriculum's): MLflow cannot use it",
        ),
    ],
    ids=["best is a directory", "best inside a file", "unknown tracking URI"],
)
def test_a_bad_argument_exits_2_with_one_line_before_anything_exists(
    arguments: list[str], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "curriculum.yaml").write_text(CURRICULUM)
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("")
    path = _write(tmp_path)
    assert main([str(path), *arguments]) == CONFIG_ERROR_EXIT
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: {path}") and "\n" not in error
    assert expected in error
    assert sorted(item.name for item in tmp_path.iterdir()) == ["adir", "afile", "curriculum.yaml", "study.yaml"]


def test_a_study_created_from_another_file_is_not_joined(directory: Path, capsys) -> None:
    assert main([str(_write(directory, n_trials=1))]) == 0
    changed = {"interventions.redo.tau": {"type": "float", "low": 0.0, "high": 0.2}}
    assert main([str(_write(directory, search_space=changed))]) == CONFIG_ERROR_EXIT
    assert "was created from a different study" in capsys.readouterr().err


def test_a_study_is_joined_from_any_file_that_gives_its_trials(directory: Path, capsys) -> None:
    overrides = {"tracking.experiment": "studies", "evaluation.n_episodes": 1}
    path = _write(directory, base={"curriculum": "curriculum.yaml", "overrides": overrides}, n_trials=1)
    assert main([str(path)]) == 0
    # The same curriculum spelt otherwise, the seeds given by the study, the defaults spelt out: the same trials.
    same = {"tracking": {"experiment": "studies"}, "evaluation": {"every": 100, "n_episodes": 1}}
    spelt = _write(directory, base={"curriculum": "curriculum.yaml", "overrides": same}, seeds=[0],
                   direction="maximize", pruner="median", n_trials=1)  # fmt: skip
    assert main([str(spelt)]) == 0, capsys.readouterr().err
    # The tracking and the checkpoints may change (docs/studies.md): runs go elsewhere, trials are the same.
    moved = {**overrides, "tracking.experiment": "elsewhere", "checkpoint.every": 1000}
    assert main([str(_write(directory, base={"curriculum": "curriculum.yaml", "overrides": moved}, n_trials=1))]) == 0
    assert [run.data.tags[STUDY_TAG] for run in _runs(directory, "elsewhere") if STUDY_TAG in run.data.tags] == [
        "study"
    ]
    # What a trial trains may not.
    other = {**overrides, "evaluation.n_episodes": 2}
    assert (
        main([str(_write(directory, base={"curriculum": "curriculum.yaml", "overrides": other}))]) == CONFIG_ERROR_EXIT
    )
    assert "was created from a different study" in capsys.readouterr().err
    assert len(_study(_optuna(directory), "study").trials) == 1


def test_a_study_created_with_the_earlier_fingerprint_is_joined(directory: Path) -> None:
    config = load_study(_write(directory))
    handler = StaleTrialHandler(MlflowClient(_mlflow(directory)), None)
    storage = open_storage(config, handler)
    study = optuna.create_study(storage=storage, study_name="study", direction="maximize")
    study.set_user_attr(FINGERPRINT_ATTR, config.legacy_fingerprint())  # as crl wrote it before
    assert config.legacy_fingerprint() != config.fingerprint()
    assert open_study(config, storage).user_attrs[FINGERPRINT_ATTR] == config.fingerprint()


def test_objective_keys_that_some_trial_may_log_are_accepted(tmp_path: Path) -> None:
    (tmp_path / "curriculum.yaml").write_text(CURRICULUM)
    n_tasks = "sequence.options.n_tasks"
    pfo_or_not = {"interventions": {"type": "categorical", "choices": {"none": [], "pfo": ["pfo"]}}}
    accepted = [  # (search space, base overrides, key)
        # a task of one choice's sequence only
        ({n_tasks: {"type": "categorical", "choices": [1, 3]}}, {}, "continual/2_permutation-2"),
        # a task between the bounds of a drawn number: not known before the trials, so not refused
        ({n_tasks: {"type": "int", "low": 1, "high": 3}}, {}, "continual/2_permutation-2"),
        ({n_tasks: {"type": "int", "low": 1, "high": 3}}, {}, "continual/7_anything"),
        # budgets do not change the tasks: still checked, and found
        ({"sequence.steps_per_task": {"type": "int", "low": 100, "high": 200}}, {}, "continual/1_permutation-1"),
        # an algorithm, an intervention of one choice only
        ({"algorithm": {"type": "categorical", "choices": ["PPO", "DQN"]}}, {**PPO, "hyperparameters": {}},
         "rollout/exploration_rate"),
        (pfo_or_not, PPO, "interventions/pfo/loss"),
        ({"interventions.redo.tau": {"type": "float", "low": 0.0, "high": 0.5}}, {}, "time/episodes"),
    ]  # fmt: skip
    for index, (space, overrides, key) in enumerate(accepted):
        base = {"curriculum": "curriculum.yaml", "overrides": overrides}
        objective = {"measure": "metric", "key": key}
        path = _write(tmp_path, f"s{index}", base=base, search_space=space, objective=objective, direction="maximize")
        assert load_study(path, storage_url="sqlite:///optuna.db").spec.objective.key == key


# --- search space, measures, sampler ---------------------------------------------------------------


def test_paths_address_keys_list_items_and_interventions_by_name() -> None:
    data: dict = {"interventions": ["layer_norm", {"name": "redo", "tau": 0.1}], "hyperparameters": {}}
    set_path(data, "interventions.redo.tau", 0.3)
    set_path(data, "interventions.layer_norm.placement", "post")
    set_path(data, "interventions.1.every", 50)
    set_path(data, "hyperparameters.learning_rate", 1e-3)
    set_path(data, "evaluation.n_episodes", 2)
    assert data == {
        "interventions": [{"name": "layer_norm", "placement": "post"}, {"name": "redo", "tau": 0.3, "every": 50}],
        "hyperparameters": {"learning_rate": 1e-3},
        "evaluation": {"n_episodes": 2},
    }
    with pytest.raises(ValueError, match=r"'interventions\[5\]' needs a list index in \[0, 2\)"):
        set_path(data, "interventions.5.tau", 0.1)
    with pytest.raises(ValueError, match="not a mapping or a list"):
        set_path(data, "hyperparameters.learning_rate.x", 1)


def test_a_named_set_is_applied_before_its_parameters(tmp_path: Path) -> None:
    (tmp_path / "curriculum.yaml").write_text(CURRICULUM)
    sets = {"redo": [{"name": "redo"}], "both": ["layer_norm", {"name": "redo"}]}
    space = {
        "interventions.redo.tau": {"type": "float", "low": 0.0, "high": 0.5},  # listed first, applied second
        "interventions": {"type": "categorical", "choices": sets},
        "seed": {"type": "int", "low": 3, "high": 4},
    }
    config = load_study(_write(tmp_path, search_space=space))
    parameters = config.space.from_params({"interventions": "both", "interventions.redo.tau": 0.25, "seed": 4})
    curriculum = config.trial_curriculum(parameters)
    assert [item["name"] for item in curriculum.interventions] == ["layer_norm", "redo"]
    assert curriculum.interventions[1]["tau"] == 0.25 and curriculum.seeds == [4]
    assert len(list(config.space.corner_combinations())) == 2 * 2 * 2  # every combination is validated


def test_a_list_index_in_brackets_names_the_same_dotted_parameter(tmp_path: Path) -> None:
    """A path names the trial's Optuna parameter and MLflow param: MLflow refuses brackets in names."""
    (tmp_path / "curriculum.yaml").write_text(CURRICULUM)
    space = {"interventions[1].tau": {"type": "float", "low": 0.0, "high": 0.5}}
    config = load_study(_write(tmp_path, search_space=space))
    assert list(config.space.dimensions) == ["interventions.1.tau"]
    parameters = config.space.from_params({"interventions.1.tau": 0.25})
    assert config.trial_curriculum(parameters).interventions[1]["tau"] == 0.25
    twice = {**space, "interventions.1.tau": {"type": "float", "low": 0.0, "high": 0.5}}
    with pytest.raises(ValueError) as info:
        load_study(_write(tmp_path, search_space=twice))
    # the file's keys in YAML's order
    assert "keys 'interventions.1.tau' and 'interventions[1].tau' name the same path 'interventions.1.tau'" in str(
        info.value
    )


def test_measures_on_a_constructed_result() -> None:
    # two tasks of 100 steps, evaluated at 50, 100, 150, 200
    performance = np.array([[1.0, 3.0, 2.0, 2.0], [0.0, 1.0, 3.0, 4.0]])
    result = ContinualResult("s", ("a", "b"), (100, 100), "mean_return", np.array([50, 100, 150, 200]), performance)
    # step-function area of the task mean (0.5, 2, 2.5, 3) over widths of 50, divided by 200
    assert area_under_evaluation_curve(result) == pytest.approx((0.5 + 2 + 2.5 + 3) * 50 / 200)
    assert mean_forgetting(result) == pytest.approx(np.mean(forgetting(result))) == pytest.approx(0.5)
    partial = ContinualResult("s", ("a", "b"), (100, 100), "mean_return", np.array([50, 100]), performance[:, :2])
    assert mean_forgetting(partial) == 0.0  # only task a has ended, at the last evaluation
    assert area_under_evaluation_curve(partial) == pytest.approx((0.5 + 2) * 50 / 100)


def test_a_seeded_sampler_draws_per_trial_the_same_in_any_process() -> None:
    def make() -> TrialSeededSampler:
        return TrialSeededSampler(lambda seed: optuna.samplers.RandomSampler(seed=seed), seed=7)

    def objective(trial: optuna.Trial) -> float:
        return trial.suggest_float("x", 0.0, 1.0)

    whole = optuna.create_study(sampler=make())
    whole.optimize(objective, n_trials=4)
    # a relaunch (a new sampler) continuing the same trials, as a second worker or a restarted process would
    first, second = optuna.create_study(sampler=make()), None
    first.optimize(objective, n_trials=2)
    second = optuna.create_study(sampler=make())
    for trial in first.trials:
        second.add_trial(trial)
    second.optimize(objective, n_trials=2)
    draws = [trial.params["x"] for trial in whole.trials]
    assert [trial.params["x"] for trial in second.trials] == draws
    assert len(set(draws)) == 4


def test_a_seeded_qmc_study_draws_one_low_discrepancy_sequence(tmp_path: Path) -> None:
    # Optuna keeps a QMC sampler's place in its sequence in the study, per seed: seeded per trial, each
    # trial would take the first point of another scrambled sequence, a random search.
    (tmp_path / "curriculum.yaml").write_text(CURRICULUM)
    config = load_study(_write(tmp_path, sampler={"name": "qmc", "seed": 3, "options": {"scramble": True}}))

    def draws(sampler: optuna.samplers.BaseSampler) -> list[dict]:
        study = optuna.create_study(sampler=sampler)
        study.optimize(lambda trial: float(len(config.space.suggest(trial).params)), n_trials=6)
        return [trial.params for trial in study.trials]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        assert draws(config.make_sampler()) == draws(optuna.samplers.QMCSampler(seed=3, scramble=True))


def test_brute_force_trains_each_point_once_by_default(tmp_path: Path) -> None:
    (tmp_path / "curriculum.yaml").write_text(CURRICULUM)
    space = {
        "interventions.redo.tau": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.1},
        "seed": {"type": "categorical", "choices": [0, 1]},
    }
    assert load_study(_write(tmp_path, sampler="brute_force", search_space=space, n_trials=None)).n_trials == 3 * 2


# --- trials in MLflow, pruning, failures ------------------------------------------------------------


def test_a_study_logs_trials_under_one_parent_and_writes_a_runnable_best(directory: Path) -> None:
    path = _write(directory, seeds=[0, 1])
    assert main([str(path)]) == 0
    study = _study(_optuna(directory), "study")
    assert [trial.state for trial in study.trials] == [TrialState.COMPLETE] * 2
    runs = _runs(directory)
    (parent,) = [run for run in runs if run.data.tags.get(STUDY_TAG) == "study"]
    trials = {run.info.run_id: run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert parent.info.status == "FINISHED" and len(trials) == 2
    for trial in study.trials:
        run = trials[trial.user_attrs[RUN_ATTR]]
        assert run.data.tags[TRIAL_TAG] == str(trial.number) and run.info.status == "FINISHED"
        assert float(run.data.params["interventions.redo.tau"]) == trial.params["interventions.redo.tau"]
        assert run.data.metrics["objective"] == trial.value
        seeds = [seed for seed in runs if seed.data.tags.get("mlflow.parentRunId") == run.info.run_id]
        assert sorted(seed.data.tags["seed"] for seed in seeds) == ["0", "1"]
        # reported at each task's end of each seed (steps 0, 1: seed 0; 2, 3: seed 1): the AUC so far
        client = MlflowClient(_mlflow(directory))
        for position, seed in enumerate(sorted(seeds, key=lambda seed: seed.data.tags["seed"])):
            result = ContinualResult.load(client.download_artifacts(seed.info.run_id, "result.json", str(directory)))
            first_task = ContinualResult(
                result.sequence, result.task_names, result.budgets, result.measure,
                result.eval_steps[:2], result.performance[:, :2],
            )  # fmt: skip
            assert trial.intermediate_values[2 * position] == pytest.approx(area_under_evaluation_curve(first_task))
            assert trial.intermediate_values[2 * position + 1] == pytest.approx(area_under_evaluation_curve(result))
        assert trial.value == pytest.approx(np.mean([trial.intermediate_values[1], trial.intermediate_values[3]]))

    best = directory / "study-best.yaml"
    assert load_curriculum(best).interventions[1]["tau"] == study.best_params["interventions.redo.tau"]
    assert train([str(best), "--set", "tracking.experiment=best", "--workers", "1"]) == 0
    assert {run.data.tags.get("seed") for run in _runs(directory, "best")} == {None, "0", "1"}


def test_pruned_diverged_and_crashed_trials_are_recorded_and_the_study_goes_on(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pruner stops a trial at its first report: the seed's run has the first task's evaluations only.
    pruned = _write(directory, "pruned", n_trials=1, pruner={"name": "threshold", "options": {"lower": 1e9}})
    assert main([str(pruned)]) == 0
    (trial,) = _study(_optuna(directory), "pruned").trials
    assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [0]
    client = MlflowClient(_mlflow(directory))
    run = client.get_run(trial.user_attrs[RUN_ATTR])
    assert run.info.status == "KILLED" and run.data.tags["optuna.state"] == "PRUNED"
    (seed_run,) = [seed for seed in _runs(directory) if seed.data.tags.get("mlflow.parentRunId") == run.info.run_id]
    assert [point.step for point in client.get_metric_history(seed_run.info.run_id, "continual/average")] == [100, 200]

    # Diverged (PPO with a huge learning rate: NaN parameters) is pruned, the sane trial completes.
    space = {"hyperparameters.learning_rate": {"type": "categorical", "choices": [3e-4, 1e30]}}
    diverging = _write(directory, "diverging", base={"curriculum": "curriculum.yaml", "overrides": PPO},
                       search_space=space, sampler="grid")  # fmt: skip
    assert main([str(diverging)]) == 0
    states = {
        trial.params["hyperparameters.learning_rate"]: trial.state
        for trial in _study(_optuna(directory), "diverging").trials
    }
    assert states == {3e-4: TrialState.COMPLETE, 1e30: TrialState.PRUNED}

    # A trial that crashes is failed, with its error, and the next trial runs.
    import crl.study.trial

    real_run_child = crl.study.trial.run_child

    def crash_second(*args, **kwargs):
        if "trial1" in args[6]:  # the trial's name
            raise RuntimeError("boom")
        return real_run_child(*args, **kwargs)

    monkeypatch.setattr(crl.study.trial, "run_child", crash_second)
    assert main([str(_write(directory, "crashing", n_trials=3))]) == 0
    trials = _study(_optuna(directory), "crashing").trials
    assert [trial.state for trial in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].user_attrs["error"] == "RuntimeError('boom')"
    assert (
        "RuntimeError: boom" in Path(client.download_artifacts(trials[1].user_attrs[RUN_ATTR], "error.txt")).read_text()
    )

    # A study whose every trial crashes ends with the failure exit code, not 0.
    monkeypatch.setattr(crl.study.trial, "run_child", lambda *args, **kwargs: 1 / 0)
    assert main([str(_write(directory, "all_crashing", n_trials=2))]) == FAILED_EXIT
    assert [trial.state for trial in _study(_optuna(directory), "all_crashing").trials] == [TrialState.FAIL] * 2


def test_a_logged_metric_as_objective_is_its_last_value(directory: Path) -> None:
    key = "plasticity/q_net/all/dormant_ratio"
    base = {"curriculum": "curriculum.yaml", "overrides": {"metrics": {"every": 100, "probe_batch_size": 32}}}
    objective = {"measure": "metric", "key": key}
    path = _write(directory, "metric", base=base, objective=objective, direction="minimize", n_trials=1)
    assert main([str(path)]) == 0
    (trial,) = _study(_optuna(directory), "metric").trials
    client = MlflowClient(_mlflow(directory))
    (seed_run,) = [
        run for run in _runs(directory) if run.data.tags.get("mlflow.parentRunId") == trial.user_attrs[RUN_ATTR]
    ]
    history = sorted(client.get_metric_history(seed_run.info.run_id, key), key=lambda point: point.step)
    assert trial.state == TrialState.COMPLETE and trial.value == history[-1].value
    assert trial.intermediate_values[1] == trial.value  # the last report: the value logged by the sequence's end
    # The up-front check of objective keys refuses none that a run logs (algorithm, intervention, metrics).
    assert {key: metric_key_problem(key) for key in seed_run.data.metrics} == dict.fromkeys(seed_run.data.metrics)
    for logged in seed_run.data.metrics:  # nor with what the study's runs can log (its interventions, tasks)
        assert load_study(_write(directory, "logged", base=base, objective={"measure": "metric", "key": logged},
                                 direction="minimize")).spec.objective.key == logged  # fmt: skip


def test_finished_trials_count_retries_once_and_surplus_trials_not_at_all() -> None:
    study = optuna.create_study()
    study.add_trial(optuna.create_trial(state=TrialState.COMPLETE, value=1.0))
    study.add_trial(optuna.create_trial(state=TrialState.FAIL))  # its worker died ...
    study.add_trial(optuna.create_trial(state=TrialState.RUNNING, system_attrs={"retry_history": [1]}))  # ... retried
    study.add_trial(optuna.create_trial(state=TrialState.FAIL))  # crashed
    study.add_trial(optuna.create_trial(state=TrialState.FAIL, user_attrs={SURPLUS_ATTR: True}))
    assert TrialCounts.of(study.trials) == TrialCounts(complete=1, pruned=0, failed=1, running=1, waiting=0)
    runner = TrialRunner.__new__(TrialRunner)  # is_surplus reads the study's n_trials only
    runner.config = SimpleNamespace(n_trials=3)  # type: ignore[assignment]
    late = study.ask()
    assert runner.is_surplus(late)  # trials 0, 2, 3 count: the study had its 3
    late.set_user_attr(SURPLUS_ATTR, True)  # as the runner marks it
    runner.config = SimpleNamespace(n_trials=4)  # type: ignore[assignment]
    assert not runner.is_surplus(study.ask())

    # A retry, numbered after every trial so far, takes the place of the trial it replaces.
    study = optuna.create_study()
    for state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE):
        study.add_trial(optuna.create_trial(state=state, value=1.0 if state == TrialState.COMPLETE else None))
    study.add_trial(optuna.create_trial(state=TrialState.WAITING, system_attrs={"retry_history": [1]}))
    runner.config = SimpleNamespace(n_trials=3)  # type: ignore[assignment]
    retry = study.ask()
    assert retry.number == 3 and not runner.is_surplus(retry)


def test_a_trial_that_fails_before_training_records_its_error(
    directory: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    def fail(self: SearchSpace, trial: optuna.Trial) -> None:
        raise RuntimeError("no draw")

    monkeypatch.setattr(SearchSpace, "suggest", fail)
    assert main([str(_write(directory, n_trials=1))]) == FAILED_EXIT
    (trial,) = _study(_optuna(directory), "study").trials
    assert trial.state == TrialState.FAIL and trial.user_attrs["error"] == "RuntimeError('no draw')"
    client = MlflowClient(_mlflow(directory))
    run = client.get_run(trial.user_attrs[RUN_ATTR])
    assert run.info.status == "FAILED" and run.data.tags["optuna.state"] == "FAIL"
    assert "RuntimeError: no draw" in Path(client.download_artifacts(run.info.run_id, "error.txt")).read_text()
    assert "each trial's traceback is its MLflow run's error.txt" in " ".join(capsys.readouterr().err.split())


def test_a_study_in_another_storage_gets_its_own_parent_run(directory: Path) -> None:
    path = _write(directory, n_trials=1)
    other = f"sqlite:///{directory / 'other.db'}"
    assert main([str(path)]) == 0
    assert main([str(path), "--storage", other]) == 0  # a new Optuna study of the same name
    runs = _runs(directory)
    parents = [run for run in runs if run.data.tags.get(STUDY_TAG) == "study"]
    assert sorted(run.data.tags[STORAGE_TAG] for run in parents) == sorted([_optuna(directory), other])
    for parent in parents:
        children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert len(children) == 1 and parent.data.tags["best_trial"] == "0" and parent.info.status == "FINISHED"
    assert storage_tag("postgresql://crl:secret@db.example:5432/crl") == "postgresql://crl@db.example:5432/crl"


def test_a_parent_run_made_before_storage_tags_is_taken_up_by_its_study(directory: Path) -> None:
    path = _write(directory, n_trials=1)
    assert main([str(path)]) == 0
    client = MlflowClient(_mlflow(directory))
    (parent,) = [run for run in _runs(directory) if run.data.tags.get(STUDY_TAG) == "study"]
    client.delete_tag(parent.info.run_id, STORAGE_TAG)  # as crl 0.1.0 made it
    assert main([str(path), "--n-trials", "2"]) == 0
    (again,) = [run for run in _runs(directory) if run.data.tags.get(STUDY_TAG) == "study"]
    assert again.info.run_id == parent.info.run_id and again.data.tags[STORAGE_TAG] == _optuna(directory)
    children = [run for run in _runs(directory) if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2


class _RacingClient:
    """A client whose first ``set_tag`` loses the insert race to another worker, as MLflow's SQL stores can."""

    def __init__(self, message: str) -> None:
        self.message, self.calls = message, []

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self.calls.append((run_id, key, value))
        if len(self.calls) == 1:
            raise MlflowException(self.message)


@pytest.mark.parametrize(
    "message",
    [
        "(sqlite3.IntegrityError) UNIQUE constraint failed: tags.key, tags.run_uuid",
        '(psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint "tag_pk"',
    ],
)
def test_a_tag_another_worker_inserted_at_the_same_time_is_set_again(message: str) -> None:
    client = _RacingClient(message)
    set_shared_tag(client, "parent", "best_trial", "3")  # type: ignore[arg-type]
    assert client.calls == [("parent", "best_trial", "3")] * 2


def test_other_tag_errors_are_not_retried() -> None:
    client = _RacingClient("RESOURCE_DOES_NOT_EXIST: run 'parent' not found")
    with pytest.raises(MlflowException, match="not found"):
        set_shared_tag(client, "parent", "best_trial", "3")  # type: ignore[arg-type]
    assert len(client.calls) == 1


def test_a_study_name_with_a_quote_finds_its_parent_run(directory: Path) -> None:
    assert main([str(_write(directory, n_trials=1)), "--study-name", "bob's"]) == 0
    (parent,) = [run for run in _runs(directory) if run.data.tags.get(STUDY_TAG) == "bob's"]
    assert parent.info.status == "FINISHED" and parent.data.tags["best_trial"] == "0"


def test_an_interrupted_trial_is_queued_again_whatever_max_retry(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import crl.study.trial

    real_run_child = crl.study.trial.run_child

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt  # as a Ctrl-C's stop request does at a rollout's start

    monkeypatch.setattr(crl.study.trial, "run_child", interrupt)
    path = _write(directory, n_trials=1, storage={"max_retry": 0})  # a dead worker's trial is not retried
    assert main([str(path)]) == INTERRUPTED_EXIT
    before = _study(_optuna(directory), "study").trials
    assert [trial.state for trial in before] == [TrialState.FAIL, TrialState.WAITING]
    assert before[1].params == before[0].params
    monkeypatch.setattr(crl.study.trial, "run_child", real_run_child)
    assert main([str(path)]) == 0
    after = _study(_optuna(directory), "study").trials
    assert [trial.state for trial in after] == [TrialState.FAIL, TrialState.COMPLETE]
    assert after[1].params == before[0].params and len(counted(after)) == 1

    # max_retry counts the trials whose worker died, not the interrupted ones before them.
    study = optuna.create_study()
    study.add_trial(optuna.create_trial(state=TrialState.FAIL))
    queue_again(study, study.trials[0], interrupted=True)
    handler = StaleTrialHandler(MlflowClient(_mlflow(directory)), max_retry=1)
    handler(study, study.trials[1])  # its worker died: retried once
    handler(study, study.trials[2])  # again: no more
    assert [trial.state for trial in study.trials] == [TrialState.FAIL, TrialState.WAITING, TrialState.WAITING]


def _interrupt_seed(monkeypatch: pytest.MonkeyPatch, seed: int, task: int, steps: int) -> None:
    """Send this process a SIGINT, once, at the first evaluation of ``seed`` after ``steps`` steps of ``task``:
    a Ctrl-C in the middle of a task, which checkpoints at the next rollout start."""
    import crl.train

    real_show_evaluation = crl.train.TrainingProgress.show_evaluation
    sent = []

    def show_evaluation(self, column: np.ndarray) -> None:
        real_show_evaluation(self, column)
        model = getattr(self, "model", None)
        mid_task = model is not None and model.current_task == task and model.num_timesteps >= steps
        if not sent and self.seed == seed and mid_task:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(crl.train.TrainingProgress, "show_evaluation", show_evaluation)


def test_an_interrupted_trial_continues_its_run_from_its_checkpoint(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    curriculum = CURRICULUM.replace("seeds: [0]", "seeds: [0, 1]").replace("steps_per_task: 200", "steps_per_task: 600")
    (directory / "curriculum.yaml").write_text(curriculum)
    path = _write(directory, n_trials=1)
    _interrupt_seed(monkeypatch, seed=1, task=1, steps=300)
    assert main([str(path)]) == INTERRUPTED_EXIT
    client = MlflowClient(_mlflow(directory))
    (interrupted, _) = _study(_optuna(directory), "study").trials
    run_id = interrupted.user_attrs[RUN_ATTR]
    before = {
        run.data.tags["seed"]: run for run in _runs(directory) if run.data.tags.get("mlflow.parentRunId") == run_id
    }
    assert {seed: run.info.status for seed, run in before.items()} == {"0": "FINISHED", "1": "KILLED"}
    latest = study_checkpoints(load_study(path)) / run_id / before["1"].info.run_id / "latest"
    checkpoint_step = 600 + int(latest.read_text().split("-step")[1])  # global: task 1 starts at step 600
    assert 600 < checkpoint_step < 1200

    monkeypatch.undo()
    monkeypatch.chdir(directory)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", _mlflow(directory))
    assert main([str(path)]) == 0
    trials = _study(_optuna(directory), "study").trials
    assert [trial.state for trial in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].user_attrs[RUN_ATTR] == run_id  # the interrupted trial's run, continued
    assert sorted(trials[1].intermediate_values) == [0, 1, 2, 3]  # 2 seeds x 2 tasks: earlier ones and resumed
    after = [run for run in _runs(directory) if run.data.tags.get("mlflow.parentRunId") == run_id]
    assert sorted((run.data.tags["seed"], run.info.run_id, run.info.status) for run in after) == [
        ("0", before["0"].info.run_id, "FINISHED"),
        ("1", before["1"].info.run_id, "FINISHED"),
    ]
    seed0 = client.get_run(before["0"].info.run_id)
    assert seed0.info.end_time == before["0"].info.end_time  # finished: not trained again
    seed1 = client.get_run(before["1"].info.run_id)
    for key in seed1.data.metrics:
        steps = [point.step for point in client.get_metric_history(seed1.info.run_id, key)]
        assert len(steps) == len(set(steps)), key  # no step logged twice
    evaluations = [point.step for point in client.get_metric_history(seed1.info.run_id, "continual/average")]
    assert sorted(evaluations) == list(range(100, 1201, 100))  # before the checkpoint and after, each once
    losses = [point.step for point in client.get_metric_history(seed1.info.run_id, "train/loss")]
    assert min(losses) < checkpoint_step < max(losses)
    trial_run = client.get_run(run_id)
    assert trial_run.info.status == "FINISHED" and trial_run.data.tags["optuna.state"] == "COMPLETE"
    assert trial_run.data.metrics["objective"] == pytest.approx(trials[1].value)
    intermediate = [point.step for point in client.get_metric_history(run_id, "objective/intermediate")]
    assert sorted(intermediate) == [0, 1, 2, 3]
    assert not study_checkpoints(load_study(path)).exists()  # nothing left on disk


def test_a_trial_stopped_between_a_task_end_checkpoint_and_its_report_reports_it_when_continued(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import crl.study.trial

    real_report = crl.study.trial.TaskEndReport.__call__

    def stop_at_the_first_task_end(self, task: int, result: ContinualResult) -> None:
        raise KeyboardInterrupt  # as STOP.check() does for a Ctrl-C: after the task-end checkpoint, before the report

    monkeypatch.setattr(crl.study.trial.TaskEndReport, "__call__", stop_at_the_first_task_end)
    path = _write(directory, n_trials=1)
    assert main([str(path)]) == INTERRUPTED_EXIT
    (stopped, _) = _study(_optuna(directory), "study").trials
    assert stopped.intermediate_values == {}
    monkeypatch.setattr(crl.study.trial.TaskEndReport, "__call__", real_report)
    assert main([str(path)]) == 0
    trials = _study(_optuna(directory), "study").trials
    run_id = stopped.user_attrs[RUN_ATTR]
    assert trials[1].state == TrialState.COMPLETE and trials[1].user_attrs[RUN_ATTR] == run_id
    # Task 0's report, made from the checkpoint's evaluations, is the one the trial would have made
    assert main([str(_write(directory, name="reference", n_trials=1))]) == 0
    (reference,) = _study(_optuna(directory), "reference").trials
    assert trials[1].intermediate_values == reference.intermediate_values and len(reference.intermediate_values) == 2
    history = MlflowClient(_mlflow(directory)).get_metric_history(run_id, "objective/intermediate")
    assert sorted(point.step for point in history) == [0, 1]
    (seed_run,) = [run for run in _runs(directory) if run.data.tags.get("mlflow.parentRunId") == run_id]
    assert seed_run.info.status == "FINISHED"


def test_a_worker_taken_for_dead_leaves_the_run_that_its_trials_copy_continues(directory: Path) -> None:
    """A paused worker (longer than the grace period) wakes after its trial's copy took the run over."""
    config = load_study(_write(directory, n_trials=1))
    client = MlflowClient(_mlflow(directory))
    parent = client.create_run(experiment_id(client, "studies")).info.run_id
    run_id = create_trial_run(client, config, parent, 0, "host:1")
    checkpoint = trial_checkpoints(config, run_id) / "seed-run" / "task0-step8"
    checkpoint.mkdir(parents=True)
    reopen_trial_run(client, run_id, 1, "host:2")  # trial 1, the copy queued for trial 0, continues the run
    runner = TrialRunner(config, client, parent, "host:1", Progress())
    assert not runner.owns_run(run_id, 0) and runner.owns_run(run_id, 1)
    runner.end_run(run_id, 0, TrialState.FAIL, FAILED, keep_checkpoints=False)  # trial 0's worker, awake again
    assert client.get_run(run_id).info.status == "RUNNING" and checkpoint.exists()
    runner.end_run(run_id, 1, TrialState.COMPLETE, FINISHED, keep_checkpoints=False)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["optuna.state"] == "COMPLETE" and not checkpoint.exists()


def test_a_trial_is_taken_for_dead_once_its_run_is_failed_or_continued_by_its_copy(directory: Path) -> None:
    config = load_study(_write(directory, n_trials=1))
    client = MlflowClient(_mlflow(directory))
    parent = client.create_run(experiment_id(client, "studies")).info.run_id
    run_id = create_trial_run(client, config, parent, 0, "host:1")
    runner = TrialRunner(config, client, parent, "host:1", Progress())
    runner.check_owner(run_id, 0)  # its own, running
    # Another worker failed trial 0 (StaleTrialHandler), its copy has not started yet
    failed = optuna.create_trial(state=TrialState.FAIL, user_attrs={RUN_ATTR: run_id})
    StaleTrialHandler(client, max_retry=None)(optuna.create_study(), failed)
    with pytest.raises(RunTakenOver, match=f"trial 0's run {run_id} was ended FAILED"):
        runner.check_owner(run_id, 0)
    reopen_trial_run(client, run_id, 1, "host:2")  # the copy started
    with pytest.raises(RunTakenOver, match="is continued by trial 1"):
        runner.check_owner(run_id, 0)
    runner.check_owner(run_id, 1)


def test_a_task_end_report_on_a_trial_failed_since_its_check_stops_it_as_taken_over() -> None:
    study = optuna.create_study()
    trial = study.ask()
    study.tell(trial, state=TrialState.FAIL)  # another worker took it for dead after the ownership check passed
    model = SimpleNamespace(policy=torch.nn.Linear(2, 1))
    objective = SimpleNamespace(measure="auc")
    report = TaskEndReport(trial, objective, model, None, "seed-run", "trial-run", 0)  # type: ignore[arg-type]
    result = ContinualResult("s", ("a", "b"), (100, 100), "mean_return", np.array([50, 100]), np.ones((2, 2)))
    with pytest.raises(RunTakenOver, match="trial 0 was failed by another worker"):
        report(0, result)


def test_a_throttled_check_runs_at_most_once_per_interval() -> None:
    now = [0.0]
    checks: list[float] = []
    throttled = Throttled(lambda: checks.append(now[0]), seconds=5.0, clock=lambda: now[0])
    for now[0] in (100.0, 101.0, 104.9, 105.0, 107.0, 200.0):  # 200: the first call after a pause
        throttled()
    assert checks == [100.0, 105.0, 200.0]


def test_a_worker_taken_for_dead_stops_before_it_writes_over_the_copys_checkpoints(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import crl.train

    checkpointed = CURRICULUM.replace("steps_per_task: 200", "steps_per_task: 400") + "checkpoint: {every: 100}\n"
    (directory / "curriculum.yaml").write_text(checkpointed)
    client = MlflowClient(_mlflow(directory))
    real_save = crl.train.save_checkpoint
    saved: list[Path] = []

    def save_then_taken_over(root: Path, model, position, run_id: str, seed: int) -> None:
        real_save(root, model, position, run_id, seed)
        saved.append(root / run_id)
        if len(saved) == 1:  # meanwhile another worker took this one for dead, and the trial's copy took the run
            reopen_trial_run(client, client.get_run(run_id).data.tags["mlflow.parentRunId"], 7, "host:2")

    monkeypatch.setattr(crl.train, "save_checkpoint", save_then_taken_over)
    main([str(_write(directory, n_trials=1))])
    assert len(saved) == 1 and saved[0].exists()  # no checkpoint written over the copy's, none removed
    (trial,) = _study(_optuna(directory), "study").trials
    trial_run = client.get_run(trial.user_attrs[RUN_ATTR])
    assert trial_run.info.status == "RUNNING" and trial_run.data.tags[TRIAL_TAG] == "7"  # left to the copy
    assert not client.list_artifacts(trial_run.info.run_id, "error.txt")
    (seed_run,) = [run for run in _runs(directory) if run.data.tags.get("mlflow.parentRunId") == trial_run.info.run_id]
    assert seed_run.info.status == "RUNNING"


def test_a_worker_taken_for_dead_after_its_seeds_last_task_leaves_the_seeds_checkpoints_and_run(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import crl.study.trial

    client = MlflowClient(_mlflow(directory))
    real_report = crl.study.trial.TaskEndReport.__call__

    def report_then_taken_over(self, task: int, result: ContinualResult) -> None:
        real_report(self, task, result)
        if task == 1:  # meanwhile another worker took this one for dead, and the trial's copy took the run
            reopen_trial_run(client, self.trial_run_id, 7, "host:2")

    monkeypatch.setattr(crl.study.trial.TaskEndReport, "__call__", report_then_taken_over)
    path = _write(directory, n_trials=1)
    main([str(path)])
    (trial,) = _study(_optuna(directory), "study").trials
    run_id = trial.user_attrs[RUN_ATTR]
    (seed_run,) = [run for run in _runs(directory) if run.data.tags.get("mlflow.parentRunId") == run_id]
    assert seed_run.info.status == "RUNNING" and not client.list_artifacts(seed_run.info.run_id)  # no model.zip
    checkpoints = trial_checkpoints(load_study(path), run_id) / seed_run.info.run_id
    assert (checkpoints / "latest").read_text() == "task2-step0"  # the last task's, left to the copy


class _TakenForDeadOnce:
    """A trial runner whose first trial is failed by another worker meanwhile, and stops on RunTakenOver.

    :param noticed: whether it sets ``taken_over`` as :class:`TrialRunner` does
    """

    def __init__(self, noticed: bool) -> None:
        self.noticed = noticed
        self.taken_over = False

    def __call__(self, trial: optuna.Trial) -> float:
        if trial.number == 0:
            trial.study.tell(trial, state=TrialState.FAIL)  # the other worker, which found no heartbeat
            self.taken_over = self.noticed
            raise RunTakenOver("trial 0's run is continued by trial 2")
        return 1.0


def test_a_trial_failed_by_another_worker_after_its_last_check_is_left_to_its_copy(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_study(_write(directory, n_trials=1))
    client = MlflowClient(_mlflow(directory))
    parent = client.create_run(experiment_id(client, "studies")).info.run_id
    study = optuna.create_study()

    def trained_then_failed_elsewhere(self, trial: optuna.Trial, *args) -> float:
        if trial.number == 0:  # a pause after the trial's last check: another worker took it for dead
            study.tell(trial.number, state=TrialState.FAIL)
            StaleTrialHandler(client, max_retry=None)(study, study.trials[0])
        return 1.0

    ended: list[int] = []
    real_end_run = TrialRunner.end_run

    def recorded_end_run(self, run_id: str, number: int, *args, **kwargs) -> None:
        ended.append(number)
        real_end_run(self, run_id, number, *args, **kwargs)

    monkeypatch.setattr(TrialRunner, "train", trained_then_failed_elsewhere)
    monkeypatch.setattr(TrialRunner, "end_run", recorded_end_run)
    run_worker(study, TrialRunner(config, client, parent, "host:1", Progress()), n_trials=1, poll_seconds=0.01)
    assert [trial.state for trial in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert ended == [1]  # trial 0's worker left the run to the copy, which ended it
    run = client.get_run(study.trials[0].user_attrs[RUN_ATTR])
    assert run.info.status == "FINISHED" and run.data.tags[TRIAL_TAG] == "1"


def test_a_worker_whose_trial_another_failed_goes_on_with_the_next() -> None:
    study = optuna.create_study()
    run_worker(study, _TakenForDeadOnce(noticed=True), n_trials=2, poll_seconds=0.01)  # type: ignore[arg-type]
    assert [trial.state for trial in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    # Any other failure to record a trial's end still stops the worker
    with pytest.raises(ValueError, match="Cannot tell a FAIL trial"):
        run_worker(optuna.create_study(), _TakenForDeadOnce(noticed=False), n_trials=2)  # type: ignore[arg-type]


def test_every_queued_copy_continues_its_trials_run() -> None:
    study = optuna.create_study()
    study.add_trial(optuna.create_trial(state=TrialState.FAIL, user_attrs={RUN_ATTR: "stopped"}))
    queue_again(study, study.trials[0], interrupted=True)
    assert continued_run(study.trials[1]) == "stopped"
    assert continued_run(study.trials[0]) is None  # not a queued copy
    # The copy's worker died: its copy continues the same run
    queue_again(study, study.trials[1], interrupted=False)
    assert continued_run(study.trials[2]) == "stopped"
    # A trial whose worker died before it had a run: its copy starts one
    study.add_trial(optuna.create_trial(state=TrialState.FAIL))
    queue_again(study, study.trials[3], interrupted=False)
    assert continued_run(study.trials[4]) is None


def test_an_unwritable_checkpoint_directory_exits_2_before_the_study_exists(directory: Path, capsys) -> None:
    # A Ctrl-C's checkpoint that cannot be written would fail its trial instead of stopping it.
    (directory / "file").write_text("")
    (directory / "curriculum.yaml").write_text(CURRICULUM + "checkpoint: {directory: file/checkpoints}\n")
    assert main([str(_write(directory))]) == CONFIG_ERROR_EXIT
    assert "checkpoint.directory" in capsys.readouterr().err and not (directory / "optuna.db").exists()


def test_a_dead_workers_trial_keeps_its_checkpoints_for_its_copy_and_loses_them_without_one(directory: Path) -> None:
    client = MlflowClient(_mlflow(directory))
    experiment = client.create_experiment("dead")
    checkpoints = directory / "checkpoints" / "study"
    study = optuna.create_study()
    for max_retry in (1, 0):
        run_id = client.create_run(experiment).info.run_id
        (checkpoints / run_id / "seed-run" / "task0-step8").mkdir(parents=True)
        study.add_trial(optuna.create_trial(state=TrialState.FAIL, user_attrs={RUN_ATTR: run_id}))
        StaleTrialHandler(client, max_retry=max_retry, checkpoints=checkpoints)(study, study.trials[-1])
        assert client.get_run(run_id).info.status == "FAILED"
        retried = max_retry == 1
        assert (checkpoints / run_id).exists() == retried
        assert (continued_run(study.trials[-1]) == run_id) == retried  # the copy continues the run


def _launch(directory: Path, *arguments: str, new_session: bool = False) -> subprocess.Popen[bytes]:
    """``crl.study`` in a process; ``new_session``: leading its own process group, as a terminal's command."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": _mlflow(directory)}
    command = [sys.executable, "-m", "crl.study", *arguments]
    return subprocess.Popen(
        command,
        cwd=directory,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=new_session,
    )


def _wait_for_trial(url: str, name: str, condition, timeout: float = 120) -> optuna.trial.FrozenTrial:
    """The first trial of the study that meets ``condition``, once one does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = [trial for trial in _study(url, name).get_trials(deepcopy=False) if condition(trial)]
        except KeyError:  # the study does not exist yet
            found = []
        if found:
            return found[0]
        time.sleep(0.2)
    raise TimeoutError(f"no trial of {name} met the condition in {timeout} s")


def _finish(process: subprocess.Popen[bytes], code: int = 0) -> None:
    _, error = process.communicate(timeout=300)
    assert process.returncode == code, error.decode()[-3000:]


LONGER = CURRICULUM.replace("steps_per_task: 200", "steps_per_task: 1500")
"""Trials of about two seconds, to be interrupted in the middle."""


def _stop_in_a_trial(process: subprocess.Popen[bytes], url: str, name: str, condition) -> optuna.trial.FrozenTrial:
    """The first trial meeting ``condition`` during which ``process`` was stopped (SIGSTOP).

    A signal sent to the stopped process lands in the middle of that trial however fast trials
    run: a trial seen RUNNING may have finished before the stop, so its state is read again. For a
    server's storage: a process stopped inside a SQLite write would lock the file.
    """
    finished: set[int] = set()
    while True:
        trial = _wait_for_trial(url, name, lambda trial: trial.number not in finished and condition(trial))
        process.send_signal(signal.SIGSTOP)
        time.sleep(0.2)  # a commit the process sent before it stopped reaches the storage
        if _study(url, name).trials[trial.number].state == TrialState.RUNNING:
            return trial
        finished.add(trial.number)
        process.send_signal(signal.SIGCONT)


def _kill_mid_task(process: subprocess.Popen[bytes], checkpoints: Path, task: int) -> Path:
    """SIGKILL ``process`` while it trains ``task`` of a seed, after that task's first checkpoint.

    The process is stopped (SIGSTOP) first and the seed's checkpoint looked at again: a seed that
    finished in between has removed its checkpoints, and a kill then would not be mid-task.

    :return: the seed's ``latest`` file (naming its latest checkpoint)
    """
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = [latest for latest in checkpoints.glob("*/*/latest") if latest.read_text().startswith(f"task{task}-")]
        if found:
            process.send_signal(signal.SIGSTOP)
            if found[0].exists():
                process.kill()
                process.wait()
                return found[0]
            process.send_signal(signal.SIGCONT)
        time.sleep(0.02)
    raise TimeoutError(f"no checkpoint of task {task} under {checkpoints}")


def test_a_dead_workers_trial_continues_from_its_checkpoint_as_if_never_stopped(directory: Path) -> None:
    checkpointed = CURRICULUM.replace("steps_per_task: 200", "steps_per_task: 3000") + "checkpoint: {every: 500}\n"
    (directory / "curriculum.yaml").write_text(checkpointed)
    storage = {"heartbeat_interval": 1, "grace_period": 2}
    path = _write(directory, n_trials=1, storage=storage)
    latest = _kill_mid_task(_launch(directory, str(path)), study_checkpoints(load_study(path)), task=1)
    checkpoint_step = 3000 + int(latest.read_text().split("-step")[1])  # global: task 1 starts at step 3000
    seed_run_id = latest.parent.name
    time.sleep(2.5)  # past the grace period: the next worker takes the trial for dead

    _finish(_launch(directory, str(path)))
    trials = _study(_optuna(directory), "study").trials
    assert [trial.state for trial in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    run_id = trials[0].user_attrs[RUN_ATTR]
    assert trials[1].user_attrs[RUN_ATTR] == run_id  # the dead worker's trial run, continued
    assert sorted(trials[1].intermediate_values) == [0, 1]
    client = MlflowClient(_mlflow(directory))
    (seed_run,) = [run for run in _runs(directory) if run.data.tags.get("mlflow.parentRunId") == run_id]
    assert seed_run.info.run_id == seed_run_id and seed_run.info.status == "FINISHED"  # resumed, not restarted
    evaluations = [point.step for point in client.get_metric_history(seed_run_id, "continual/average")]
    assert sorted(evaluations) == list(range(100, 6001, 100))  # before the checkpoint and after, each once
    losses = [point.step for point in client.get_metric_history(seed_run_id, "train/loss")]
    assert min(losses) < checkpoint_step < max(losses) and len(losses) == len(set(losses))
    assert not study_checkpoints(load_study(path)).exists()  # nothing left on disk

    # The same trial never stopped (trial 0 of a study with the same seed draws the same parameters)
    _finish(_launch(directory, str(_write(directory, name="reference", n_trials=1, storage=storage))))
    (reference,) = _study(_optuna(directory), "reference").trials
    assert reference.params == trials[1].params and reference.value == trials[1].value


def _unlocked(database: Path) -> bool:
    """Whether no process holds a lock on the SQLite file ``database`` (one stopped inside a transaction would)."""
    connection = sqlite3.connect(database, timeout=0, isolation_level=None)
    try:
        connection.execute("BEGIN EXCLUSIVE")
        connection.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        connection.close()


def _pause_mid_task(process: subprocess.Popen[bytes], checkpoints: Path, task: int, databases: list[Path]) -> None:
    """SIGSTOP ``process`` while it trains ``task`` of a seed, after that task's first checkpoint, holding no
    lock on ``databases`` (else the other workers would wait for it)."""
    deadline, into_training = time.monotonic() + 120, False
    while time.monotonic() < deadline:
        found = [latest for latest in checkpoints.glob("*/*/latest") if latest.read_text().startswith(f"task{task}-")]
        if found and not into_training:
            time.sleep(0.3)  # past the previous task's report, which follows its checkpoint
            into_training = True
        if found:
            process.send_signal(signal.SIGSTOP)
            mid_task = found[0].exists() and found[0].read_text().startswith(f"task{task}-")
            if mid_task and all(_unlocked(database) for database in databases):
                return
            process.send_signal(signal.SIGCONT)
        time.sleep(0.02)
    raise TimeoutError(f"no checkpoint of task {task} under {checkpoints}")


def test_a_worker_taken_for_dead_stops_at_its_next_log_and_its_trials_copy_trains_as_if_never_stopped(
    directory: Path,
) -> None:
    """A worker paused past the grace period (a suspended machine) wakes while its trial's copy continues
    the run: it stops at its first log, not at its task's end, and leaves the copy alone."""
    # Checkpoints at task ends only: before this, a worker woke mid-task trained until the task's end
    (directory / "curriculum.yaml").write_text(CURRICULUM.replace("steps_per_task: 200", "steps_per_task: 3000"))
    storage = {"heartbeat_interval": 1, "grace_period": 2}
    path = _write(directory, n_trials=1, storage=storage)
    paused = _launch(directory, str(path))
    try:
        databases = [directory / "mlflow.db", directory / "optuna.db"]
        _pause_mid_task(paused, study_checkpoints(load_study(path)), task=1, databases=databases)
        time.sleep(2.5)  # past the grace period: the next worker takes the trial for dead
        copy = _launch(directory, str(path))
        _wait_for_trial(_optuna(directory), "study", lambda trial: trial.number == 1 and RUN_ATTR in trial.user_attrs)
        run_id = _study(_optuna(directory), "study").trials[0].user_attrs[RUN_ATTR]
        client = MlflowClient(_mlflow(directory))
        deadline = time.monotonic() + 60
        while client.get_run(run_id).info.status != "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.05)  # the copy reopens the run
    finally:
        paused.send_signal(signal.SIGCONT)
    _finish(copy)
    _finish(paused)  # it went on, and found the study finished
    trials = _study(_optuna(directory), "study").trials
    assert [trial.state for trial in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].user_attrs[RUN_ATTR] == run_id
    (seed_run,) = [run for run in _runs(directory) if run.data.tags.get("mlflow.parentRunId") == run_id]
    evaluations = [point.step for point in client.get_metric_history(seed_run.info.run_id, "continual/average")]
    losses = [point.step for point in client.get_metric_history(seed_run.info.run_id, "train/loss")]
    # The woken worker logged at most the one batch it had checked for before its pause
    assert len(evaluations) - len(set(evaluations)) + len(losses) - len(set(losses)) <= 1
    assert sorted(set(evaluations)) == list(range(100, 6001, 100))
    assert client.get_run(run_id).info.status == "FINISHED" and not study_checkpoints(load_study(path)).exists()

    # The same trial never paused (trial 0 of a study with the same seed draws the same parameters)
    _finish(_launch(directory, str(_write(directory, name="reference", n_trials=1, storage=storage))))
    (reference,) = _study(_optuna(directory), "reference").trials
    assert reference.params == trials[1].params and reference.value == trials[1].value


def test_an_interrupted_study_relaunched_with_its_name_continues(directory: Path) -> None:
    (directory / "curriculum.yaml").write_text(LONGER)
    path = _write(directory, n_trials=3)
    process = _launch(directory, str(path))
    # Seen within a poll (0.2 s) of its start, trial 1 is interrupted in the middle. Stopping the process
    # first (_stop_in_a_trial) could leave SQLite locked by it.
    _wait_for_trial(_optuna(directory), "study", lambda trial: trial.number == 1 and trial.state == TrialState.RUNNING)
    process.send_signal(signal.SIGINT)
    _finish(process, INTERRUPTED_EXIT)
    before = _study(_optuna(directory), "study").trials
    assert [trial.state for trial in before] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    assert before[2].system_attrs["failed_trial"] == 1 and before[2].params == before[1].params
    (parent,) = [run for run in _runs(directory) if STUDY_TAG in run.data.tags]
    assert parent.info.status == "KILLED"

    assert main([str(path), "--workers", "2"]) == 0  # the rest in two processes
    after = _study(_optuna(directory), "study").trials
    states = [trial.state for trial in after]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert after[0].datetime_complete == before[0].datetime_complete  # not trained again
    assert after[2].params == before[1].params  # the interrupted trial, continued
    assert after[2].user_attrs[RUN_ATTR] == before[1].user_attrs[RUN_ATTR]  # in its run
    assert len(counted(after)) == 3
    runs = _runs(directory)
    (parent,) = [run for run in runs if STUDY_TAG in run.data.tags]  # the same parent run, reused
    trial_runs = {run.data.tags[TRIAL_TAG]: run.info.status for run in runs if TRIAL_TAG in run.data.tags}
    assert parent.info.status == "FINISHED"
    assert trial_runs == {"0": "FINISHED", "2": "FINISHED", "3": "FINISHED"}
    (continued,) = [run for run in runs if run.info.run_id == before[1].user_attrs[RUN_ATTR]]
    assert continued.data.tags[TRIAL_TAG] == "2" and continued.data.tags["optuna.continued_trials"] == "1"
    assert not study_checkpoints(load_study(path)).exists()


@pytest.mark.parametrize("group", [False, True], ids=["sent to the parent alone", "Ctrl-C in a terminal"])
def test_a_sigint_stops_the_worker_processes_and_their_trials_are_queued_again(directory: Path, group: bool) -> None:
    (directory / "curriculum.yaml").write_text(LONGER)
    path = _write(directory, n_trials=4)
    process = _launch(directory, str(path), "--workers", "2", new_session=group)
    _wait_for_trial(_optuna(directory), "study", lambda trial: trial.state == TrialState.RUNNING)
    if group:  # the terminal signals its foreground process group: the workers get it from the parent, once
        os.killpg(process.pid, signal.SIGINT)
    else:  # `kill -INT PID`, a scheduler, `docker stop` with STOPSIGNAL SIGINT
        process.send_signal(signal.SIGINT)
    _, error = process.communicate(timeout=300)
    assert process.returncode == INTERRUPTED_EXIT, error.decode()[-3000:]
    assert (
        "Traceback" not in error.decode() and "interrupted; the interrupted trials are queued again" in error.decode()
    )
    trials = _study(_optuna(directory), "study").trials
    interrupted = [trial.number for trial in trials if trial.state == TrialState.FAIL]
    queued = [trial.system_attrs["failed_trial"] for trial in trials if trial.state == TrialState.WAITING]
    assert interrupted and sorted(queued) == interrupted  # each stopped trial, queued again for the next launch
    assert sum(trial.state == TrialState.COMPLETE for trial in trials) < 4  # the workers did not go on
    (parent,) = [run for run in _runs(directory) if STUDY_TAG in run.data.tags]
    assert parent.info.status == "KILLED"


def test_a_stop_that_came_as_the_last_trial_ended_leaves_the_study_finished(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import crl.study.cli

    real_run_worker = crl.study.cli.run_worker

    def stopped_after(*args, **kwargs):
        real_run_worker(*args, **kwargs)
        raise KeyboardInterrupt  # a Ctrl-C that came after the study's last trial ended

    monkeypatch.setattr(crl.study.cli, "run_worker", stopped_after)
    assert main([str(_write(directory, n_trials=1))]) == 0
    (parent,) = [run for run in _runs(directory) if STUDY_TAG in run.data.tags]
    assert parent.info.status == "FINISHED"
    assert [trial.state for trial in _study(_optuna(directory), "study").trials] == [TrialState.COMPLETE]


def test_an_sqlite_storage_takes_the_write_lock_when_a_transaction_begins(directory: Path) -> None:
    # Two local workers popping the same queued trial both read it as waiting (SQLite ignores FOR
    # UPDATE) unless the transaction holds the write lock from its start.
    config = load_study(_write(directory), storage_url=_optuna(directory))
    storage = open_storage(config, StaleTrialHandler(MlflowClient(_mlflow(directory)), None))
    other = sqlite3.connect(directory / "optuna.db", timeout=0.1, isolation_level=None)
    locked = pytest.raises(sqlite3.OperationalError, match="database is locked")
    with storage.engine.connect() as connection, connection.begin(), locked:
        other.execute("BEGIN IMMEDIATE")
    other.execute("BEGIN IMMEDIATE")  # free again once the transaction ended
    other.execute("COMMIT")


# --- several workers on one PostgreSQL storage ------------------------------------------------------


@needs_postgres
def test_two_workers_share_one_study_on_postgresql(directory: Path) -> None:
    # Trials of a few seconds, and both workers started at once: neither can run all four before the
    # other has imported crl. (Pausing one worker instead could freeze it inside a transaction of the
    # shared MLflow store and block the other.)
    (directory / "curriculum.yaml").write_text(LONGER)
    name = f"two-{uuid.uuid4().hex[:8]}"
    path = _write(directory, n_trials=4, storage={"heartbeat_interval": 1, "grace_period": 60})
    arguments = (str(path), "--storage", POSTGRES_URL, "--study-name", name)
    first = _launch(directory, *arguments)
    second = _launch(directory, *arguments)
    workers = [first, second]
    for worker in workers:
        _finish(worker)
    trials = _study(POSTGRES_URL, name).trials  # type: ignore[arg-type]
    done = counted(trials)
    assert len(done) == 4 and all(trial.state == TrialState.COMPLETE for trial in done)
    assert {trial.user_attrs[WORKER_ATTR].split(":")[1] for trial in done} == {str(worker.pid) for worker in workers}
    params = [tuple(trial.params.values()) for trial in done]
    assert len(set(params)) == 4  # each configuration trained once
    runs = _runs(directory)
    (parent,) = [run for run in runs if run.data.tags.get(STUDY_TAG) == name]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(run.info.run_id for run in children) == sorted(trial.user_attrs[RUN_ATTR] for trial in done)
    assert all(run.info.status == "FINISHED" for run in children)


@needs_postgres
def test_a_killed_workers_trial_is_failed_and_retried_by_the_other(directory: Path) -> None:
    (directory / "curriculum.yaml").write_text(LONGER)
    name = f"kill-{uuid.uuid4().hex[:8]}"
    path = _write(directory, n_trials=3, storage={"heartbeat_interval": 1, "grace_period": 2})
    victim, survivor = (
        _launch(directory, str(path), "--storage", POSTGRES_URL, "--study-name", name) for _ in range(2)
    )
    killed = _stop_in_a_trial(
        victim,
        POSTGRES_URL,  # type: ignore[arg-type]
        name,
        lambda trial: (  # killed once it has drawn all its parameters: a retry takes them over
            trial.state == TrialState.RUNNING
            and trial.user_attrs.get(WORKER_ATTR, "").endswith(f":{victim.pid}")
            and set(trial.params) == set(STUDY["search_space"])
        ),
    )
    victim.kill()
    victim.wait()
    _finish(survivor)
    trials = _study(POSTGRES_URL, name).trials  # type: ignore[arg-type]
    assert trials[killed.number].state == TrialState.FAIL
    (retry,) = [trial for trial in trials if trial.system_attrs.get("failed_trial") == killed.number]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params, retry.user_attrs
    assert retry.user_attrs[WORKER_ATTR].endswith(f":{survivor.pid}")
    done = counted(trials)
    assert len(done) == 3 and all(trial.state == TrialState.COMPLETE for trial in done)
    # The retry continued the killed trial's run (ended FAILED by the survivor, then reopened)
    run_id = trials[killed.number].user_attrs[RUN_ATTR]
    assert retry.user_attrs[RUN_ATTR] == run_id
    run = MlflowClient(_mlflow(directory)).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["optuna.state"] == "COMPLETE"
    assert run.data.tags[CONTINUED_TAG] == str(killed.number) and run.data.tags[TRIAL_TAG] == str(retry.number)
