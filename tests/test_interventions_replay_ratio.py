"""Adaptive replay ratio: the switch rule on a scripted FAU sequence, and real gradient-step counts."""

from __future__ import annotations

import pytest

import crl
from crl.interventions import AdaptiveReplayRatio, InterventionError
from crl.interventions.adaptive_replay_ratio import replay_schedule


@pytest.mark.parametrize(
    ("ratio", "n_envs", "expected"), [(0.5, 1, (1, 2)), (2.0, 1, (2, 1)), (0.25, 4, (1, 1)), (0.75, 1, (3, 4))]
)
def test_replay_schedule(ratio: float, n_envs: int, expected: tuple[int, int]) -> None:
    assert replay_schedule(ratio, n_envs) == expected


def test_scripted_fau_sequence_switches_exactly_once_at_the_right_check() -> None:
    arr = AdaptiveReplayRatio(gap=0.01)
    model = crl.DQN("MlpPolicy", "CartPole-v1", interventions=[arr])
    assert (model.gradient_steps, model.train_freq.frequency) == (1, 2)
    # window means 0.5, 0.6, 0.65, 0.655 (moved 0.005 <= gap: switch), 0.70, 0.701
    windows = [[0.4, 0.6], [0.6], [0.7, 0.6], [0.655], [0.70], [0.701]]
    switched = []
    for values in windows:
        for value in values:
            arr.record_fau(value)
        switched.append(arr.close_window(model))
    assert switched == [False, False, False, True, False, False]
    assert arr._switch_check == 4 and arr.replay_ratio == 2.0
    assert (model.gradient_steps, model.train_freq.frequency) == (2, 1)


def test_windows_close_at_the_first_check_after_each_multiple_of_check_every_episodes() -> None:
    arr = AdaptiveReplayRatio(check_every=5, gap=0.0)
    model = crl.DQN("MlpPolicy", "CartPole-v1", interventions=[arr])
    checks = []
    for _ in range(7):  # three episodes end before every train()
        arr.record_fau(0.5)
        model._episode_num += 3
        arr.on_train_end(model)
        checks.append(arr._checks)
    # episodes 3, 6, 9, 12, 15, 18, 21: windows close at 6, 12, 15 and 21
    assert checks == [0, 1, 1, 2, 3, 3, 4]


def _updates_per_step(model: crl.DQN, steps: int) -> float:
    before_updates, before_steps = model._n_updates, model.num_timesteps
    model.learn(steps, reset_num_timesteps=False)
    return (model._n_updates - before_updates) / (model.num_timesteps - before_steps)


def test_the_number_of_gradient_steps_per_env_step_really_changes() -> None:
    never = AdaptiveReplayRatio(check_every=2, gap=0.0)
    model = crl.DQN("MlpPolicy", "CartPole-v1", learning_starts=50, seed=0, interventions=[never])
    model.learn(100)
    assert _updates_per_step(model, 200) == 0.5

    switch = AdaptiveReplayRatio(check_every=2, gap=1.0)  # FAU always within 1.0: switch at the 2nd check
    model = crl.DQN("MlpPolicy", "CartPole-v1", learning_starts=50, seed=0, interventions=[switch])
    model.learn(600)
    assert switch._switch_check == 2
    assert model.logger.name_to_value["interventions/adaptive_replay_ratio/replay_ratio"] == 2.0
    assert _updates_per_step(model, 200) == 2.0


def test_sac_measures_the_critics_fau() -> None:
    arr = AdaptiveReplayRatio(check_every=1, gap=1.0)
    model = crl.SAC(
        "MlpPolicy",
        "Pendulum-v1",
        learning_starts=100,
        policy_kwargs=dict(net_arch=[16, 16]),
        seed=0,
        interventions=[arr],
    )
    model.learn(450)  # Pendulum episodes last 200 steps: checks at steps 200 and 400
    assert 0.0 < model.logger.name_to_value["interventions/adaptive_replay_ratio/fau"] <= 1.0
    assert arr._switch_check == 2 and model.gradient_steps == 2


def test_only_off_policy_and_high_above_low() -> None:
    with pytest.raises(InterventionError, match="does not apply to PPO"):
        crl.PPO("MlpPolicy", "CartPole-v1", interventions=["adaptive_replay_ratio"])
    with pytest.raises(InterventionError, match=r"high=0\.5 must be larger than low=0\.5"):
        AdaptiveReplayRatio(high=0.5)
