"""Synthetic task shifts for any gymnasium environment."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces


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

    @classmethod
    def random(cls, env: gym.Env, seed: int) -> ObservationShift:
        """A shift drawn from ``seed``: a uniformly random permutation and independent random signs."""
        rng = np.random.default_rng(seed)
        size = env.observation_space.shape[0]  # type: ignore[index]
        return cls(env, rng.permutation(size), rng.choice([-1, 1], size=size))

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return self.signs * observation[self.permutation]
