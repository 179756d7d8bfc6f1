"""Continual World on the real MuJoCo simulator (metaworld 3.x)."""

from __future__ import annotations

import inspect
import itertools
import pickle
import warnings

import cloudpickle
import gymnasium as gym
import numpy as np
import pytest

import crl
from crl.continual.loop import ContinualPosition
from crl.tracking.checkpoint import load_checkpoint, save_checkpoint
from crl.wrappers import make_sequence
from crl.wrappers.continual_world import CW10_TASKS, EpisodeSuccess, continual_world, cw10, metaworld_env


def _episode(env: gym.Env, policy=None, seed: int | None = None) -> tuple[int, list[float], dict]:
    observation, _ = env.reset(seed=seed)
    flags: list[float] = []
    while True:
        action = env.action_space.sample() if policy is None else policy.get_action(observation)
        observation, _, terminated, truncated, info = env.step(action)
        flags.append(info["success"])
        if terminated or truncated:
            return len(flags), flags, info


def test_cw_presets_follow_the_paper() -> None:
    ten, twenty = make_sequence("cw10", steps_per_task=5), make_sequence("cw20", steps_per_task=5)
    assert ten.task_names == list(CW10_TASKS) and twenty.task_names == list(CW10_TASKS) * 2
    assert ten.budgets == [5] * 10 and inspect.signature(cw10).parameters["steps_per_task"].default == 1_000_000
    assert ten.measure == "success_rate" and ten.task_id_in_obs
    # 39 Meta-World dims + the one-hot task id; CW20's second pass has its own ids
    assert ten.observation_space.shape == (49,) and twenty.observation_space.shape == (59,)


def test_a_switch_changes_the_mujoco_task() -> None:
    sequence = continual_world(["hammer", "push-wall"], steps_per_task=5)
    hammer, push_wall = (sequence.make_env(index) for index in range(2))
    assert type(hammer.unwrapped).__name__ == "SawyerHammerEnvV3"
    assert type(push_wall.unwrapped).__name__ == "SawyerPushWallEnvV3"
    assert hammer.unwrapped.model.nbody != push_wall.unwrapped.model.nbody
    first, _ = hammer.reset(seed=0)
    second, _ = push_wall.reset(seed=0)
    np.testing.assert_array_equal(first[-2:], [1, 0])
    np.testing.assert_array_equal(second[-2:], [0, 1])
    assert first in sequence.observation_space and second in sequence.observation_space


def test_consecutive_resets_draw_new_layouts_reproducibly() -> None:
    env = metaworld_env("push")
    object_and_goal = [np.r_[observation[4:7], observation[36:39]] for observation in _resets(env, seed=3)]
    assert all(not np.allclose(a, b) for a, b in itertools.pairwise(object_and_goal))
    again = [np.r_[observation[4:7], observation[36:39]] for observation in _resets(metaworld_env("push"), seed=3)]
    np.testing.assert_array_equal(object_and_goal, again)


def _resets(env: gym.Env, seed: int, n: int = 4) -> list[np.ndarray]:
    observations = [env.reset(seed=seed)[0]]
    observations += [env.reset()[0] for _ in range(n - 1)]
    return observations


def test_episodes_truncate_at_200_steps() -> None:
    env = metaworld_env("faucet-close")
    env.action_space.seed(0)
    length, _, _ = _episode(env, seed=0)
    assert length == 200


def test_success_is_the_flag_fired_at_any_step() -> None:
    from metaworld.policies import SawyerFaucetCloseV3Policy

    env = metaworld_env("faucet-close")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the scripted policy warns about its gains
        # seed 0: the scripted policy closes the faucet, then the flag drops again before the end
        _, flags, info = _episode(env, SawyerFaucetCloseV3Policy(), seed=0)
    assert max(flags) == 1.0 and flags[-1] == 0.0
    assert info["is_success"] is True
    env.action_space.seed(0)
    _, flags, info = _episode(env, seed=1)  # random actions do not close it
    assert max(flags) == 0.0 and info["is_success"] is False


class _Flags(gym.Env):
    """Emits the given success flags, one per step, and truncates after the last."""

    observation_space = gym.spaces.Box(0, 1, (1,))
    action_space = gym.spaces.Discrete(1)

    def __init__(self, flags: list[float]) -> None:
        self.flags = flags

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(1, np.float32), 0.0, False, self.t == len(self.flags), {"success": self.flags[self.t - 1]}


@pytest.mark.parametrize(("flags", "success"), [([0, 1, 0, 0], True), ([0, 0, 0, 0], False), ([0, 0, 0, 1], True)])
def test_episode_success_is_reported_only_at_the_end(flags, success) -> None:
    env = EpisodeSuccess(_Flags(flags))
    env.reset()
    infos = [env.step(0)[-1] for _ in flags]
    assert all("is_success" not in info for info in infos[:-1])
    assert infos[-1]["is_success"] is success
    env.reset()
    assert EpisodeSuccess(_Flags([0])).reset()[1] == {} and env._succeeded is False


def test_a_mid_episode_checkpoint_resumes_metaworld_in_a_fresh_episode(tmp_path) -> None:
    """Meta-World pickles, but its copy rebuilds the simulator with only qpos and qvel: not a continuation."""
    sequence = continual_world(["hammer"], steps_per_task=100)
    env = sequence.make_vec_env(0, seed=0)
    model = crl.SAC("MlpPolicy", env, seed=0, learning_starts=50, buffer_size=100, policy_kwargs=dict(net_arch=[8]))
    model.learn(20)
    simulator = env.envs[0].unwrapped.data
    copy = pickle.loads(cloudpickle.dumps(env)).envs[0].unwrapped.data
    assert not np.array_equal(copy.mocap_pos, simulator.mocap_pos) and copy.time != simulator.time  # lossy

    evaluation = [sequence.make_vec_env(0, seed=1)]
    directory = save_checkpoint(tmp_path, model, ContinualPosition(0, 20, eval_envs=evaluation), "run", 0)
    position = load_checkpoint(directory).position
    assert position.env is None and position.eval_envs is None  # learn_continual starts fresh ones
    assert (position.task, position.steps_done) == (0, 20)
