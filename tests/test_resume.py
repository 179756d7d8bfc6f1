"""Kill a training process mid-task with SIGKILL, resume it: the same model, a metric history without gap or repeat."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch as th
from mlflow import MlflowClient

import crl
from crl.continual.loop import ContinualPosition
from crl.tracking import checkpoint as checkpoint_module
from crl.tracking.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

CURRICULUM = """\
algorithm: DQN
policy_options: {net_arch: [16]}
hyperparameters: {buffer_size: 2000, learning_starts: 100, batch_size: 16, train_freq: 4, target_update_interval: 50}
interventions: [layer_norm]
metrics: {every: 200, probe_batch_size: 32}
sequence: {preset: cartpole_permuted, options: {n_tasks: 2}, steps_per_task: 1000}
evaluation: {every: 500, n_episodes: 1}
checkpoint: {every: 200}
tracking: {experiment: resume}
seeds: [0]
"""
KEYS = ("rollout/exploration_rate", "train/loss", "plasticity/q_net/all/dormant_ratio", "task", "continual/average")


def _train(
    directory: Path, *arguments: str, cwd: Path | None = None, curriculum: str = "curriculum.yaml"
) -> subprocess.Popen[bytes]:
    # One torch thread in every process, so that the runs compared are computed the same way.
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{directory / 'mlflow.db'}"}
    command = [sys.executable, "-m", "crl.train", curriculum, *arguments]
    return subprocess.Popen(
        command, cwd=cwd or directory, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _finish(process: subprocess.Popen[bytes]) -> None:
    _, error = process.communicate(timeout=300)
    assert process.returncode == 0, error.decode()[-2000:]


def _child(directory: Path) -> str:
    client = MlflowClient(f"sqlite:///{directory / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("resume").experiment_id])
    return next(run.info.run_id for run in runs if "seed" in run.data.tags)


def _final_model(directory: Path) -> crl.DQN:
    client = MlflowClient(f"sqlite:///{directory / 'mlflow.db'}")
    return crl.DQN.load(client.download_artifacts(_child(directory), "model.zip", str(directory)))


def _history(directory: Path, key: str) -> list[tuple[int, float]]:
    client = MlflowClient(f"sqlite:///{directory / 'mlflow.db'}")
    return [(point.step, point.value) for point in client.get_metric_history(_child(directory), key)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("uninterrupted")
    (directory / "curriculum.yaml").write_text(CURRICULUM)
    _finish(_train(directory))
    return directory


@pytest.mark.parametrize("kill_in_task", [0, 1])
def test_a_run_killed_mid_task_resumes_to_the_uninterrupted_model(
    tmp_path: Path, uninterrupted: Path, kill_in_task: int
) -> None:
    """Killed in the first task, the resumed process crosses a task boundary; killed in the second, the
    checkpoint holds evaluations and evaluation envs that have been used."""
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "curriculum.yaml").write_text(CURRICULUM)

    process = _train(killed)
    checkpoint = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        runs = list((killed / "checkpoints").glob("*")) if (killed / "checkpoints").exists() else []
        checkpoint = latest_checkpoint(killed / "checkpoints", runs[0].name) if runs else None
        # The task's first mid-task checkpoints (the whole run takes about a second): killed 50 ms after
        # one, it has logged steps past the checkpoint that the resumed run re-trains without logging them
        # again, and it leaves the task's last evaluation to the resumed run, even on a loaded machine.
        if checkpoint is not None and checkpoint.name in (f"task{kill_in_task}-step{step}" for step in (200, 400)):
            time.sleep(0.05)
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before a mid-task checkpoint was seen"
    assert checkpoint is not None
    killed_history = _history(killed, "continual/average")
    parent = MlflowClient(f"sqlite:///{killed / 'mlflow.db'}").get_run(_child(killed)).data.tags["mlflow.parentRunId"]

    if kill_in_task == 0:
        _finish(_train(killed, "--resume", parent))
    else:  # by the child's id, from another working directory: the checkpoints are found through the run's tag
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        curriculum = str(killed / "curriculum.yaml")
        _finish(_train(killed, "--resume", _child(killed), cwd=elsewhere, curriculum=curriculum))

    for key in KEYS:
        history, expected = _history(killed, key), _history(uninterrupted, key)
        steps = [step for step, _ in history]
        assert steps == sorted(set(steps)), f"{key}: a step is logged twice"
        assert history == expected, f"{key}: the resumed run's history differs from the uninterrupted run's"
    assert len(killed_history) < len(_history(killed, "continual/average"))  # the resumed process did log
    resumed, reference_model = _final_model(killed), _final_model(uninterrupted)
    for name, parameter in reference_model.policy.state_dict().items():
        assert th.equal(resumed.policy.state_dict()[name], parameter), name
    assert resumed.num_timesteps == reference_model.num_timesteps
    run = MlflowClient(f"sqlite:///{killed / 'mlflow.db'}").get_run(parent)
    assert run.info.status == "FINISHED"


def _small_dqn() -> crl.DQN:
    model = crl.DQN("MlpPolicy", "CartPole-v1", seed=0, learning_starts=50, policy_kwargs=dict(net_arch=[8]))
    model.learn(100)
    return model


def test_a_kill_while_replacing_a_checkpoint_of_the_same_name_keeps_a_complete_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C checkpoint at the rollout start right after a task-end checkpoint has its name."""
    model, position = _small_dqn(), ContinualPosition(task=1, steps_done=0)
    first, saved_at = save_checkpoint(tmp_path, model, position, "run", 0), model.num_timesteps
    model.learn(50, reset_num_timesteps=False)

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # the process dies while writing the replay buffer

    monkeypatch.setattr(model, "save_replay_buffer", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, model, position, "run", 0)
    assert latest_checkpoint(tmp_path, "run") == first
    assert load_checkpoint(first).model.num_timesteps == saved_at  # the previous checkpoint, whole

    # Killed once the new one is renamed into place, before `latest` names it: the new one is found.
    monkeypatch.undo()
    replace = checkpoint_module._replace_atomically
    calls: list[str] = []

    def killed_on_second_call(path: Path, text: str) -> None:
        calls.append(text)
        if len(calls) == 2:
            raise KeyboardInterrupt
        replace(path, text)

    monkeypatch.setattr(checkpoint_module, "_replace_atomically", killed_on_second_call)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, model, position, "run", 0)
    assert latest_checkpoint(tmp_path, "run") == first
    assert load_checkpoint(first).model.num_timesteps == model.num_timesteps > saved_at  # the new one
    monkeypatch.undo()
    save_checkpoint(tmp_path, model, ContinualPosition(task=1, steps_done=50), "run", 0)
    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == ["latest", "task1-step50"]
