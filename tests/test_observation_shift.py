"""Observation shifts: a fixed permutation and sign flip of the observation vector."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from crl.wrappers import ObservationShift


def test_observation_shift_permutes_and_flips() -> None:
    env = ObservationShift(gym.make("CartPole-v1"), permutation=[2, 0, 3, 1], signs=[1, -1, -1, 1])
    shifted, _ = env.reset(seed=5)
    raw, _ = gym.make("CartPole-v1").reset(seed=5)
    np.testing.assert_array_equal(shifted, np.array([raw[2], -raw[0], -raw[3], raw[1]], dtype=np.float32))
    assert shifted.dtype == np.float32
    assert env.observation_space == gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)


def test_random_shifts_are_seeded_and_differ_between_tasks() -> None:
    base = gym.make("CartPole-v1")
    first, again = ObservationShift.random(base, seed=1), ObservationShift.random(base, seed=1)
    other = ObservationShift.random(base, seed=2)
    assert np.array_equal(first.permutation, again.permutation) and np.array_equal(first.signs, again.signs)
    assert not (np.array_equal(first.permutation, other.permutation) and np.array_equal(first.signs, other.signs))


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
