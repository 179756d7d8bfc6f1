"""Synthetic task sequences on any gymnasium environment (SPEC.md §3): one environment, shifted per task.

Task 0 is always the unshifted environment (seen through the identity shift where the shift changes
the declared space, so that every task shares one space). Task ``k > 0`` draws its shift from
``1000 * seed + k``, so a seed fixes the whole sequence and tasks differ from each other.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import gymnasium as gym
import numpy as np

from crl.wrappers.sequence import Task, TaskSequence
from crl.wrappers.shifts import ActionShuffle, CartPolePhysics, ObservationShift, RewardSignFlip

DEFAULT_STEPS = 15_000
"""SPEC.md §5's CPU-scale CartPole case: 15k DQN steps per task."""


def _shift_seed(seed: int, task: int) -> int:
    return 1000 * seed + task


def _permuted(env_id: str, task: int, seed: int) -> gym.Env:
    env = gym.make(env_id)
    if task == 0:
        size = env.observation_space.shape[0]  # type: ignore[index]
        return ObservationShift(env, np.arange(size), np.ones(size))
    return ObservationShift.random(env, _shift_seed(seed, task))


def _shuffled(env_id: str, task: int, seed: int) -> gym.Env:
    env = gym.make(env_id)
    if task == 0:
        return env
    return ActionShuffle(env, action_permutation(int(env.action_space.n), task, seed))  # type: ignore[attr-defined]


def action_permutation(n_actions: int, task: int, seed: int) -> np.ndarray:
    """The relabelling of task ``task``: task 0 keeps the actions, each later task draws one that
    differs from the previous task's, so that every switch changes the task (with two actions the
    tasks alternate)."""
    if n_actions < 2:
        raise ValueError(f"relabelling actions needs at least two of them, got {n_actions}")
    permutation = np.arange(n_actions)
    for index in range(1, task + 1):
        rng = np.random.default_rng(_shift_seed(seed, index))
        drawn = rng.permutation(n_actions)
        while np.array_equal(drawn, permutation):
            drawn = rng.permutation(n_actions)
        permutation = drawn
    return permutation


def _sign_flipped(env_id: str, task: int) -> gym.Env:
    env = gym.make(env_id)
    return RewardSignFlip(env) if task % 2 == 1 else env


def _cartpole(gravity: float, length: float) -> gym.Env:
    return CartPolePhysics(gym.make("CartPole-v1"), gravity=gravity, length=length)


def _sequence(
    name: str, n_tasks: int, steps_per_task: int, make: Callable[[int], Callable[[], gym.Env]], label: str
) -> TaskSequence:
    if n_tasks < 1:
        raise ValueError(f"n_tasks must be >= 1, got {n_tasks}")
    tasks = [Task(f"{label}{task}", make(task), steps_per_task) for task in range(n_tasks)]
    return TaskSequence(tasks, name=name)


def permuted_observations(
    env_id: str = "CartPole-v1", n_tasks: int = 6, steps_per_task: int = DEFAULT_STEPS, seed: int = 0
) -> TaskSequence:
    """Each task permutes and sign-flips the observation vector (:class:`ObservationShift`)."""
    return _sequence(
        f"permuted_{env_id}",
        n_tasks,
        steps_per_task,
        lambda task: functools.partial(_permuted, env_id, task, seed),
        "permutation-",
    )


def shuffled_actions(
    env_id: str = "CartPole-v1", n_tasks: int = 4, steps_per_task: int = DEFAULT_STEPS, seed: int = 0
) -> TaskSequence:
    """Each task relabels the discrete actions (:class:`ActionShuffle`) differently from the task before
    (:func:`action_permutation`); CartPole has two, so tasks alternate."""
    return _sequence(
        f"shuffled_actions_{env_id}",
        n_tasks,
        steps_per_task,
        lambda task: functools.partial(_shuffled, env_id, task, seed),
        "actions-",
    )


def reward_sign_flip(
    env_id: str = "CartPole-v1", n_tasks: int = 4, steps_per_task: int = DEFAULT_STEPS
) -> TaskSequence:
    """Odd tasks negate the reward (:class:`RewardSignFlip`), even tasks keep it."""
    return _sequence(
        f"reward_flip_{env_id}",
        n_tasks,
        steps_per_task,
        lambda task: functools.partial(_sign_flipped, env_id, task),
        "reward-sign-",
    )


CARTPOLE_PHYSICS: tuple[tuple[float, float], ...] = ((9.8, 0.5), (20.0, 0.5), (9.8, 1.5), (3.0, 0.25))
"""``(gravity, half pole length)`` per task: gymnasium's default, then heavier, longer, lighter-and-shorter."""


def cartpole_physics(
    physics: Sequence[tuple[float, float]] = CARTPOLE_PHYSICS, steps_per_task: int = DEFAULT_STEPS
) -> TaskSequence:
    """CartPole with changed gravity and pole length per task (:class:`CartPolePhysics`).

    :param physics: ``(gravity, half pole length)`` per task
    """
    tasks = [
        Task(f"g{gravity:g}-l{length:g}", functools.partial(_cartpole, gravity, length), steps_per_task)
        for gravity, length in physics
    ]
    return TaskSequence(tasks, name="cartpole_physics")
