"""MinAtar game switches on the real games (minatar 1.0.15)."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.wrappers import TimeLimit

from crl.wrappers import make_sequence
from crl.wrappers.minatar import MAX_EPISODE_STEPS, MINATAR_GAMES, minatar_env, n_channels


@pytest.mark.parametrize("game", MINATAR_GAMES)
def test_padded_games_keep_their_own_channels_and_add_zero_ones(game: str) -> None:
    own, padded = minatar_env(game), minatar_env(game, channels=10)
    first, _ = own.reset(seed=1)
    second, _ = padded.reset(seed=1)
    for step in range(40):
        first, second = own.step(step % 6)[0], padded.step(step % 6)[0]
        channels = first.shape[-1]
        np.testing.assert_array_equal(second[..., :channels], first)
        assert not second[..., channels:].any() and second in padded.observation_space
    assert first.any()  # the games draw something, so the comparison means something


def test_channel_counts_and_bad_padding() -> None:
    assert [n_channels(game) for game in MINATAR_GAMES] == [4, 4, 7, 10, 6]
    with pytest.raises(ValueError, match="channels=5 is fewer than Seaquest's own 10 channels"):
        minatar_env("Seaquest", channels=5)
    with pytest.raises(ValueError, match=r"game='Pong' is not a MinAtar game; available: \['Asterix'"):
        minatar_env("Pong")


def test_cycle_shares_one_space_and_keeps_game_ids() -> None:
    sequence = make_sequence("minatar_cycle", steps_per_task=100, cycles=2)
    assert sequence.observation_space == spaces.Box(0.0, 1.0, (10, 10, 10), bool)
    assert sequence.action_space == spaces.Discrete(6)
    assert sequence.task_names == list(MINATAR_GAMES) * 2 and sequence.task_ids == (0, 1, 2, 3, 4) * 2
    observations = [sequence.make_vec_env(index, seed=0).reset() for index in range(5)]
    assert all(observation.shape == (1, 10, 10, 10) for observation in observations)
    # the games differ: no two first frames are the same
    assert len({observation.tobytes() for observation in observations}) == 5


def test_episodes_are_truncated_after_max_episode_steps() -> None:
    """MinAtar ends no episode but Freeway's by time: an agent that stops losing plays, and is evaluated, forever."""
    env = minatar_env("Freeway", max_episode_steps=7)
    env.reset(seed=0)
    # Freeway's own end is its 2,500-step timer: nothing else ends these 7 steps
    outcomes = [env.step(0)[2:4] for _ in range(7)]
    assert outcomes == [(False, False)] * 6 + [(False, True)]
    sequence = make_sequence("minatar_cycle", steps_per_task=100, games=["Freeway"], max_episode_steps=3)
    vec_env = sequence.make_vec_env(0, seed=0)
    vec_env.reset()
    dones = [bool(vec_env.step(np.array([0]))[2][0]) for _ in range(3)]
    assert dones == [False, False, True]  # SB3's Monitor ends the episode at the truncation
    assert (
        make_sequence("minatar_cycle", steps_per_task=100).tasks[0].make_env()._max_episode_steps == MAX_EPISODE_STEPS
    )
    unlimited = make_sequence("minatar_cycle", steps_per_task=100, max_episode_steps=None).tasks[0].make_env()
    assert not isinstance(unlimited, TimeLimit)
    with pytest.raises(ValueError, match=r"max_episode_steps=0: must be an int >= 1 \(environment steps per episode\)"):
        make_sequence("minatar_cycle", steps_per_task=100, max_episode_steps=0)
