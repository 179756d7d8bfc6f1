"""Task sequences: ordered tasks that share one observation space and one action space.

A :class:`TaskSequence` is what the continual training loop (:func:`crl.continual.learn_continual`)
walks through. Each :class:`Task` says how to build its environment and how many environment steps
it is trained for. SB3's ``set_env`` only accepts an environment whose spaces equal the model's, so the
sequence unifies the tasks' spaces when the sources allow it (equal shapes with different bounds: the
union of the bounds; image stacks with different channel counts: zero channels appended) and fails at
construction, printing both spaces, when they do not.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv as SB3DummyVecEnv
from stable_baselines3.common.vec_env import SubprocVecEnv, VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn

from crl.wrappers.vec_env import DummyVecEnv


def check_count(key: str, value: object, minimum: int = 1, counts: str = "") -> int:
    """``value`` as an ``int`` when it is an integer of at least ``minimum`` (NumPy's integers too).

    :param key: the option's or argument's name, for the error message
    :param counts: what the value counts (e.g. ``"environment steps"``), for the error message
    :raises ValueError: naming the option, the value and what is allowed (a bool is no count)
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{key}={value!r}: must be an int >= {minimum}" + (f" ({counts})" if counts else ""))
    return int(value)


Measure = Literal["mean_return", "success_rate"]
MEASURES: tuple[Measure, ...] = ("mean_return", "success_rate")


@dataclass(frozen=True)
class Task:
    """One task of a sequence.

    :param name: label of the task in results and plots
    :param make_env: builds the task's raw environment (SB3's ``Monitor`` goes right around it)
    :param budget: environment steps the task is trained for, an int >= 1 (NumPy's integers too)
    :param wrapper: preprocessing applied outside the ``Monitor`` (e.g. SB3's ``AtariWrapper``, so that
        the monitor records whole games, not lives)
    :param task_id: the id a one-hot observation and a multi-head policy see, an int >= 0; by default
        the task's position in the sequence
    :raises ValueError: a budget or task id that is not such an int (a bool is none), naming it
    """

    name: str
    make_env: Callable[[], gym.Env]
    budget: int
    wrapper: Callable[[gym.Env], gym.Env] | None = None
    task_id: int | None = None

    def __post_init__(self) -> None:
        # Stored as ints: a float id would size the one-hot code by a fraction, True would be a budget of 1.
        budget = check_count("budget", self.budget, counts=f"environment steps of task {self.name!r}")
        object.__setattr__(self, "budget", budget)
        if self.task_id is not None:
            task_id = check_count("task_id", self.task_id, minimum=0, counts=f"id of task {self.name!r}, or None")
            object.__setattr__(self, "task_id", task_id)

    def build(self) -> gym.Env:
        """The task's environment with its preprocessing (without a monitor)."""
        env = self.make_env()
        return self.wrapper(env) if self.wrapper is not None else env


class UnifiedSpaces(gym.Wrapper):
    """Declare the sequence's common spaces on a task whose values already lie inside them.

    Only the declared spaces change, so this wrapper costs nothing per step. Each environment gets its
    own copy of the spaces, so that seeding one copy's sampler leaves the others alone.
    """

    def __init__(self, env: gym.Env, observation_space: spaces.Space, action_space: spaces.Space) -> None:
        super().__init__(env)
        self.observation_space = copy.deepcopy(observation_space)
        self.action_space = copy.deepcopy(action_space)


class PadChannels(gym.ObservationWrapper):
    """Append all-zero channels to an image stack ``(H, W, C)`` up to ``channels`` channels.

    :param env: environment with a ``Box`` observation space of shape ``(H, W, C)``
    :param observation_space: the padded space, ``(H, W, channels)``
    """

    def __init__(self, env: gym.Env, observation_space: spaces.Box) -> None:
        super().__init__(env)
        self.observation_space = observation_space
        self._shape = observation_space.shape
        self._dtype = observation_space.dtype
        self._own = np.s_[..., : env.observation_space.shape[-1]]  # type: ignore[index]

    def observation(self, observation: np.ndarray) -> np.ndarray:
        # A fresh array filled in place: about half the time of np.concatenate on MinAtar's grids.
        padded = np.zeros(self._shape, self._dtype)
        padded[self._own] = observation
        return padded


class TaskIdObservation(gym.ObservationWrapper):
    """Give every observation the one-hot code of the task id (as Continual World does).

    A flat observation gets the code appended; any other (frames, MinAtar's grids) becomes a dict of
    the observation and the code, for SB3's ``MultiInputPolicy`` (see :func:`with_task_id`).

    :param env: environment with a ``Box`` observation space
    :param task_id: this task's id
    :param n_task_ids: length of the one-hot code
    """

    def __init__(self, env: gym.Env, task_id: int, n_task_ids: int) -> None:
        super().__init__(env)
        space = self.observation_space = with_task_id(env.observation_space, n_task_ids)
        self._as_dict = isinstance(space, spaces.Dict)
        dtype = space[TASK_ID_KEY].dtype if isinstance(space, spaces.Dict) else space.dtype
        self.one_hot = one_hot_code(task_id, n_task_ids, dtype)  # type: ignore[arg-type]

    def observation(self, observation: np.ndarray) -> np.ndarray | dict[str, np.ndarray]:
        if self._as_dict:
            return {OBSERVATION_KEY: observation, TASK_ID_KEY: self.one_hot.copy()}
        return np.concatenate((observation, self.one_hot))


class VecTaskIdObservation(VecEnvWrapper):
    """:class:`TaskIdObservation` for a vec env whose observations become a dict of themselves and the code.

    :class:`TaskSequence` puts it after its vec env wrapper, so Atari's frame stack stacks the frames
    and not the code. Terminal observations in the infos get the code too.

    :param venv: the vec env, with a ``Box`` observation space of more than one axis
    :param task_id: this task's id
    :param n_task_ids: length of the one-hot code
    """

    def __init__(self, venv: VecEnv, task_id: int, n_task_ids: int) -> None:
        super().__init__(venv, observation_space=with_task_id(venv.observation_space, n_task_ids))
        if not isinstance(self.observation_space, spaces.Dict):
            raise ValueError(f"VecTaskIdObservation makes dict observations, not of {venv.observation_space}")
        self.one_hot = one_hot_code(task_id, n_task_ids, np.dtype(np.float32))

    def _with_code(self, observations: VecEnvObs) -> dict[str, np.ndarray]:
        codes = np.tile(self.one_hot, (self.num_envs, 1))
        return {OBSERVATION_KEY: observations, TASK_ID_KEY: codes}  # type: ignore[dict-item]

    def reset(self) -> dict[str, np.ndarray]:
        return self._with_code(self.venv.reset())

    def step_wait(self) -> VecEnvStepReturn:
        observations, rewards, dones, infos = self.venv.step_wait()
        for info in infos:
            if "terminal_observation" in info:
                info["terminal_observation"] = {
                    OBSERVATION_KEY: info["terminal_observation"],
                    TASK_ID_KEY: self.one_hot.copy(),
                }
        return self._with_code(observations), rewards, dones, infos


OBSERVATION_KEY = "observation"
"""The observation's key where the task id makes it a dict (see :func:`with_task_id`)."""
TASK_ID_KEY = "task_id"
"""The one-hot task id's key where it makes observations a dict (see :func:`with_task_id`)."""


def one_hot_code(task_id: int, n_task_ids: int, dtype: np.dtype) -> np.ndarray:
    """The one-hot code of ``task_id`` among ``n_task_ids``.

    :raises ValueError: a task id outside ``[0, n_task_ids)``
    """
    if not 0 <= task_id < n_task_ids:
        raise ValueError(f"task_id must lie in [0, {n_task_ids}), got {task_id}")
    code = np.zeros(n_task_ids, dtype=dtype)
    code[task_id] = 1
    return code


def with_task_id(space: spaces.Space, n_task_ids: int) -> spaces.Box | spaces.Dict:
    """``space`` with the ``n_task_ids`` entries of the one-hot task id, each in [0, 1].

    A flat ``Box`` gets them appended (Continual World's protocol, what ``MultiHeadPolicy`` reads); a
    ``Box`` of more axes (frames, MinAtar's grids) becomes ``Dict(observation=space, task_id=...)``,
    since a code appended to frames would be read as pixels.
    """
    if not isinstance(space, spaces.Box):
        raise ValueError(f"task_id_in_obs needs a Box observation space, got {space}")
    if len(space.shape) != 1:
        code = spaces.Box(0.0, 1.0, (n_task_ids,), np.float32)
        return spaces.Dict({OBSERVATION_KEY: space, TASK_ID_KEY: code})
    zeros, ones = np.zeros(n_task_ids, space.dtype), np.ones(n_task_ids, space.dtype)
    low, high = np.concatenate((space.low, zeros)), np.concatenate((space.high, ones))
    return spaces.Box(low, high, dtype=space.dtype)  # type: ignore[arg-type]


class IncompatibleSpacesError(ValueError):
    """Two tasks of a sequence have spaces that cannot be unified into one."""


def unify_spaces(named: Sequence[tuple[str, spaces.Space]], kind: str) -> spaces.Space:
    """One space that holds every task's values, or :class:`IncompatibleSpacesError`.

    Equal spaces are kept; ``Box`` spaces of one dtype and shape get the union of their bounds; image
    observation spaces (``Box`` of three or more axes) that differ only in their last (channel) axis
    get the largest channel count, the extra channels bounded by zero (see :class:`PadChannels`).
    Vectors of different lengths are refused: padding them would feed one task's features into
    another's inputs.

    :param named: ``(task name, space)`` per task
    :param kind: ``"observation"`` or ``"action"``, for the error message
    """
    (first_name, first), *rest = named
    if all(space == first for _, space in rest):
        return first
    for name, space in rest:
        if not _unifiable_boxes(first, space, pad_channels=kind == "observation"):
            raise IncompatibleSpacesError(
                f"tasks {first_name!r} and {name!r} have {kind} spaces that cannot be unified:\n"
                f"  {first_name}: {first}\n  {name}: {space}"
            )
    boxes: list[spaces.Box] = [space for _, space in named]  # type: ignore[misc]
    channels = max(box.shape[-1] for box in boxes)
    low = np.min([_padded(box.low, channels) for box in boxes], axis=0)
    high = np.max([_padded(box.high, channels) for box in boxes], axis=0)
    return spaces.Box(low, high, dtype=first.dtype)  # type: ignore[arg-type]


def _unifiable_boxes(a: spaces.Space, b: spaces.Space, pad_channels: bool) -> bool:
    """Both are ``Box`` spaces of one dtype and shape, or (``pad_channels``) images that differ at most
    in their channel axis."""
    if not (isinstance(a, spaces.Box) and isinstance(b, spaces.Box)) or a.dtype != b.dtype:
        return False
    if a.shape == b.shape:
        return True
    images = pad_channels and len(a.shape) >= 3 and len(a.shape) == len(b.shape)
    return images and a.shape[:-1] == b.shape[:-1]


def _padded(bound: np.ndarray, channels: int) -> np.ndarray:
    extra = channels - bound.shape[-1]
    return np.concatenate((bound, np.zeros((*bound.shape[:-1], extra), bound.dtype)), axis=-1)


class TaskSequence:
    """An ordered list of tasks with one observation space and one action space.

    :param tasks: the tasks, in training order
    :param name: the sequence's name (e.g. the preset's)
    :param task_id_in_obs: give every observation the one-hot task id: appended to a flat observation,
        beside any other in a dict (see :func:`with_task_id`)
    :param measure: what evaluation reports per task: ``"mean_return"`` or ``"success_rate"`` (the
        fraction of episodes whose final ``info["is_success"]`` is true, SB3's convention)
    :param vec_env_wrapper: applied to every vectorised env of the sequence (e.g. SB3's
        ``VecFrameStack`` for Atari)
    :raises IncompatibleSpacesError: when two tasks' spaces cannot be unified (both are printed)
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        name: str = "sequence",
        task_id_in_obs: bool = False,
        measure: Measure = "mean_return",
        vec_env_wrapper: Callable[[VecEnv], VecEnv] | None = None,
    ) -> None:
        if not tasks:
            raise ValueError("a TaskSequence needs at least one task, got none")
        if measure not in MEASURES:
            raise ValueError(f"measure={measure!r} is not allowed; use one of {list(MEASURES)}")
        self.tasks = tuple(tasks)
        self.name = name
        self.task_id_in_obs = task_id_in_obs
        self.measure: Measure = measure
        self.vec_env_wrapper = vec_env_wrapper
        self.task_ids = tuple(index if task.task_id is None else task.task_id for index, task in enumerate(tasks))
        self.n_task_ids = max(self.task_ids) + 1
        own_spaces = [self._task_spaces(task) for task in tasks]
        self._own_observation_spaces = [observation for observation, _ in own_spaces]
        self._base_observation_space = unify_spaces(
            [(task.name, observation) for task, (observation, _) in zip(tasks, own_spaces, strict=True)], "observation"
        )
        self.action_space = unify_spaces(
            [(task.name, action) for task, (_, action) in zip(tasks, own_spaces, strict=True)], "action"
        )
        self.observation_space = self._base_observation_space
        if task_id_in_obs:
            self.observation_space = with_task_id(self._base_observation_space, self.n_task_ids)

    @property
    def task_id_place(self) -> str:
        """Where a multi-head policy reads the task id of an observation, for messages."""
        if isinstance(self.observation_space, spaces.Dict):
            return f"the {TASK_ID_KEY!r} key of each observation"
        return "the last n_heads entries of each observation"

    def with_task_id_in_obs(self) -> TaskSequence:
        """This sequence with the one-hot task id in every observation (``task_id_in_obs=True``), e.g. for
        a preset; the tasks' environments are not built again."""
        copied = copy.copy(self)
        copied.task_id_in_obs = True
        copied.observation_space = with_task_id(self._base_observation_space, self.n_task_ids)
        return copied

    @staticmethod
    def _task_spaces(task: Task) -> tuple[spaces.Space, spaces.Space]:
        env = task.build()
        try:
            return env.observation_space, env.action_space
        finally:
            env.close()

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)

    def __getitem__(self, index: int) -> Task:
        return self.tasks[index]

    @property
    def task_names(self) -> list[str]:
        return [task.name for task in self.tasks]

    @property
    def budgets(self) -> list[int]:
        return [int(task.budget) for task in self.tasks]

    @property
    def total_budget(self) -> int:
        return sum(self.budgets)

    def make_env(
        self, index: int, monitor: bool = True, action_seed: int | None = None, task_id: bool = True
    ) -> gym.Env:
        """Task ``index``'s environment, in the sequence's spaces.

        :param index: position of the task in the sequence
        :param monitor: put SB3's ``Monitor`` around the raw environment (returns of whole episodes)
        :param action_seed: seed of the action space's sampler (random exploration draws from it), an
            int >= 0 (NumPy's integers too) or ``None``
        :param task_id: give the observations the task id when the sequence does (``False``: the caller
            adds it, as :meth:`make_vec_env` does after a frame stack)
        """
        if action_seed is not None:  # gymnasium takes Python ints only
            action_seed = check_count("action_seed", action_seed, minimum=0, counts="or None")
        task = self.tasks[index]
        env = task.make_env()
        if monitor:
            env = Monitor(env)
        if task.wrapper is not None:
            env = task.wrapper(env)
        own = self._own_observation_spaces[index]
        if own.shape != self._base_observation_space.shape:
            env = PadChannels(env, self._base_observation_space)  # type: ignore[arg-type]
        if env.observation_space != self._base_observation_space or env.action_space != self.action_space:
            env = UnifiedSpaces(env, self._base_observation_space, self.action_space)
        if self.task_id_in_obs and task_id:
            env = TaskIdObservation(env, self.task_ids[index], self.n_task_ids)
        if action_seed is not None:
            env.action_space.seed(action_seed)
        return env

    def make_vec_env(
        self,
        index: int,
        n_envs: int = 1,
        seed: int | None = None,
        vec_env_cls: type[SB3DummyVecEnv] | type[SubprocVecEnv] = DummyVecEnv,
    ) -> VecEnv:
        """Task ``index`` as an SB3 ``VecEnv`` of ``n_envs`` monitored copies.

        Not SB3's ``make_vec_env``: its ``Monitor`` would sit outside the task's preprocessing (for
        Atari it would count lives as episodes); ours sits right around the raw environment.

        :param seed: seed of the first copy, the others get ``seed + rank`` (as ``make_vec_env``); an
            int >= 0 (NumPy's integers too) or ``None``
        :param vec_env_cls: ``DummyVecEnv`` (by default crl's, see :mod:`crl.wrappers.vec_env`) or ``SubprocVecEnv``
        :raises ValueError: a seed that is not such an int, before any env is built
        """
        if seed is not None:  # gymnasium takes Python ints only
            seed = check_count("seed", seed, minimum=0, counts="or None")
        seeds = [None if seed is None else seed + rank for rank in range(n_envs)]
        # A task id beside the frames joins them after the vec env wrapper, so a frame stack leaves it alone.
        later = self.task_id_in_obs and isinstance(self.observation_space, spaces.Dict)
        envs: list[Callable[[], gym.Env]] = [
            partial(self.make_env, index, action_seed=rank_seed, task_id=not later) for rank_seed in seeds
        ]
        vec_env: VecEnv = vec_env_cls(envs)
        if seed is not None:
            vec_env.seed(seed)  # applied at the next reset
        if self.vec_env_wrapper is not None:
            vec_env = self.vec_env_wrapper(vec_env)
        return VecTaskIdObservation(vec_env, self.task_ids[index], self.n_task_ids) if later else vec_env

    def __repr__(self) -> str:
        tasks = ", ".join(f"{task.name} ({task.budget})" for task in self.tasks)
        return f"TaskSequence({self.name!r}: {tasks})"
