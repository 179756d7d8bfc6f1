"""``python -m crl.train``: a tiny CartPole curriculum into a temporary MLflow store."""

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from crl.continual import ContinualResult
from crl.process import ProcessSettings
from crl.train import CONFIG_ERROR_EXIT, INTERRUPTED_EXIT, main

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
    monkeypatch.setattr(ProcessSettings, "apply", lambda settings: applied.append(settings))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    options = ["--seed", "0", "--set", "metrics=null", "--tracking-uri", uri]
    assert main([str(curriculum), *options, "--no-keep-freed-memory", "--torch-threads", "2"]) == 0
    assert applied == [ProcessSettings(torch_threads=2, keep_freed_memory=False)]


def test_config_errors_exit_with_2_before_any_run(tmp_path: Path, curriculum: Path, capsys) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main([str(curriculum), "--tracking-uri", uri, "--set", "sequence.options.n_tasks=zero"])
    assert code == CONFIG_ERROR_EXIT
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "sequence" in error and "\n" not in error
    assert main([str(tmp_path / "missing.yaml"), "--tracking-uri", uri]) == CONFIG_ERROR_EXIT
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
