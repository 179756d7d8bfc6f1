"""MinAtar game-switch sequences (Young & Tian 2019): the CPU-scale analogue of Atari game cycles.

MinAtar's five games are 10x10 grids with one boolean channel per object type; the number of
channels differs between games (Breakout 4 ... Seaquest 10), so a sequence gives every game all-zero
extra channels up to the largest count. Every MinAtar game allocates its observation as
``np.zeros((10, 10, len(self.channels)))``: registering unused channel names makes the game emit the
padded grid itself, at no cost per step (a padding wrapper would add half of MinAtar's step time).
All games use MinAtar's full action set of 6 actions (``MinAtar/<Game>-v0``), so the action spaces agree.

MinAtar ends only Freeway's episodes by time (2,500 steps); in the other games an agent that no longer
loses plays on forever, and an evaluation of it would never end. Episodes are therefore truncated
after :data:`MAX_EPISODE_STEPS` steps (gymnasium's ``TimeLimit``; SB3 bootstraps a truncated step).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import gymnasium as gym
from gymnasium.wrappers import TimeLimit

from crl.wrappers.sequence import Task, TaskSequence, check_count

# gymnasium-style names -> minatar's own game names
_GAME_IDS = {"Asterix": "asterix", "Breakout": "breakout", "Freeway": "freeway", "Seaquest": "seaquest"}
_GAME_IDS["SpaceInvaders"] = "space_invaders"
MINATAR_GAMES: tuple[str, ...] = tuple(_GAME_IDS)
MAX_EPISODE_STEPS = 10_000
"""Steps after which a MinAtar episode is truncated by default: far beyond what learning agents play
(Freeway's 2,500 are its own limit), short enough that an evaluation of 5 episodes per game ends."""


def minatar_env(game: str, channels: int | None = None, max_episode_steps: int | None = MAX_EPISODE_STEPS) -> gym.Env:
    """MinAtar's gymnasium env for ``game`` with the full action set (what ``MinAtar/<game>-v0`` builds).

    :param game: one of :data:`MINATAR_GAMES`
    :param channels: pad the observation with all-zero channels up to this many (default: the game's own)
    :param max_episode_steps: truncate episodes after this many steps (``None``: only the game ends them)

    Built directly rather than through ``gymnasium.make``: minatar 1.0.15 registers its ids only on
    request and marks ``-v0`` (the full action set every game shares) as outdated. MinAtar's defaults
    apply: sticky actions with probability 0.1, difficulty ramping.
    """
    from minatar.gym import BaseEnv

    if game not in _GAME_IDS:
        raise ValueError(f"game={game!r} is not a MinAtar game; available: {list(MINATAR_GAMES)}")
    env = BaseEnv(game=_GAME_IDS[game], use_minimal_action_set=False)
    if channels is not None:
        _pad_channels(env, game, channels)
    return env if max_episode_steps is None else TimeLimit(env, max_episode_steps)


def _pad_channels(env: gym.Env, game: str, channels: int) -> None:
    names: dict[str, int] = env.game.env.channels  # type: ignore[attr-defined]
    own = len(names)
    if channels < own:
        raise ValueError(f"channels={channels} is fewer than {game}'s own {own} channels")
    names.update({f"padding{index}": index for index in range(own, channels)})
    env.observation_space = gym.spaces.Box(0.0, 1.0, (10, 10, channels), dtype=bool)  # type: ignore[arg-type]


def n_channels(game: str) -> int:
    """The number of observation channels of ``game``."""
    return int(minatar_env(game).observation_space.shape[-1])  # type: ignore[index]


def minatar_cycle(
    games: Sequence[str] = MINATAR_GAMES,
    cycles: int = 1,
    steps_per_task: int = 1_000_000,
    name: str = "minatar_cycle",
    max_episode_steps: int | None = MAX_EPISODE_STEPS,
) -> TaskSequence:
    """MinAtar games in turn, ``cycles`` times; a game keeps its task id across cycles.

    :param games: MinAtar game names (default: all five)
    :param steps_per_task: environment steps per game
    :param max_episode_steps: truncate episodes after this many steps (``None``: only the games end them)
    """
    check_count("cycles", cycles)
    if max_episode_steps is not None:
        check_count("max_episode_steps", max_episode_steps, counts="environment steps per episode")
    if isinstance(games, str) or not isinstance(games, Sequence):
        raise ValueError(f"games={games!r}: must be a list of MinAtar game names, e.g. {list(MINATAR_GAMES)}")
    if not games:
        raise ValueError(f"games={list(games)!r} names no game; available: {list(MINATAR_GAMES)}")
    for game in games:
        if game not in MINATAR_GAMES:
            raise ValueError(f"game={game!r} is not a MinAtar game; available: {list(MINATAR_GAMES)}")
    channels = max(n_channels(game) for game in games)
    tasks = [
        Task(game, functools.partial(minatar_env, game, channels, max_episode_steps), steps_per_task, task_id=index)
        for _ in range(cycles)
        for index, game in enumerate(games)
    ]
    return TaskSequence(tasks, name=name)
