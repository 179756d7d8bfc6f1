"""Atari game modes on the real emulator (ale-py)."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium import spaces

from crl.wrappers import make_sequence
from crl.wrappers.atari import atari_flavours, atari_game_cycle, atari_sequence, atari_task


def _rollout(sequence, index: int, n_steps: int = 60) -> np.ndarray:
    """Preprocessed observations of task ``index`` under a fixed action sequence."""
    env = sequence.make_vec_env(index, seed=0)
    observations = [env.reset()]
    for action in np.random.default_rng(0).integers(0, 18, n_steps):
        observations.append(env.step(np.array([action]))[0])
    env.close()
    return np.stack(observations)


@pytest.mark.parametrize("game", ["SpaceInvaders", "Freeway"])
def test_a_mode_switch_changes_the_game(game: str) -> None:
    # Sticky actions off, so the only difference between the runs is the mode.
    tasks = [atari_task(game, mode, budget=100, repeat_action_probability=0.0) for mode in (0, 1, 0)]
    sequence = atari_sequence(tasks, "modes")
    mode_0, mode_1, mode_0_again = (_rollout(sequence, index) for index in range(3))
    np.testing.assert_array_equal(mode_0, mode_0_again)
    assert (mode_0 != mode_1).any(axis=(1, 2, 3, 4)).sum() > 10


def test_unavailable_mode_or_difficulty_is_rejected_naming_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"mode=3 is not available for Breakout; available modes: \[0, 4, 8, .*44\]"):
        atari_task("Breakout", mode=3)
    with pytest.raises(
        ValueError, match=r"difficulty=2 is not available for Freeway; available difficulties: \[0, 1\]"
    ):
        atari_task("Freeway", mode=0, difficulty=2)
    with pytest.raises(ValueError, match="game='NotAGame'"):
        atari_task("NotAGame")
    for mode in (True, 1.0):  # `in (0, 1)` let both through: True as a task "Pong-mTrue", 1.0 into ALE's TypeError
        with pytest.raises(ValueError, match=rf"mode={mode!r} is not an int; ALE numbers Pong's modes"):
            atari_task("Pong", mode=mode)


def test_flavours_are_read_from_the_rom() -> None:
    flavours = atari_flavours("SpaceInvaders")
    assert flavours.modes == tuple(range(16)) and flavours.difficulties == (0, 1)


def test_presets_share_the_full_action_space_and_sb3_preprocessing() -> None:
    sequence = make_sequence("freeway_modes", steps_per_task=1000)
    assert sequence.task_names == [f"Freeway-m{mode}" for mode in range(8)] and sequence.budgets == [1000] * 8
    assert sequence.action_space == spaces.Discrete(18)
    assert sequence.observation_space == spaces.Box(0, 255, (84, 84, 1), np.uint8)
    assert sequence.make_vec_env(0).observation_space.shape == (84, 84, 4)  # 4-frame stack
    assert len(make_sequence("space_invaders_modes")) == 10 and len(make_sequence("breakout_modes")) == 12


def test_game_cycle_keeps_each_game_task_id() -> None:
    sequence = atari_game_cycle(["Pong", "Breakout"], cycles=2, steps_per_task=10)
    assert sequence.task_names == ["Pong", "Breakout", "Pong", "Breakout"]
    assert sequence.task_ids == (0, 1, 0, 1) and sequence.n_task_ids == 2
