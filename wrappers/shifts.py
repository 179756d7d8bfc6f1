"""Synthetic task shifts for any gymnasium environment."""

from __future__ import annotations

from typing import SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.classic_control.cartpole import CartPoleEnv


class ObservationShift(gym.ObservationWrapper):
    """Permute and sign-flip a vector observation: ``obs'[i] = signs[i] * obs[permutation[i]]``.

    Each task of a shift sequence is the same environment seen through a different fixed
    permutation and sign pattern (the CPU-scale plasticity case of SPEC.md §5). The observation space
    becomes unbounded with the original shape and dtype, so every task of a sequence shares one space
    (SB3's ``set_env`` requires identical spaces).

    :param env: environment with a flat ``Box`` observation space
    :param permutation: a permutation of ``range(n)``
    :param signs: ``+1``/``-1`` per output component
    """

    def __init__(self, env: gym.Env, permutation: np.ndarray, signs: np.ndarray) -> None:
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, spaces.Box) or len(space.shape) != 1:
            raise ValueError(f"ObservationShift needs a flat Box observation space, got {space}")
        size = space.shape[0]
        self.permutation = np.asarray(permutation, dtype=np.int64)
        self.signs = np.asarray(signs, dtype=space.dtype)
        if sorted(self.permutation.tolist()) != list(range(size)):
            raise ValueError(f"permutation must reorder range({size}), got {self.permutation.tolist()}")
        if self.signs.shape != (size,) or not np.all(np.abs(self.signs) == 1):
            raise ValueError(f"signs must be {size} values of +1 or -1, got {self.signs.tolist()}")
        self.observation_space = spaces.Box(-np.inf, np.inf, space.shape, space.dtype)  # type: ignore[arg-type]

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return self.signs * observation[self.permutation]


class ActionShuffle(gym.ActionWrapper):
    """Relabel the actions of a discrete environment: action ``a`` runs the base env's ``permutation[a]``.

    :param env: environment with a ``Discrete`` action space
    :param permutation: a permutation of ``range(n)``
    """

    def __init__(self, env: gym.Env, permutation: np.ndarray) -> None:
        super().__init__(env)
        space = env.action_space
        if not isinstance(space, spaces.Discrete):
            raise ValueError(f"ActionShuffle needs a Discrete action space, got {space}")
        size = int(space.n)
        self.permutation = np.asarray(permutation, dtype=np.int64)
        if sorted(self.permutation.tolist()) != list(range(size)):
            raise ValueError(f"permutation must reorder range({size}), got {self.permutation.tolist()}")
        self._start = int(space.start)
        # Base action per action, as Python ints (list indexing is the cheapest per-step lookup).
        self._base_actions: list[int] = (self.permutation + self._start).tolist()

    def action(self, action: int | np.integer) -> int:
        return self._base_actions[int(action) - self._start]


class RewardSignFlip(gym.RewardWrapper):
    """Negate every reward: the task asks for the opposite behaviour (CartPole: fall fast)."""

    def reward(self, reward: SupportsFloat) -> float:
        return -float(reward)


class CartPolePhysics(gym.Wrapper):
    """CartPole with another gravity and pole length (both set on the simulator at construction).

    :param env: a ``CartPole`` environment (possibly wrapped)
    :param gravity: gravitational acceleration in m/s^2 (gymnasium's default: 9.8)
    :param length: HALF the pole length in m, as gymnasium's ``CartPoleEnv.length`` (default: 0.5)
    """

    def __init__(self, env: gym.Env, gravity: float = 9.8, length: float = 0.5) -> None:
        super().__init__(env)
        cartpole = env.unwrapped
        if not isinstance(cartpole, CartPoleEnv):
            raise ValueError(f"CartPolePhysics needs a CartPole environment, got {type(cartpole).__name__}")
        if gravity <= 0 or length <= 0:
            raise ValueError(f"gravity and length must be positive, got gravity={gravity}, length={length}")
        self.gravity = gravity
        self.length = length
        cartpole.gravity = gravity
        cartpole.length = length
        # Derived in CartPoleEnv.__init__ from the length, so it must follow it.
        cartpole.polemass_length = cartpole.masspole * length
