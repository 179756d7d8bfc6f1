"""Atari game modes, difficulties and game cycles as task sequences (SPEC.md §3).

Every task is ``ALE/<Game>-v5`` with ``full_action_space=True`` (so all games and modes share the
18-action space) and SB3's standard Atari preprocessing: ``AtariWrapper`` (30 no-op starts, 4-frame
skip with max-pooling, 84x84 greyscale, episode end at life loss during training, reward clipping)
and a 4-frame ``VecFrameStack``. ALE's frame skip is set to 1 because ``AtariWrapper`` skips frames
itself; ALE v5's sticky actions (``repeat_action_probability=0.25``, Machado et al. 2018) are kept.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ale_py
import gymnasium as gym
import numpy as np
from stable_baselines3.common.atari_wrappers import AtariWrapper
from stable_baselines3.common.vec_env import VecEnv, VecFrameStack

from crl.wrappers.sequence import Task, TaskSequence, check_count

gym.register_envs(ale_py)

FRAME_STACK = 4


@dataclass(frozen=True)
class AtariFlavours:
    """The modes and difficulties a game's ROM offers."""

    game: str
    modes: tuple[int, ...]
    difficulties: tuple[int, ...]


@functools.cache
def atari_flavours(game: str) -> AtariFlavours:
    """Ask ale-py which modes and difficulties ``game`` offers (``ALE/<game>-v5``)."""
    env_id = f"ALE/{game}-v5"
    try:
        env = gym.make(env_id)
    except gym.error.Error as error:
        raise ValueError(f"game={game!r}: {env_id} is not an ALE environment ({error})") from error
    try:
        ale = env.unwrapped.ale  # type: ignore[attr-defined]
        return AtariFlavours(game, tuple(ale.getAvailableModes()), tuple(ale.getAvailableDifficulties()))
    finally:
        env.close()


def check_flavour(game: str, mode: int | None, difficulty: int | None) -> None:
    """Raise ``ValueError`` naming what ``game`` offers when ``mode`` or ``difficulty`` is not available."""
    for key, value in (("mode", mode), ("difficulty", difficulty)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | np.integer)):
            raise ValueError(f"{key}={value!r} is not an int; ALE numbers {game}'s {key}s")
    flavours = atari_flavours(game)
    if mode is not None and mode not in flavours.modes:
        raise ValueError(f"mode={mode} is not available for {game}; available modes: {list(flavours.modes)}")
    if difficulty is not None and difficulty not in flavours.difficulties:
        raise ValueError(
            f"difficulty={difficulty} is not available for {game}; "
            f"available difficulties: {list(flavours.difficulties)}"
        )


def _make_atari(game: str, mode: int | None, difficulty: int | None, make_kwargs: dict[str, Any]) -> gym.Env:
    return gym.make(
        f"ALE/{game}-v5", mode=mode, difficulty=difficulty, full_action_space=True, frameskip=1, **make_kwargs
    )


def atari_task(
    game: str,
    mode: int | None = None,
    difficulty: int | None = None,
    budget: int = 1_000_000,
    task_id: int | None = None,
    **make_kwargs: Any,
) -> Task:
    """One Atari task; ``mode`` and ``difficulty`` are checked against the ROM here, before training.

    :param game: ALE game name, e.g. ``"SpaceInvaders"``
    :param mode: game mode (``None``: the ROM's default)
    :param difficulty: difficulty switch setting (``None``: the ROM's default)
    :param budget: environment steps (agent steps, i.e. 4 frames each)
    :param make_kwargs: further arguments of ``gymnasium.make`` (e.g. ``repeat_action_probability``)
    """
    check_flavour(game, mode, difficulty)
    name = game + "".join(f"-{key}{value}" for key, value in (("m", mode), ("d", difficulty)) if value is not None)
    return Task(
        name=name,
        make_env=functools.partial(_make_atari, game, mode, difficulty, make_kwargs),
        budget=budget,
        wrapper=AtariWrapper,
        task_id=task_id,
    )


def _frame_stack(vec_env: VecEnv) -> VecEnv:
    return VecFrameStack(vec_env, n_stack=FRAME_STACK)


def atari_sequence(tasks: Sequence[Task], name: str) -> TaskSequence:
    """A sequence of Atari tasks with SB3's 4-frame stack."""
    return TaskSequence(tasks, name=name, vec_env_wrapper=_frame_stack)


def atari_modes(
    game: str,
    modes: Sequence[int],
    difficulty: int | None = None,
    steps_per_task: int = 1_000_000,
    name: str | None = None,
) -> TaskSequence:
    """One game, one task per mode (e.g. SpaceInvaders modes 0-9, CompoNet 2024)."""
    tasks = [atari_task(game, mode, difficulty, steps_per_task) for mode in modes]
    return atari_sequence(tasks, name or f"{game.lower()}_modes")


def atari_game_cycle(
    games: Sequence[str], cycles: int = 2, steps_per_task: int = 1_000_000, name: str = "atari_cycle"
) -> TaskSequence:
    """Whole games in turn, ``cycles`` times (Abbas et al. 2023); a game keeps its task id across cycles."""
    check_count("cycles", cycles)
    tasks = [
        atari_task(game, budget=steps_per_task, task_id=index)
        for _ in range(cycles)
        for index, game in enumerate(games)
    ]
    return atari_sequence(tasks, name)
