"""The continual training loop on real environments: CartPole shifts, MinAtar, Continual World."""

from __future__ import annotations

import csv
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pytest
import stable_baselines3 as sb3
import torch as th
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import CSVOutputFormat, KVWriter, Logger

import crl
from crl.continual import ContinualResult, SequenceProgress, learn_continual
from crl.continual.continual_world import REFERENCE_PROTOCOL, ContinualWorldSAC, reference_sac
from crl.continual.loop import (
    ContinualPosition,
    check_schedules,
    preserved_random_state,
    request_checkpoint,
)
from crl.interventions import Intervention, L2Previous, PlasticityInjection, Reset
from crl.random_draws import forked_devices
from crl.tracking.checkpoint import load_checkpoint, save_checkpoint
from crl.wrappers import TaskSequence, make_sequence, permuted_observations


class _Record(Intervention):
    """Records what the loop shows the interventions at task boundaries and at every learn() start."""

    name: ClassVar[str] = "test_continual_record"

    def model_post_init(self, context) -> None:
        self._events: list[tuple] = []

    def on_task_start(self, algo, task_id: int) -> None:
        self._events.append(("start", task_id))

    def on_training_start(self, algo) -> None:
        buffer = getattr(algo, "replay_buffer", None)
        modules = [algo.policy, getattr(algo, "actor", None), getattr(algo, "critic", None)]
        state = sum(len(module.optimizer.state) for module in modules if hasattr(module, "optimizer"))
        log_alpha = float(algo.log_ent_coef.detach()) if getattr(algo, "log_ent_coef", None) is not None else None
        self._events.append(("learn", None if buffer is None else buffer.pos, state, log_alpha))

    def on_task_end(self, algo, task_id: int) -> None:
        rate = float(getattr(algo, "exploration_rate", float("nan")))
        optimizer = getattr(algo.policy, "optimizer", None)
        self._events.append(("end", task_id, rate, None if optimizer is None else optimizer.param_groups[0]["lr"]))


DQN_SMALL = dict(learning_starts=100, train_freq=16, gradient_steps=4, batch_size=32, policy_kwargs=dict(net_arch=[32]))


def _dqn(sequence: TaskSequence, **kwargs) -> crl.DQN:
    return crl.DQN("MlpPolicy", sequence.make_vec_env(0, seed=0), seed=0, **{**DQN_SMALL, **kwargs})


def test_dqn_runs_through_three_cartpole_shifts() -> None:
    sequence = permuted_observations(n_tasks=3, steps_per_task=400)
    record = _Record()
    model = _dqn(sequence, interventions=[record], exploration_fraction=0.5)
    result = learn_continual(model, sequence, eval_every=300, n_eval_episodes=2)
    # every 300 steps of the sequence, plus every task's end
    np.testing.assert_array_equal(result.eval_steps, [300, 400, 600, 800, 900, 1200])
    assert result.performance.shape == (3, 6) and result.measure == "mean_return"
    assert np.all(result.performance >= 8)  # CartPole returns at least 8 per episode
    assert [event[:2] for event in record._events if event[0] != "learn"] == [
        ("start", 0),
        ("end", 0),
        ("start", 1),
        ("end", 1),
        ("start", 2),
        ("end", 2),
    ]
    # the exploration schedule restarts at every task and ends each one at its final value
    assert [event[2] for event in record._events if event[0] == "end"] == pytest.approx([0.05] * 3)
    assert model.current_task == 2 and model.num_timesteps >= 400


def test_schedules_can_run_over_the_whole_sequence() -> None:
    sequence = permuted_observations(n_tasks=3, steps_per_task=400)
    record = _Record()
    model = _dqn(sequence, interventions=[record], exploration_fraction=0.5, learning_rate=lambda left: 1e-3 * left)
    schedules = model.exploration_schedule, model.lr_schedule
    learn_continual(model, sequence, 10_000, n_eval_episodes=1, restart_exploration=False, restart_learning_rate=False)
    ends = [event for event in record._events if event[0] == "end"]
    # epsilon after 400, 800, 1200 of 1200 steps: linear from 1 to 0.05 over the first half
    assert [event[2] for event in ends] == pytest.approx([1 - (1 / 3) / 0.5 * 0.95, 0.05, 0.05], abs=0.02)
    # the learning rate of the last update of each task: 1e-3 x the sequence's progress left
    assert [event[3] for event in ends] == pytest.approx([1e-3 * 2 / 3, 1e-3 / 3, 0.0], abs=2e-5)
    assert (model.exploration_schedule, model.lr_schedule) == schedules  # restored after the loop


def test_sequence_progress_maps_task_progress_to_sequence_progress() -> None:
    progress = SequenceProgress(lambda remaining: remaining, start=10, budget=10, total=40)
    assert progress(1.0) == pytest.approx(0.75) and progress(0.5) == pytest.approx(0.625) and progress(0.0) == 0.5


def test_evaluation_does_not_change_training() -> None:
    sequence = permuted_observations(n_tasks=2, steps_per_task=300)
    # built one after the other: construction seeds the global generators that training draws from
    often = _dqn(sequence)
    learn_continual(often, sequence, eval_every=50, n_eval_episodes=2, deterministic_eval=False)
    rarely = _dqn(sequence)
    learn_continual(rarely, sequence, eval_every=10_000, n_eval_episodes=2, deterministic_eval=False)
    for mine, theirs in zip(often.policy.parameters(), rarely.policy.parameters(), strict=True):
        th.testing.assert_close(mine, theirs, rtol=0, atol=0)


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param("cuda", marks=pytest.mark.skipif(not th.cuda.is_available(), reason="needs CUDA")),
        pytest.param("mps", marks=pytest.mark.skipif(not th.backends.mps.is_available(), reason="needs MPS")),
    ],
)
def test_stochastic_evaluation_does_not_change_training(device: str) -> None:
    # PPO samples its evaluation actions from torch's generator of the model's device (DQN does not).
    sequence = permuted_observations(n_tasks=2, steps_per_task=128)

    def trained(eval_every: int) -> crl.PPO:
        model = crl.PPO("MlpPolicy", sequence.make_vec_env(0, seed=0), seed=0, n_steps=32, batch_size=32,
                        n_epochs=1, policy_kwargs=dict(net_arch=[16]), device=device)  # fmt: skip
        learn_continual(model, sequence, eval_every=eval_every, n_eval_episodes=2)
        return model

    often, rarely = trained(40), trained(10_000)
    for mine, theirs in zip(often.policy.parameters(), rarely.policy.parameters(), strict=True):
        th.testing.assert_close(mine, theirs, rtol=0, atol=0)


def test_evaluation_forks_the_random_generator_of_the_models_device() -> None:
    # fork_rng always forks the CPU generator; an accelerator's must be named (device and type).
    assert forked_devices(th.device("cpu")) == {"devices": []}
    assert forked_devices("cuda") == {"devices": [th.device("cuda")], "device_type": "cuda"}
    assert forked_devices("cuda:1") == {"devices": [th.device("cuda", 1)], "device_type": "cuda"}
    assert forked_devices("mps") == {"devices": [th.device("mps")], "device_type": "mps"}


def test_preserved_random_state_hands_fork_rng_the_models_device(monkeypatch: pytest.MonkeyPatch) -> None:
    # No GPU is used: only the arguments reaching fork_rng are checked, for a model that names a CUDA device.
    forked: list[dict[str, Any]] = []
    fork_rng = th.random.fork_rng

    def recording_fork_rng(**kwargs: Any) -> Any:
        forked.append(kwargs)
        return fork_rng(devices=[])  # the CPU generator only: this machine need not have the device

    monkeypatch.setattr(th.random, "fork_rng", recording_fork_rng)
    for device in (th.device("cpu"), th.device("cuda", 1)):
        with preserved_random_state(SimpleNamespace(device=device, action_space=spaces.Discrete(2))):  # type: ignore[arg-type]
            th.rand(3)
    assert forked == [{"devices": []}, {"devices": [th.device("cuda", 1)], "device_type": "cuda"}]


class _Dumps(KVWriter):
    """Records every dump's values, exclusions and step."""

    def __init__(self) -> None:
        self.dumps: list[tuple[dict[str, Any], dict[str, tuple[str, ...]], int]] = []

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        self.dumps.append((dict(key_values), dict(key_excluded), step))


def test_every_evaluation_reaches_the_sb3_logger_once_at_its_global_step(tmp_path) -> None:
    sequence = permuted_observations(n_tasks=2, steps_per_task=400)
    model = _dqn(sequence)
    dumps = _Dumps()
    model.set_logger(Logger(str(tmp_path), [CSVOutputFormat(str(tmp_path / "progress.csv")), dumps]))
    result = learn_continual(model, sequence, eval_every=100, n_eval_episodes=1)
    assert result.eval_steps.tolist() == [100, 200, 300, 400, 500, 600, 700, 800]
    with open(tmp_path / "progress.csv") as file:
        rows = [row for row in csv.DictReader(file) if row["continual/average"]]
    # once each, the task's end (400) and the sequence's (800) included, on the sequence's step axis
    assert [int(row["continual/step"]) for row in rows] == result.eval_steps.tolist()
    assert [float(row["continual/average"]) for row in rows] == pytest.approx(result.performance.mean(axis=0))
    assert [float(row["continual/1_permutation-1"]) for row in rows] == pytest.approx(result.performance[1])
    evaluations = [(values, excluded, step) for values, excluded, step in dumps.dumps if "continual/average" in values]
    assert [step for _, _, step in evaluations] == result.eval_steps.tolist()
    # dumped on their own: SB3's values recorded meanwhile wait for SB3's own dump, at its step
    assert all(set(values) == {"continual/0_permutation-0", "continual/1_permutation-1", "continual/average",
                               "continual/step"} for values, _, _ in evaluations)  # fmt: skip
    assert all(excluded["continual/step"] == ("tensorboard",) for _, excluded, _ in evaluations)
    assert any("train/loss" in values for values, _, _ in dumps.dumps)


def test_what_interventions_record_at_a_task_end_goes_out_with_its_evaluation(tmp_path) -> None:
    """At the task end's global step, the last task's too (left pending, it was never written)."""
    sequence = permuted_observations(n_tasks=2, steps_per_task=400)
    model = _dqn(sequence, interventions=[L2Previous()])
    dumps = _Dumps()
    model.set_logger(Logger(str(tmp_path), [dumps]))
    learn_continual(model, sequence, eval_every=200, n_eval_episodes=1)
    key = "interventions/l2_previous/importance"
    evaluations = {step: values for values, _, step in dumps.dumps if "continual/average" in values}
    assert list(evaluations) == [200, 400, 600, 800]
    assert [step for step, values in evaluations.items() if key in values] == [400, 800]
    assert evaluations[400][key] == evaluations[800][key] == 1.0  # L2's importance of each task
    assert not any(key in values for values, _, _ in dumps.dumps if "continual/average" not in values)


def test_result_of_a_run_can_be_saved(tmp_path) -> None:
    sequence = permuted_observations(n_tasks=2, steps_per_task=150)
    result = learn_continual(_dqn(sequence), sequence, eval_every=100, n_eval_episodes=1)
    result.save(tmp_path / "run.json")
    loaded = ContinualResult.load(tmp_path / "run.json")
    np.testing.assert_array_equal(loaded.performance, result.performance)
    assert loaded.task_names == ("permutation-0", "permutation-1") and loaded.seed == 0


def test_dqn_runs_through_three_minatar_games() -> None:
    sequence = make_sequence("minatar_cycle", steps_per_task=300)
    games = TaskSequence(sequence.tasks[:3], name="minatar3")
    result = learn_continual(_dqn(games), games, eval_every=300, n_eval_episodes=1)
    assert result.task_names == ("Asterix", "Breakout", "Freeway") and result.performance.shape == (3, 3)


def test_bad_calls_are_rejected_before_training() -> None:
    sequence = permuted_observations(n_tasks=2, steps_per_task=100)
    with pytest.raises(ValueError, match="eval_every=0: must be an int >= 1"):
        learn_continual(_dqn(sequence), sequence, eval_every=0)
    with pytest.raises(TypeError, match="needs a crl algorithm"):
        learn_continual(sb3.DQN("MlpPolicy", sequence.make_vec_env(0)), sequence, eval_every=10)
    with pytest.raises(ValueError, match="reset_replay_buffer=True needs an off-policy algorithm, got PPO"):
        learn_continual(crl.PPO("MlpPolicy", sequence.make_vec_env(0)), sequence, 10, reset_replay_buffer=True)
    other = crl.DQN("MlpPolicy", "Acrobot-v1")
    with pytest.raises(ValueError, match="Observation spaces do not match"):
        learn_continual(other, sequence, eval_every=10)
    assert other.num_timesteps == 0


def test_a_multi_head_policy_the_sequence_cannot_choose_heads_for_is_rejected_before_training() -> None:
    with_ids = TaskSequence(permuted_observations(n_tasks=3, steps_per_task=100).tasks, task_id_in_obs=True)
    two_heads = crl.DQN("MultiHeadPolicy", with_ids.make_vec_env(0), policy_kwargs=dict(n_heads=2))
    message = (
        "policy option n_heads=2: the heads are chosen by the last n_heads entries of each observation, and "
        f"sequence {with_ids.name!r} gives a one-hot task id of 3; use n_heads=3"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        learn_continual(two_heads, with_ids, eval_every=10)
    assert two_heads.num_timesteps == 0
    without_ids = permuted_observations(n_tasks=2, steps_per_task=100)
    # CartPole's 4 observations pass for 2 features and a 2-entry id: the policy cannot tell
    no_ids = crl.DQN("MultiHeadPolicy", without_ids.make_vec_env(0), policy_kwargs=dict(n_heads=2))
    with pytest.raises(ValueError, match="which sequence 'permuted_CartPole-v1' does not give; build it with"):
        learn_continual(no_ids, without_ids, eval_every=10)


def test_reference_sac_through_the_first_two_cw10_tasks() -> None:
    sequence = TaskSequence(make_sequence("cw10", steps_per_task=300).tasks[:2], "cw2", True, "success_rate")
    record = _Record()
    model = reference_sac(sequence, seed=0, buffer_size=1_000, random_steps=200, learning_starts=100)
    model.interventions.append(record)
    model._setup_model()  # rebuild the hook dispatcher with the recorder (a test-only shortcut)
    result = learn_continual(model, sequence, eval_every=300, **{**REFERENCE_PROTOCOL, "n_eval_episodes": 1})
    assert result.measure == "success_rate" and result.performance.shape == (2, 2)
    assert set(np.unique(result.performance)) <= {0.0, 1.0}
    learns = [event for event in record._events if event[0] == "learn"]
    # at the second task: empty replay buffer, no optimizer state, the initial temperature (log 1 = 0)
    assert learns[1][1:] == (0, 0, 0.0)
    assert model.replay_buffer.pos == 300 and model.num_timesteps == 300


def test_reference_sac_networks_and_warm_up() -> None:
    sequence = TaskSequence(make_sequence("cw10", steps_per_task=300).tasks[:2], "cw2", True, "success_rate")
    model = reference_sac(sequence, seed=0, buffer_size=1_000)
    assert isinstance(model, ContinualWorldSAC)
    assert (model.learning_rate, model.batch_size, model.tau, model.gamma) == (1e-3, 128, 0.005, 0.99)
    assert (model.train_freq.frequency, model.gradient_steps, model.learning_starts, model.random_steps) == (
        50,
        50,
        1000,
        10_000,
    )
    assert [layer.out_features for layer in model.actor.latent_pi if isinstance(layer, th.nn.Linear)] == [256] * 4
    assert model.critic.qf0[-1].out_features == 2 and model.actor.mu.out_features == 2 * 4
    # between learning_starts and random_steps the action is uniformly random: the action space's draw
    model.num_timesteps = 5_000
    state = model.action_space.np_random.bit_generator.state
    expected = model.action_space.sample()
    model.action_space.np_random.bit_generator.state = state
    action, _ = model._sample_action(model.learning_starts)
    np.testing.assert_allclose(action[0], expected, rtol=1e-6)  # SB3 rescales it to [-1, 1] and back
    with pytest.raises(ValueError, match="needs a sequence with task_id_in_obs=True"):
        reference_sac(permuted_observations("Pendulum-v1", n_tasks=1, steps_per_task=10))


def test_out_of_range_arguments_name_the_argument_its_value_and_what_is_allowed() -> None:
    sequence = permuted_observations(n_tasks=2, steps_per_task=100)
    model = _dqn(sequence)
    saved: list[ContinualPosition] = []
    cases = [
        (
            dict(n_eval_episodes=0),
            r"n_eval_episodes=0: must be an int >= 1 \(episodes per task and evaluation\)",
        ),
        (dict(n_eval_episodes=-1), r"n_eval_episodes=-1: must be an int >= 1"),
        (dict(checkpoint=saved.append, checkpoint_every=0), r"checkpoint_every=0: must be an int >= 1"),
        (dict(checkpoint=saved.append, checkpoint_every=-5), r"checkpoint_every=-5: must be an int >= 1"),
        (dict(eval_every=50.0), r"eval_every=50.0: must be an int >= 1 \(environment steps\)"),
        (dict(eval_every=True), r"eval_every=True: must be an int >= 1"),
        (dict(position=ContinualPosition(task=3)), r"position.task must lie in \[0, 2\] .*, got 3"),
        (
            dict(position=ContinualPosition(task=2)),
            r"position.task = 2 is the end of the sequence, but .* no evaluations",
        ),
        (dict(position=ContinualPosition(steps_done=100)), r"position.steps_done must lie in \[0, 99\] .*, got 100"),
        (dict(seed=-1), r"seed=-1: must be an int >= 0 \(or None for the model's seed\)"),
        (dict(seed="0"), r"seed='0': must be an int >= 0"),
        (dict(seed=1.5), r"seed=1.5: must be an int >= 0"),
    ]
    for arguments, message in cases:
        with pytest.raises(ValueError, match=message):
            learn_continual(model, sequence, **{"eval_every": 50, **arguments})
    assert model.num_timesteps == 0 and saved == []


def test_interventions_timed_where_the_sequence_never_gets_are_refused() -> None:
    sequence = permuted_observations(n_tasks=2, steps_per_task=100)
    model = _dqn(sequence, interventions=[PlasticityInjection(at_task=2)])
    with pytest.raises(ValueError, match=r"'interventions\[0\].at_task' = 2 \(plasticity_injection\): not a task of "
                       r"the 2-task sequence .*; allowed: 0 to 1"):  # fmt: skip
        learn_continual(model, sequence, eval_every=50)
    assert model.num_timesteps == 0
    # a later learn() may still reach a step past the sequence; crl.train's curricula train only the sequence
    late = _dqn(sequence, interventions=[Reset(at_steps=[50, 300])])
    check_schedules(late, sequence)
    with pytest.raises(ValueError, match=r"'interventions\[0\].at_steps' = \[50, 300\] \(reset\): \[300\] lie past "
                       r"the sequence's 200 environment steps; allowed: 1 to 200"):  # fmt: skip
        check_schedules(late, sequence, whole_training=True)


def test_numpy_integers_are_accepted_where_ints_are_expected(tmp_path) -> None:
    sequence = permuted_observations(n_tasks=1, steps_per_task=100)
    saved: list[ContinualPosition] = []
    result = learn_continual(
        _dqn(sequence),
        sequence,
        eval_every=np.int64(50),
        n_eval_episodes=np.int32(1),
        seed=np.int64(3),
        checkpoint=saved.append,
        checkpoint_every=np.int64(60),
        checkpoint_at_task_end=False,
    )
    assert result.eval_steps.tolist() == [50, 100]
    assert type(result.seed) is int and result.seed == 3
    result.save(tmp_path / "run.json")  # JSON takes Python ints only
    assert [position.steps_done for position in saved] == [64]  # the first rollout start (every 16 steps) from 60


def test_a_checkpoint_at_a_tasks_first_rollout_resumes_without_starting_the_task_again(tmp_path) -> None:
    # Shrink & perturb acts at the task boundary, before the checkpoint that a Ctrl-C asks for at the
    # first rollout start of task 1 (steps_done 0); resuming must not shrink and perturb a second time.
    sequence = permuted_observations(n_tasks=2, steps_per_task=300)

    def model() -> crl.DQN:
        return _dqn(sequence, interventions=[{"name": "shrink_perturb"}])

    uninterrupted = model()
    learn_continual(uninterrupted, sequence, eval_every=300, n_eval_episodes=1)

    class StopAtTaskOne(BaseCallback):
        def _on_training_start(self) -> None:
            if self.model.current_task == 1:
                request_checkpoint()

        def _on_step(self) -> bool:
            return True

    saved: list[Path] = []

    def checkpoint(position: ContinualPosition) -> None:
        saved.append(save_checkpoint(tmp_path, interrupted, position, "run", 0))

    interrupted = model()
    with pytest.raises(KeyboardInterrupt):
        learn_continual(interrupted, sequence, eval_every=300, n_eval_episodes=1, callback=StopAtTaskOne(),
                        checkpoint=checkpoint)  # fmt: skip
    restored = load_checkpoint(saved[-1])
    assert (restored.position.task, restored.position.steps_done, restored.position.task_started) == (1, 0, True)
    learn_continual(restored.model, sequence, eval_every=300, n_eval_episodes=1, position=restored.position)
    assert restored.model.interventions[0]._events == uninterrupted.interventions[0]._events == 1
    for ours, theirs in zip(restored.model.policy.parameters(), uninterrupted.policy.parameters(), strict=True):
        assert th.equal(ours, theirs)
