"""Continual World (Wolczyk et al. 2021) on the ``metaworld`` 3.x package (SPEC.md §3).

CW10 is ten Meta-World manipulation tasks in a fixed order, CW20 the same ten twice. The protocol:
episodes of 200 steps, a new random object and goal layout at every reset, the one-hot task id
appended to the observation, and success = the ``success`` flag fired at any step of the episode.

Where this differs from the original benchmark (Meta-World v1, ``continualworld`` code):

- The tasks are Meta-World's ``-v3`` versions: reward functions and some object placements were
  reworked after v1 (v2 rewards, kept in v3), so absolute success rates are not comparable with the
  CW paper's tables. State which protocol a result used ("CW10 on metaworld 3.x").
- v3's observations are 39-dim (hand, gripper, two objects' poses, the previous frame, the goal),
  as v2's; v1's were shorter for some tasks. The per-task bounds differ, so the sequence declares
  the union of the tasks' bounds.
- v3 samples layouts from the task's ``_random_reset_space`` with the env's own seeded generator
  (``seeded_rand_vec``); v1 drew from numpy's global generator. Runs are seeded either way, with
  different layouts.
- MT benchmarks in v3 pick one of 50 layouts fixed at construction; here the random vector is
  unfrozen (``_freeze_rand_vec = False``), as CW's ``random_init_all`` did on v1.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.spaces import Box
from gymnasium.wrappers import TimeLimit, TransformObservation

from crl.wrappers.sequence import Task, TaskSequence

CW10_TASKS: tuple[str, ...] = (
    "hammer",
    "push-wall",
    "faucet-close",
    "push-back",
    "stick-pull",
    "handle-press-side",
    "push",
    "shelf-place",
    "window-close",
    "peg-unplug-side",
)
CW20_TASKS: tuple[str, ...] = CW10_TASKS + CW10_TASKS
EPISODE_STEPS = 200
STEPS_PER_TASK = 1_000_000


class RandomLayout(gym.Wrapper):
    """Draw a fresh object and goal layout at every reset, from the environment's own seeded generator.

    ``reset(seed=s)`` re-seeds the layout generator (Meta-World's ``reset`` ignores its ``seed``).
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        sawyer = env.unwrapped
        # Meta-World v3 freezes the layout vector unless told otherwise (SPEC.md §6).
        sawyer._freeze_rand_vec = False  # type: ignore[attr-defined]
        sawyer.seeded_rand_vec = True  # type: ignore[attr-defined]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        if seed is not None:
            self.env.unwrapped.seed(seed)  # type: ignore[attr-defined]
        return self.env.reset(options=options)


class EpisodeSuccess(gym.Wrapper):
    """Set ``info["is_success"]`` on an episode's last step: did ``info["success"]`` fire at any step?

    Continual World's definition of a successful episode; SB3's logger and ``evaluate_policy``
    read ``is_success`` at the end of an episode.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._succeeded = False

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        self._succeeded = False
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        self._succeeded = self._succeeded or bool(info.get("success", 0.0))
        if terminated or truncated:
            info["is_success"] = self._succeeded
        return observation, reward, terminated, truncated, info


def metaworld_env(task: str) -> gym.Env:
    """The Meta-World v3 task ``task`` (e.g. ``"hammer"``) under the Continual World protocol.

    Goal observable (as Meta-World's MT benchmarks and CW), a fresh layout every reset, 200-step
    episodes, ``info["is_success"]`` at the end of each episode, float32 observations.
    """
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    key = f"{task}-v3"
    if key not in ALL_V3_ENVIRONMENTS:
        raise ValueError(f"task={task!r} is not a Meta-World v3 task; available: {sorted(ALL_V3_ENVIRONMENTS)}")
    # The base class, not metaworld's "-goal-observable" variant: the variant draws its first layout
    # from numpy's global generator, which would shift the training's random stream.
    sawyer = ALL_V3_ENVIRONMENTS[key]()
    sawyer._partially_observable = False
    sawyer._set_task_called = True
    del sawyer.sawyer_observation_space  # a cached property: recompute it with the goal's bounds
    # The declared space must carry the goal's bounds, as the observations do.
    sawyer.observation_space = sawyer.sawyer_observation_space
    env: gym.Env = RandomLayout(sawyer)
    env = TimeLimit(env, max_episode_steps=EPISODE_STEPS)
    env = EpisodeSuccess(env)
    space = env.observation_space
    # float32 halves the replay buffer (the policy computes in float32 anyway).
    float32_space = Box(space.low.astype(np.float32), space.high.astype(np.float32), dtype=np.float32)  # type: ignore[attr-defined]
    return TransformObservation(env, functools.partial(np.asarray, dtype=np.float32), float32_space)


def continual_world(
    tasks: Sequence[str] = CW10_TASKS, steps_per_task: int = STEPS_PER_TASK, name: str = "cw10"
) -> TaskSequence:
    """A Continual World sequence: one-hot task id in the observation, success rate as the measure.

    :param tasks: Meta-World task names without the version (default: CW10)
    :param steps_per_task: environment steps per task (CW: 1M)
    """
    return TaskSequence(
        [Task(task, functools.partial(metaworld_env, task), steps_per_task) for task in tasks],
        name=name,
        task_id_in_obs=True,
        measure="success_rate",
    )


def cw10(steps_per_task: int = STEPS_PER_TASK) -> TaskSequence:
    """CW10: the ten Continual World tasks, 1M steps each."""
    return continual_world(CW10_TASKS, steps_per_task, "cw10")


def cw20(steps_per_task: int = STEPS_PER_TASK) -> TaskSequence:
    """CW20: CW10 twice; the second pass has its own task ids (20-dim one-hot code, as in CW)."""
    return continual_world(CW20_TASKS, steps_per_task, "cw20")
