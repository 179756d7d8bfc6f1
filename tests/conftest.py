from collections.abc import Callable

import gymnasium as gym
import numpy as np
import pytest
import torch as th


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Bitwise comparisons need the same reduction order in both runs."""
    threads = th.get_num_threads()
    th.set_num_threads(1)
    yield
    th.set_num_threads(threads)


class SpacesEnv(gym.Env):
    """Random observations of a given space, no reward, no end; two actions unless told.

    :param observation_space: the observation space (seeded by ``reset(seed=...)``)
    :param action_space: the action space (default ``Discrete(2)``)
    """

    def __init__(self, observation_space: gym.Space, action_space: gym.Space | None = None) -> None:
        self.observation_space = observation_space
        self.action_space = action_space if action_space is not None else gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.observation_space.seed(seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


class ImageEnv(SpacesEnv):
    """Random uint8 frames of a given shape (channels last, as Atari's stacked frames), two actions, no end.

    :param shape: the observation's shape
    """

    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__(gym.spaces.Box(0, 255, shape, np.uint8))


@pytest.fixture
def image_env() -> Callable[..., gym.Env]:
    """A factory of :class:`ImageEnv`: ``image_env()`` has Atari's shape (84, 84, 4), ``image_env((36, 36, 1))``
    is the smallest a NatureCNN takes."""
    return lambda shape=(84, 84, 4): ImageEnv(shape)
