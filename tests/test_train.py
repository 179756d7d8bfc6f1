"""``python -m crl.train``: a tiny CartPole curriculum into a temporary MLflow store."""

import itertools
import json
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from crl import train
from crl.config import ConfigError
from crl.continual import ContinualResult
from crl.continual.loop import TaskEvaluator
from crl.process import ProcessSettings
from crl.tracking.runs import create_run
from crl.train import (
    CONFIG_ERROR_EXIT,
    FAILED_EXIT,
    INTERRUPTED_EXIT,
    ParallelLaunch,
    TrainingProgress,
    create_child_run,
    main,
    parse_args,
    resolve,
)

TINY = """\
algorithm: DQN
policy_options: {net_arch: [16]}
hyperparameters: {buffer_size: 500, learning_starts: 50, batch_size: 16, train_freq: 4}
interventions: [layer_norm]
metrics: {every: 100, probe_batch_size: 64}
sequence: {preset: cartpole_permuted, options: {n_tasks: 2}, steps_per_task: 200}
evaluation: {every: 100, n_episodes: 1}
tracking: {experiment: tiny}
seeds: [0, 1]
"""


@pytest.fixture
def curriculum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # checkpoints go to ./checkpoints
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def test_a_launch_logs_a_parent_run_and_one_child_run_per_seed(tmp_path: Path, curriculum: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main([str(curriculum), "--seeds", "3,4", "--tracking-uri", uri, "--set", "evaluation.n_episodes=2"]) == 0
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = sorted((run for run in runs if "mlflow.parentRunId" in run.data.tags), key=lambda r: r.data.tags["seed"])
    assert len(parents) == 1 and [child.data.tags["seed"] for child in children] == ["3", "4"]
    parent = parents[0]
    assert all(child.data.tags["mlflow.parentRunId"] == parent.info.run_id for child in children)
    assert all(run.info.status == "FINISHED" for run in runs)
    assert parent.data.params["evaluation.n_episodes"] == "2" and parent.data.params["seeds"] == "[3, 4]"
    assert parent.data.params["interventions.0.name"] == "layer_norm"
    assert {"git_commit", "crl_version", "sb3_version"} <= set(parent.data.tags)
    assert {artifact.path for artifact in client.list_artifacts(parent.info.run_id)} == {
        "config.yml",
        "command.txt",
        "plots",
    }
    parent_plots = {artifact.path for artifact in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/evaluation.png", "plots/performance_matrix.png"} <= parent_plots

    command = Path(client.download_artifacts(parent.info.run_id, "command.txt", str(tmp_path))).read_text()
    assert command.startswith(f"python -m crl.train {curriculum} --seeds 3,4")
    # Each child carries the launch's parameters, so that the UI compares child runs directly.
    assert children[0].data.params["interventions.0.name"] == "layer_norm" and children[1].data.params["seed"] == "4"
    assert {run.data.tags["interventions"] for run in runs} == {"layer_norm"}

    child = children[0].info.run_id
    assert not (tmp_path / "checkpoints" / child).exists()  # finished: its final model is logged instead
    assert {artifact.path for artifact in client.list_artifacts(child)} == {"model.zip", "result.json", "plots"}
    result = ContinualResult.load(client.download_artifacts(child, "result.json", str(tmp_path)))
    assert result.seed == 3
    # Evaluations at their global steps: every 100 steps and each task's end, both tasks' columns.
    average = client.get_metric_history(child, "continual/average")
    assert [point.step for point in average] == [100, 200, 300, 400]
    assert [point.value for point in average] == pytest.approx(result.performance.mean(axis=0).tolist())
    assert [(point.step, point.value) for point in client.get_metric_history(child, "task")] == [(0, 0.0), (200, 1.0)]
    # SB3's logger output is on the sequence's step axis: the second task's steps come after 200.
    metric_steps = sorted(
        point.step for point in client.get_metric_history(child, "plasticity/q_net/all/dormant_ratio")
    )
    assert metric_steps and metric_steps[-1] > 200
    final = client.get_run(child).data.metrics
    assert final["final/average_performance"] == pytest.approx(result.performance[:, -1].mean())
    # Two tasks, evaluated at 100, 200 (the first task's end), 300 and 400.
    assert final["final/backward_transfer"] == pytest.approx(result.performance[0, 3] - result.performance[0, 1])
    maintenance = result.performance[:, 3] - result.performance.max(axis=1)
    assert final["final/performance_maintenance"] == pytest.approx(maintenance.mean())


def test_resuming_a_child_run_continues_that_seed_only(tmp_path: Path, curriculum: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    no_metrics = ["--set", "metrics=null", "--tracking-uri", uri]
    assert main([str(curriculum), *no_metrics]) == 0
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tiny").experiment_id
    children = {run.data.tags["seed"]: run for run in client.search_runs([experiment]) if "seed" in run.data.tags}
    client.set_terminated(children["1"].info.run_id, "KILLED")  # as if seed 1 had been interrupted

    assert main([str(curriculum), *no_metrics, "--resume", children["1"].info.run_id]) == 0
    runs = client.search_runs([experiment])
    assert len(runs) == 3  # no new run for seed 0 (which had finished) nor for seed 1
    assert client.get_run(children["1"].info.run_id).info.status == "FINISHED"
    assert client.get_run(children["0"].info.run_id).info.end_time == children["0"].info.end_time


def test_a_sequential_launch_sets_up_its_process_as_the_command_line_says(
    tmp_path: Path, curriculum: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    applied: list[ProcessSettings] = []
    released: list[bool] = []
    monkeypatch.setattr(ProcessSettings, "apply", lambda settings: applied.append(settings))
    monkeypatch.setattr(train, "release_freed_memory", lambda: released.append(True) or True)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    options = ["--workers", "1", "--set", "metrics=null", "--tracking-uri", uri]
    assert main([str(curriculum), *options, "--no-keep-freed-memory", "--torch-threads", "2"]) == 0
    assert applied == [ProcessSettings(torch_threads=2, keep_freed_memory=False)]
    assert len(released) == 2  # before each of the two seeds' runs


def test_config_errors_exit_with_2_before_any_run(tmp_path: Path, curriculum: Path, capsys) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main([str(curriculum), "--tracking-uri", uri, "--set", "sequence.options.n_tasks=zero"])
    assert code == CONFIG_ERROR_EXIT
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "sequence" in error and "\n" not in error
    assert main([str(tmp_path / "missing.yaml"), "--tracking-uri", uri]) == CONFIG_ERROR_EXIT
    assert not (tmp_path / "mlflow.db").exists()


def test_an_intervention_timed_past_the_curriculum_exits_2_before_any_run(
    tmp_path: Path, curriculum: Path, capsys
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    late = "interventions=[{name: reset, at_steps: [300, 500]}]"  # two tasks of 200 steps
    assert main([str(curriculum), "--tracking-uri", uri, "--set", late]) == CONFIG_ERROR_EXIT
    error = capsys.readouterr().err
    assert "key 'interventions[0].at_steps' = [300, 500] (reset): [500] lie past the sequence's 400" in error
    assert not (tmp_path / "mlflow.db").exists()


def _launch(directory: Path, workers: int) -> dict[str, tuple[dict, dict[str, float]]]:
    """Train the tiny curriculum's two seeds; ``{seed: (result.json, final metrics)}`` of the child runs."""
    directory.mkdir()
    # Without plasticity metrics: the test is about the processes, and fewer plots keep it fast.
    (directory / "tiny.yaml").write_text(TINY.replace("metrics: {every: 100, probe_batch_size: 64}\n", ""))
    uri = f"sqlite:///{directory / 'mlflow.db'}"
    assert main([str(directory / "tiny.yaml"), "--tracking-uri", uri, "--workers", str(workers)]) == 0
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == 2 and all(child.info.status == "FINISHED" for child in children)
    found = {}
    for child in children:
        result = json.loads(
            Path(client.download_artifacts(child.info.run_id, "result.json", str(directory))).read_text()
        )
        final = {key: value for key, value in child.data.metrics.items() if key.startswith("final/")}
        found[child.data.tags["seed"]] = (result, final)
    return found


def test_two_workers_give_each_seed_the_result_of_a_sequential_launch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # checkpoints go to ./checkpoints
    # Both launches use crl.train's default of one torch thread per seed, so they compute the same way.
    sequential = _launch(tmp_path / "sequential", workers=1)
    parallel = _launch(tmp_path / "parallel", workers=2)
    assert set(parallel) == {"0", "1"}
    assert parallel == sequential
    assert parallel["0"][0]["performance"] != parallel["1"][0]["performance"]  # the seeds differ


def _seed_1_dies(curriculum: Any, source: str, seed: int, parent_id: str, name: str, run_id: str) -> ContinualResult:
    """A worker's seed, except that seed 1's process dies at once, as if the kernel killed it."""
    if seed == 1:
        os._exit(9)
    return train._train_in_worker(curriculum, source, seed, parent_id, name, run_id)


def test_a_dead_worker_fails_its_seed_only(
    tmp_path: Path, curriculum: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr(train, "_train_in_worker", _seed_1_dies)  # pickled by name: the spawned worker imports it
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main([str(curriculum), "--set", "metrics=null", "--tracking-uri", uri, "--workers", "2"]) == FAILED_EXIT
    status = {run.data.tags["seed"]: run.info.status for run in _runs(uri) if "seed" in run.data.tags}
    assert status == {"0": "FINISHED", "1": "FAILED"}
    output = capsys.readouterr().err
    assert "seed 1 failed: its process died" in output and "seed 0 finished" in output
    assert "seed(s) [1] failed; once the cause is fixed, continue them from their last checkpoint:" in output
    assert "--resume" in output


def test_the_resume_command_keeps_bracketed_overrides(
    tmp_path: Path, curriculum: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The printed command is copied as is: ``[layer_norm]`` must not be swallowed as console markup."""

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("crl.train.run_child", interrupted)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    arguments = [str(curriculum), "--seed", "0", "--tracking-uri", uri, "--set", "interventions=[layer_norm]"]
    assert main(arguments) == INTERRUPTED_EXIT
    assert "--set 'interventions=[layer_norm]'" in capsys.readouterr().err


def _runs(uri: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    return client.search_runs([client.get_experiment_by_name("tiny").experiment_id])


def _parent(uri: str) -> str:
    (parent,) = [run.info.run_id for run in _runs(uri) if "mlflow.parentRunId" not in run.data.tags]
    return parent


def _fake_result(seed: int) -> ContinualResult:
    """What the tiny curriculum's two tasks of 200 steps give, without training."""
    return ContinualResult("s", ("a", "b"), (200, 200), "mean_return", [200, 400], np.ones((2, 2)), seed)


def _finish_without_training(client: MlflowClient, *args: Any) -> ContinualResult:
    """Stands in for ``run_child`` (called with its positional arguments): the seed's run is created
    (unless given) and finished at once."""
    curriculum, _, _, seed, _, parent_id, name, _, run_id = (*args, None)[:9]
    run_id = run_id or create_child_run(client, curriculum, name, seed, parent_id)
    client.set_terminated(run_id, "FINISHED")
    return _fake_result(seed)


def _interrupt(*args: Any) -> None:
    """Stands in for ``run_child``: a Ctrl-C before the seed starts."""
    raise KeyboardInterrupt


def test_resuming_a_parallel_launch_creates_no_second_run_per_seed(
    tmp_path: Path, curriculum: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    options = [str(curriculum), "--set", "metrics=null", "--tracking-uri", uri, "--workers", "2"]

    def interrupted(launch: ParallelLaunch, runs: dict[int, str]) -> dict[int, ContinualResult]:
        raise KeyboardInterrupt  # as a Ctrl-C before any worker trained

    monkeypatch.setattr(ParallelLaunch, "run", interrupted)
    assert main(options) == INTERRUPTED_EXIT
    created = {run.data.tags["seed"]: run.info.run_id for run in _runs(uri) if "seed" in run.data.tags}
    assert set(created) == {"0", "1"}

    given: dict[int, str] = {}

    def finish(launch: ParallelLaunch, runs: dict[int, str]) -> dict[int, ContinualResult]:
        given.update(runs)
        for run_id in runs.values():
            MlflowClient(tracking_uri=uri).set_terminated(run_id, "FINISHED")
        return {seed: _fake_result(seed) for seed in runs}

    monkeypatch.setattr(ParallelLaunch, "run", finish)
    assert main([*options, "--resume", _parent(uri)]) == 0
    assert given == {int(seed): run_id for seed, run_id in created.items()}  # the seeds' own runs
    runs = _runs(uri)
    assert len(runs) == 3 and {run.info.status for run in runs} == {"FINISHED"}  # no orphan RUNNING child


def test_resuming_one_seed_finishes_the_parent_only_once_every_seed_has(
    tmp_path: Path, curriculum: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    options = [str(curriculum), "--set", "metrics=null", "--tracking-uri", uri, "--workers", "1"]

    def seed_0_then_ctrl_c(*args: Any) -> ContinualResult:
        if args[3] == 1:
            raise KeyboardInterrupt  # seed 1 never starts
        return _finish_without_training(client, *args)

    monkeypatch.setattr("crl.train.run_child", seed_0_then_ctrl_c)
    assert main(options) == INTERRUPTED_EXIT
    parent = _parent(uri)
    (seed_0,) = [run.info.run_id for run in _runs(uri) if "seed" in run.data.tags]
    client.set_terminated(seed_0, "KILLED")  # as if seed 0 had been interrupted as well

    monkeypatch.setattr("crl.train.run_child", lambda *args: _finish_without_training(client, *args))
    capsys.readouterr()
    assert main([*options, "--resume", seed_0]) == 0
    assert client.get_run(seed_0).info.status == "FINISHED"
    assert client.get_run(parent).info.status == "KILLED"  # seed 1 of the launch has not run
    assert f"seed(s) 1 of the launch have not finished (parent run KILLED): resume {parent}" in capsys.readouterr().err

    assert main([*options, "--resume", parent]) == 0
    assert client.get_run(parent).info.status == "FINISHED"
    assert sorted(run.data.tags["seed"] for run in _runs(uri) if "seed" in run.data.tags) == ["0", "1"]


def test_a_resume_may_reach_the_store_by_another_uri_and_names_the_key_that_differs(
    tmp_path: Path, curriculum: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    absolute = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setattr("crl.train.run_child", _interrupt)
    assert main([str(curriculum), "--seed", "0", "--tracking-uri", absolute]) == INTERRUPTED_EXIT
    parent = _parent(absolute)

    client = MlflowClient(tracking_uri=absolute)
    monkeypatch.setattr("crl.train.run_child", lambda *args: _finish_without_training(client, *args))
    relative = "sqlite:///mlflow.db"  # the same store, from the working directory (tmp_path)
    assert main([str(curriculum), "--seed", "0", "--tracking-uri", relative, "--resume", parent]) == 0
    assert client.get_run(parent).info.status == "FINISHED"

    capsys.readouterr()
    changed = [str(curriculum), "--tracking-uri", relative, "--set", "evaluation.n_episodes=3", "--resume", parent]
    assert main(changed) == CONFIG_ERROR_EXIT
    error = capsys.readouterr().err
    assert (
        error.count("\n") == 1
        and "differs from the run's config.yml at key 'evaluation.n_episodes': 3 now, 1 in the run" in error
    )


def test_unusable_tracking_uri_checkpoint_directory_or_resumed_run_exit_2_before_training(
    tmp_path: Path, curriculum: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    trained: list[int] = []
    monkeypatch.setattr("crl.train.run_child", lambda *args: trained.append(args[3]))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    assert main([str(curriculum), "--tracking-uri", "bogus://x"]) == CONFIG_ERROR_EXIT
    error = capsys.readouterr().err
    assert (
        error.count("\n") == 1
        and "key 'tracking.tracking_uri' (--tracking-uri) = 'bogus://x': MLflow cannot use it" in error
    )

    (tmp_path / "a_file").write_text("")
    unwritable = tmp_path / "a_file" / "checkpoints"
    assert (
        main([str(curriculum), "--tracking-uri", uri, "--set", f"checkpoint.directory={unwritable}"])
        == CONFIG_ERROR_EXIT
    )
    error = capsys.readouterr().err
    assert (
        error.count("\n") == 1
        and f"key 'checkpoint.directory' = '{unwritable}': cannot write checkpoints there" in error
    )
    assert not (tmp_path / "mlflow.db").exists()

    foreign = create_run(MlflowClient(tracking_uri=uri), "tiny", "not a launch")
    capsys.readouterr()  # MLflow's messages as it creates the store
    assert main([str(curriculum), "--tracking-uri", uri, "--resume", foreign]) == CONFIG_ERROR_EXIT
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"--resume {foreign}: run {foreign} has no config.yml artifact" in error
    assert trained == [] and not (tmp_path / "checkpoints").exists()


class _RecordedProgress(TrainingProgress):
    made: ClassVar[list[TrainingProgress]] = []

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.made.append(self)


def _numbered_evaluations(monkeypatch: pytest.MonkeyPatch, fail_at: int | None = None) -> None:
    """Every task evaluation returns the next number 0, 1, 2, ... (raising at call ``fail_at``)."""
    numbers = itertools.count()

    def evaluate_task(evaluator: TaskEvaluator, model: Any, env: Any) -> float:
        number = next(numbers)
        if number == fail_at:
            raise RuntimeError("the evaluation env crashed")
        return float(number)

    monkeypatch.setattr(TaskEvaluator, "_evaluated_performance", evaluate_task)


def test_the_progress_bar_shows_the_last_evaluation(
    tmp_path: Path, curriculum: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _numbered_evaluations(monkeypatch)
    _RecordedProgress.made.clear()
    monkeypatch.setattr("crl.train.TrainingProgress", _RecordedProgress)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main([str(curriculum), "--seed", "0", "--set", "metrics=null", "--tracking-uri", uri]) == 0
    (progress,) = _RecordedProgress.made
    # Evaluations at 100, 200, 300 and 400 of two tasks each: the last one is (6 + 7) / 2.
    assert progress.last_evaluation == "6.5"
    assert progress.progress.tasks[0].fields["info"].endswith("last eval 6.5")


def test_a_failed_seed_keeps_the_evaluations_it_made(
    tmp_path: Path, curriculum: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _numbered_evaluations(monkeypatch, fail_at=4)  # in the evaluation at step 300
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(RuntimeError, match="the evaluation env crashed"):
        main([str(curriculum), "--seed", "0", "--set", "metrics=null", "--tracking-uri", uri])
    (child,) = [run for run in _runs(uri) if "seed" in run.data.tags]
    assert child.info.status == "FAILED"
    history = MlflowClient(tracking_uri=uri).get_metric_history(child.info.run_id, "continual/average")
    assert [(point.step, point.value) for point in history] == [(100, 0.5), (200, 2.5)]


@pytest.mark.parametrize("uri", ["sqlite:///a #b/mlflow.db", "sqlite:///c: d.db"])  # a comment, a mapping in YAML
def test_the_tracking_uri_is_taken_as_given_not_read_as_yaml(
    curriculum: Path, monkeypatch: pytest.MonkeyPatch, uri: str
) -> None:
    given = parse_args([str(curriculum), "--tracking-uri", uri, "--set", "tracking.tracking_uri=sqlite:///other.db"])
    assert resolve(given).tracking.tracking_uri == uri  # and --tracking-uri wins over --set
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert resolve(parse_args([str(curriculum)])).tracking.tracking_uri == uri


def test_a_tracking_uri_with_a_hash_reaches_its_store(
    tmp_path: Path, curriculum: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a #b").mkdir()
    uri = f"sqlite:///{tmp_path / 'a #b' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    monkeypatch.setattr("crl.train.run_child", lambda *args: _finish_without_training(client, *args))
    assert main([str(curriculum), "--seed", "0", "--tracking-uri", uri]) == 0
    assert len(_runs(uri)) == 2 and not (tmp_path / "a").exists()  # ` #b/...` was a YAML comment
    assert client.get_run(_parent(uri)).data.params["tracking.tracking_uri"] == uri


def test_a_deleted_or_unnamed_experiment_exits_2_before_any_run(
    tmp_path: Path, curriculum: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    trained: list[int] = []
    monkeypatch.setattr("crl.train.run_child", lambda *args: trained.append(args[3]))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    assert main([str(curriculum), "--tracking-uri", uri, "--set", "tracking.experiment=''"]) == CONFIG_ERROR_EXIT
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "key 'tracking.experiment' = '': String should have at least 1 character" in error
    assert not (tmp_path / "mlflow.db").exists()

    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("tiny")
    client.delete_experiment(experiment)  # as the MLflow UI does: only marked deleted
    capsys.readouterr()
    assert main([str(curriculum), "--tracking-uri", uri]) == CONFIG_ERROR_EXIT
    error = capsys.readouterr().err
    assert (
        error.count("\n") == 1
        and (
            f"tiny.yaml: key 'tracking.experiment' = 'tiny': MLflow's experiment {experiment} of that name is deleted; "
            f"restore it (MLFLOW_TRACKING_URI={uri} mlflow experiments restore --experiment-id {experiment})"
        )
        in error
    )
    assert client.search_runs([experiment], run_view_type=ViewType.ALL) == [] and trained == []
    with pytest.raises(ConfigError, match=r"experiment = 'tiny': MLflow's experiment \d+ of that name is deleted"):
        create_run(client, "tiny", "not a launch")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "sequence={tasks: [{env: CartPole-v1, name: g=10}, {env: CartPole-v1}], steps_per_task: 200}",
            "tiny.yaml: key 'sequence.tasks[0].name' = 'g=10': '=' cannot be in its MLflow metric 'continual/0_g=10'",
        ),
        (  # a name the preset derives from its options
            "sequence={preset: cartpole_physics, options: {physics: [[9.8, 0.5], [1.0e+20, 0.5]]}}",
            "tiny.yaml: key 'sequence.preset' = 'cartpole_physics': task 1 is named 'g1e+20-l0.5': '+' cannot be in "
            "its MLflow metric 'continual/1_g1e+20-l0.5'",
        ),
    ],
)
def test_a_task_name_mlflow_cannot_store_exits_2_before_any_run(
    tmp_path: Path, curriculum: Path, capsys: pytest.CaptureFixture[str], override: str, expected: str
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main([str(curriculum), "--tracking-uri", uri, "--set", override]) == CONFIG_ERROR_EXIT
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and expected in error, error
    assert not (tmp_path / "mlflow.db").exists()
