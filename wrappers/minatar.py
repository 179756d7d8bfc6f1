"""MinAtar game-switch sequences (Young & Tian 2019): the CPU-scale analogue of Atari game cycles.

MinAtar's five games are 10x10 grids with one boolean channel per object type; the number of
channels differs between games (Breakout 4 ... Seaquest 10), so a sequence pads every game's
observation with all-zero channels up to the largest count (:class:`crl.wrappers.sequence.PadChannels`).
All games use MinAtar's full action set of 6 actions (``MinAtar/<Game>-v0``), so the action spaces agree.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import gymnasium as gym

from crl.wrappers.sequence import Task, TaskSequence

# gymnasium-style names -> minatar's own game names
_GAME_IDS = {"Asterix": "asterix", "Breakout": "breakout", "Freeway": "freeway", "Seaquest": "seaquest"}
_GAME_IDS["SpaceInvaders"] = "space_invaders"
MINATAR_GAMES: tuple[str, ...] = tuple(_GAME_IDS)


def minatar_env(game: str) -> gym.Env:
    """MinAtar's gymnasium env for ``game`` with the full action set (what ``MinAtar/<game>-v0`` builds).

    Built directly rather than through ``gymnasium.make``: minatar 1.0.15 registers its ids only on
    request and marks ``-v0`` (the full action set every game shares) as outdated. MinAtar's defaults
    apply: sticky actions with probability 0.1, difficulty ramping.
    """
    from minatar.gym import BaseEnv

    if game not in _GAME_IDS:
        raise ValueError(f"game={game!r} is not a MinAtar game; available: {list(MINATAR_GAMES)}")
    return BaseEnv(game=_GAME_IDS[game], use_minimal_action_set=False)


def minatar_cycle(
    games: Sequence[str] = MINATAR_GAMES, cycles: int = 1, steps_per_task: int = 1_000_000, name: str = "minatar_cycle"
) -> TaskSequence:
    """MinAtar games in turn, ``cycles`` times; a game keeps its task id across cycles.

    :param games: MinAtar game names (default: all five)
    :param steps_per_task: environment steps per game
    """
    if cycles < 1:
        raise ValueError(f"cycles must be >= 1, got {cycles}")
    for game in games:
        if game not in MINATAR_GAMES:
            raise ValueError(f"game={game!r} is not a MinAtar game; available: {list(MINATAR_GAMES)}")
    tasks = [
        Task(game, functools.partial(minatar_env, game), steps_per_task, task_id=index)
        for _ in range(cycles)
        for index, game in enumerate(games)
    ]
    return TaskSequence(tasks, name=name)
