"""Synthetic task sequences on any gymnasium environment (SPEC.md §3): one environment, shifted per task.

Task 0 is always the unshifted environment (seen through the identity shift where the shift changes
the declared space, so that every task shares one space). Task ``k > 0`` draws its shift from
``1000 * seed + k``, so a seed fixes the whole sequence and tasks differ from each other.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from numbers import Real

import gymnasium as gym
import numpy as np

from crl.wrappers.sequence import Task, TaskSequence, check_count
from crl.wrappers.shifts import ActionShuffle, CartPolePhysics, ObservationShift, RewardSignFlip

DEFAULT_STEPS = 15_000
"""SPEC.md §5's CPU-scale CartPole case: 15k DQN steps per task."""


def _shift_seed(seed: int, task: int) -> int:
    return 1000 * seed + task


def _permuted(env_id: str, task: int, seed: int) -> gym.Env:
    env = gym.make(env_id)
    permutation, signs = observation_shift(env.observation_space.shape[0], task, seed)  # type: ignore[index]
    return ObservationShift(env, permutation, signs)


def distinct_shifts(size: int) -> int:
    """How many permutations with sign patterns a vector of ``size`` components has: ``size! * 2**size``."""
    return math.factorial(size) * 2**size


def observation_shift(size: int, task: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The permutation and signs of task ``task``: task 0 the identity, each later task a draw (a
    uniformly random permutation, independent random signs) that differs from every earlier task's,
    so that no switch leaves the task unchanged or returns to an earlier one.

    :raises ValueError: more tasks than the ``size! * 2**size`` distinct shifts
    """
    if task >= distinct_shifts(size):
        raise ValueError(f"task {task}: {size} observation components have {distinct_shifts(size)} distinct shifts")
    shifts = [(np.arange(size), np.ones(size, dtype=np.int64))]
    for index in range(1, task + 1):
        rng = np.random.default_rng(_shift_seed(seed, index))
        drawn = (rng.permutation(size), rng.choice([-1, 1], size=size))
        while any(np.array_equal(drawn[0], p) and np.array_equal(drawn[1], s) for p, s in shifts):
            drawn = (rng.permutation(size), rng.choice([-1, 1], size=size))
        shifts.append(drawn)
    return shifts[task]


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


def _checked_env(env_id: str) -> gym.Env:
    """``gym.make(env_id)``, built once before any task is to check the preset's ``env_id`` option.

    :raises ValueError: naming ``env_id`` when it is no id gymnasium can make (instead of gymnasium's
        ``NameNotFound``, which names no option)
    """
    if not isinstance(env_id, str):
        raise ValueError(f"env_id={env_id!r}: must be a gymnasium environment id, a string such as 'CartPole-v1'")
    try:
        return gym.make(env_id)
    except gym.error.Error as error:
        raise ValueError(
            f"env_id={env_id!r}: gymnasium cannot make it ({type(error).__name__}: {error}); "
            "allowed: a registered gymnasium id such as 'CartPole-v1' (gymnasium.pprint_registry() lists them)"
        ) from error


def _space_of(env_id: str, kind: str) -> gym.spaces.Space:
    """The observation or action space (``kind``) of ``env_id``, checked before any task is built."""
    env = _checked_env(env_id)
    try:
        return getattr(env, kind)  # type: ignore[no-any-return]
    finally:
        env.close()


def _sign_flipped(env_id: str, task: int) -> gym.Env:
    env = gym.make(env_id)
    return RewardSignFlip(env) if task % 2 == 1 else env


def _cartpole(gravity: float, length: float) -> gym.Env:
    return CartPolePhysics(gym.make("CartPole-v1"), gravity=gravity, length=length)


def _sequence(
    name: str, n_tasks: int, steps_per_task: int, make: Callable[[int], Callable[[], gym.Env]], label: str
) -> TaskSequence:
    n_tasks, steps_per_task = check_count("n_tasks", n_tasks), check_count("steps_per_task", steps_per_task)
    tasks = [Task(f"{label}{task}", make(task), steps_per_task) for task in range(n_tasks)]
    return TaskSequence(tasks, name=name)


def permuted_observations(
    env_id: str = "CartPole-v1", n_tasks: int = 6, steps_per_task: int = DEFAULT_STEPS, seed: int = 0
) -> TaskSequence:
    """Each task permutes and sign-flips the observation vector (:class:`ObservationShift`), each
    differently from every earlier task (:func:`observation_shift`).

    :raises ValueError: a negative seed, an ``env_id`` gymnasium cannot make, an env without a flat
        ``Box`` observation, or more tasks than its observation has distinct shifts
    """
    check_count("seed", seed, minimum=0)
    space = _space_of(env_id, "observation_space")
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        raise ValueError(f"env_id={env_id!r}: permuted observations need a flat Box observation space, got {space}")
    size = space.shape[0]
    if check_count("n_tasks", n_tasks) > distinct_shifts(size):
        raise ValueError(
            f"n_tasks={n_tasks}: {env_id}'s {size} observation components allow {distinct_shifts(size)} distinct tasks"
        )
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
    (:func:`action_permutation`); CartPole has two, so tasks alternate.

    :raises ValueError: a negative seed, an ``env_id`` gymnasium cannot make, or an env without a
        ``Discrete`` action space of two or more actions
    """
    check_count("seed", seed, minimum=0)
    space = _space_of(env_id, "action_space")
    if not isinstance(space, gym.spaces.Discrete) or space.n < 2:
        raise ValueError(f"env_id={env_id!r}: shuffled actions need a Discrete action space of 2 or more, got {space}")
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
    """Odd tasks negate the reward (:class:`RewardSignFlip`), even tasks keep it.

    :raises ValueError: an ``env_id`` gymnasium cannot make
    """
    _checked_env(env_id).close()
    return _sequence(
        f"reward_flip_{env_id}",
        n_tasks,
        steps_per_task,
        lambda task: functools.partial(_sign_flipped, env_id, task),
        "reward-sign-",
    )


def _positive_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, Real) and math.isfinite(value) and float(value) > 0


CARTPOLE_PHYSICS: tuple[tuple[float, float], ...] = ((9.8, 0.5), (20.0, 0.5), (9.8, 1.5), (3.0, 0.25))
"""``(gravity, half pole length)`` per task: gymnasium's default, then heavier, longer, lighter-and-shorter."""


def cartpole_physics(
    physics: Sequence[tuple[float, float]] = CARTPOLE_PHYSICS, steps_per_task: int = DEFAULT_STEPS
) -> TaskSequence:
    """CartPole with changed gravity and pole length per task (:class:`CartPolePhysics`).

    :param physics: ``(gravity, half pole length)`` per task, at least one task
    :raises ValueError: naming ``physics`` (or the pair) when it is not a non-empty list of pairs of numbers > 0
    """
    check_count("steps_per_task", steps_per_task)
    # Checked here: an empty list would reach TaskSequence, whose error names no option.
    if isinstance(physics, str) or not isinstance(physics, Sequence | np.ndarray) or len(physics) == 0:
        raise ValueError(
            f"physics={physics!r}: must be a non-empty list of (gravity, half pole length) pairs, "
            f"e.g. {[list(pair) for pair in CARTPOLE_PHYSICS]}"
        )
    for index, pair in enumerate(physics):
        if not (isinstance(pair, Sequence | np.ndarray) and len(pair) == 2 and all(_positive_number(v) for v in pair)):
            raise ValueError(f"physics[{index}]={pair!r}: must be a pair (gravity, half pole length) of numbers > 0")
    tasks = [
        Task(f"g{gravity:g}-l{length:g}", functools.partial(_cartpole, gravity, length), steps_per_task)
        for gravity, length in physics
    ]
    return TaskSequence(tasks, name="cartpole_physics")
