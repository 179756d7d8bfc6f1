"""MinAtar game switches on the real games (minatar 1.0.15)."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium import spaces

from crl.wrappers import make_sequence
from crl.wrappers.minatar import MINATAR_GAMES, minatar_env, n_channels


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
