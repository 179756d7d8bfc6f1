"""crl's DummyVecEnv returns what SB3's returns, and never hands out an object the env or the vec env reuses."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv as SB3DummyVecEnv

import crl
from crl.wrappers.vec_env import DummyVecEnv, copy_infos


class SharedBuffersEnv(gym.Env):
    """Returns the same observation array and the same info dict every step, changed in place.

    Episodes end every ``length`` steps; the info carries a nested dict and an array every other step,
    so both the shallow and the deep copy paths are taken.
    """

    observation_space = spaces.Box(-np.inf, np.inf, (3,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, length: int = 4) -> None:
        self.length = length
        self._obs = np.zeros(3, np.float32)
        self._info: dict = {}
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        self._obs[:] = -1.0
        self._info.clear()
        return self._obs, self._info

    def step(self, action):
        self._t += 1
        self._obs[:] = self._t + int(action)
        self._info.clear()
        self._info["t"] = self._t
        if self._t % 2 == 0:
            self._info["nested"] = {"t": self._t}
            self._info["array"] = self._obs
        return self._obs, float(self._t), self._t >= self.length, False, self._info


class DictObservation(gym.ObservationWrapper):
    """CartPole with a dict observation: the state and its sign."""

    def __init__(self) -> None:
        super().__init__(gym.make("CartPole-v1"))
        box = self.env.observation_space
        self.observation_space = spaces.Dict({"state": box, "sign": spaces.MultiBinary(box.shape)})

    def observation(self, observation):
        return {"state": observation, "sign": (observation > 0).astype(np.int8)}


def _rollout(vec_env_cls, make_env, n_envs: int, steps: int) -> list:
    """Every step's return, kept as returned: later steps must not change what earlier steps handed out."""
    env = vec_env_cls([make_env] * n_envs)
    env.seed(0)
    returned = [env.reset()]
    for t in range(steps):
        returned.append(env.step(np.array([(t + i) % 2 for i in range(n_envs)])))
    return returned


def _snapshot(value):
    """A value-equality view of nested tuples, lists, dicts and arrays."""
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, dict):
        return ("dict", type(value).__name__, {key: _snapshot(item) for key, item in value.items()})
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [_snapshot(item) for item in value])
    return value


@pytest.mark.parametrize(
    "make_env",
    [SharedBuffersEnv, lambda: gym.make("CartPole-v1"), DictObservation],
    ids=["shared_buffers", "cartpole", "dict_observation"],
)
def test_same_returns_as_sb3_and_nothing_aliased(make_env) -> None:
    """Step by step equal to SB3's DummyVecEnv, and what a step returned stays as it was returned."""
    ours = _rollout(DummyVecEnv, make_env, n_envs=2, steps=30)
    theirs = _rollout(SB3DummyVecEnv, make_env, n_envs=2, steps=30)
    assert [_snapshot(r) for r in ours] == [_snapshot(r) for r in theirs]

    # Replay the run, recording each step's return at the moment it is returned.
    env = DummyVecEnv([make_env] * 2)
    env.seed(0)
    at_return = [_snapshot(env.reset())]
    for t in range(30):
        at_return.append(_snapshot(env.step(np.array([t % 2, (t + 1) % 2]))))
    assert [_snapshot(r) for r in ours] == at_return


def test_shallow_copies_only_for_flat_immutable_infos() -> None:
    flat = [{"lives": 3, "frame": np.int64(4), "TimeLimit.truncated": False}, {"name": "x", "value": None}]
    copies = copy_infos(flat)
    assert copies == flat
    assert all(copy is not info for copy, info in zip(copies, flat, strict=True))

    nested = [{"episode": {"r": 1.0}}, {"terminal_observation": np.zeros(2)}]
    copies = copy_infos(nested)
    assert copies[0]["episode"] == {"r": 1.0} and copies[0]["episode"] is not nested[0]["episode"]
    assert copies[1]["terminal_observation"] is not nested[1]["terminal_observation"]

    class Tagged(str):
        """A str subclass whose instances carry a mutable attribute."""

    tagged = Tagged("x")
    tagged.notes = []
    assert copy_infos([{"name": tagged}])[0]["name"] is not tagged  # deep-copied, as SB3 would

    shared = {"lives": 3}
    copies = copy_infos([shared, shared])
    assert copies[0] is copies[1] and copies[0] is not shared  # as deepcopy keeps the sharing


def test_algorithms_wrap_a_single_env_in_crls_vec_env() -> None:
    model = crl.DQN("MlpPolicy", "CartPole-v1", device="cpu")
    assert type(model.get_env()) is DummyVecEnv
