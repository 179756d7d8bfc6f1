"""Observation shifts: a fixed permutation and sign flip of the observation vector."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from crl.wrappers import ObservationShift
from crl.wrappers.synthetic import observation_shift, permuted_observations


def test_observation_shift_permutes_and_flips() -> None:
    env = ObservationShift(gym.make("CartPole-v1"), permutation=[2, 0, 3, 1], signs=[1, -1, -1, 1])
    shifted, _ = env.reset(seed=5)
    raw, _ = gym.make("CartPole-v1").reset(seed=5)
    np.testing.assert_array_equal(shifted, np.array([raw[2], -raw[0], -raw[3], raw[1]], dtype=np.float32))
    assert shifted.dtype == np.float32
    assert env.observation_space == gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)


def test_shifts_are_seeded_and_every_task_differs_from_every_earlier_one() -> None:
    # MountainCar has 2 observation components, so 8 shifts: with seed 0, task 1 drew task 0's
    # identity before each task had to differ from the earlier ones.
    for size, n_tasks in ((2, 8), (3, 20), (4, 30)):
        for seed in range(5):
            shifts = [observation_shift(size, task, seed) for task in range(n_tasks)]
            again = observation_shift(size, n_tasks - 1, seed)
            assert all(np.array_equal(a, b) for a, b in zip(shifts[-1], again, strict=True))
            assert np.array_equal(shifts[0][0], np.arange(size)) and np.all(shifts[0][1] == 1)
            keys = {(tuple(permutation), tuple(signs)) for permutation, signs in shifts}
            assert len(keys) == n_tasks
    with pytest.raises(ValueError, match="task 8: 2 observation components have 8 distinct shifts"):
        observation_shift(2, 8, 0)


def test_permuted_observations_are_checked_before_any_task_is_built() -> None:
    with pytest.raises(ValueError, match="n_tasks=9: MountainCar-v0's 2 observation components allow 8 distinct tasks"):
        permuted_observations("MountainCar-v0", n_tasks=9)
    with pytest.raises(ValueError, match=r"seed=-1: must be an int >= 0"):
        permuted_observations(seed=-1)
    with pytest.raises(ValueError, match=r"n_tasks=2.0: must be an int >= 1"):
        permuted_observations(n_tasks=2.0)


def test_the_default_sequence_keeps_its_draws() -> None:
    # Seeds whose draws never repeated a task keep their shifts (the README's default curriculum's).
    for task in range(1, 6):
        rng = np.random.default_rng(1000 * 0 + task)
        permutation, signs = observation_shift(4, task, 0)
        assert np.array_equal(permutation, rng.permutation(4)) and np.array_equal(signs, rng.choice([-1, 1], size=4))


@pytest.mark.parametrize(
    ("permutation", "signs", "message"),
    [
        ([0, 1, 1, 2], [1, 1, 1, 1], r"permutation must reorder range\(4\), got \[0, 1, 1, 2\]"),
        ([0, 1, 2, 3], [1, 2, 1, 1], r"signs must be 4 values of \+1 or -1"),
    ],
)
def test_bad_shift_is_rejected(permutation, signs, message) -> None:
    with pytest.raises(ValueError, match=message):
        ObservationShift(gym.make("CartPole-v1"), permutation, signs)
