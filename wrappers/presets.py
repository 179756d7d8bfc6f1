"""Named task sequences: ``make_sequence("cw10")``.

Budgets follow the literature where it has one (CW: 1M steps per task; SpaceInvaders and Freeway modes:
1M per task as in CompoNet 2024; CartPole shifts: 15k as in SPEC.md §5); the others are this
project's choice. ``docs/sequences.md`` lists every preset with its budget and estimated wall time.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from crl.wrappers import synthetic
from crl.wrappers.minatar import MAX_EPISODE_STEPS as MINATAR_EPISODE_STEPS
from crl.wrappers.minatar import MINATAR_GAMES, minatar_cycle
from crl.wrappers.sequence import TaskSequence, check_count


def _space_invaders_modes(steps_per_task: int = 1_000_000) -> TaskSequence:
    from crl.wrappers.atari import atari_modes

    return atari_modes("SpaceInvaders", range(10), steps_per_task=steps_per_task, name="space_invaders_modes")


def _freeway_modes(steps_per_task: int = 1_000_000) -> TaskSequence:
    from crl.wrappers.atari import atari_modes

    return atari_modes("Freeway", range(8), steps_per_task=steps_per_task, name="freeway_modes")


def _breakout_modes(steps_per_task: int = 1_000_000) -> TaskSequence:
    from crl.wrappers.atari import atari_modes

    return atari_modes("Breakout", range(0, 48, 4), steps_per_task=steps_per_task, name="breakout_modes")


ATARI_CYCLE_GAMES = ("Pong", "Breakout", "SpaceInvaders", "Freeway", "Seaquest")


def _atari_cycle(steps_per_task: int = 1_000_000, cycles: int = 2) -> TaskSequence:
    from crl.wrappers.atari import atari_game_cycle

    return atari_game_cycle(ATARI_CYCLE_GAMES, cycles=cycles, steps_per_task=steps_per_task)


def _cw(name: str, steps_per_task: int = 1_000_000) -> TaskSequence:
    from crl.wrappers import continual_world

    return continual_world.cw10(steps_per_task) if name == "cw10" else continual_world.cw20(steps_per_task)


def _minatar_cycle(
    steps_per_task: int = 1_000_000,
    cycles: int = 1,
    games: list[str] | None = None,
    max_episode_steps: int | None = MINATAR_EPISODE_STEPS,
) -> TaskSequence:
    games = MINATAR_GAMES if games is None else games
    return minatar_cycle(games, cycles, steps_per_task, max_episode_steps=max_episode_steps)


PRESETS: dict[str, Callable[..., TaskSequence]] = {
    "space_invaders_modes": _space_invaders_modes,
    "freeway_modes": _freeway_modes,
    "breakout_modes": _breakout_modes,
    "atari_cycle": _atari_cycle,
    "cw10": functools.partial(_cw, "cw10"),
    "cw20": functools.partial(_cw, "cw20"),
    "minatar_cycle": _minatar_cycle,
    "cartpole_permuted": synthetic.permuted_observations,
    "cartpole_actions": synthetic.shuffled_actions,
    "cartpole_reward_flip": synthetic.reward_sign_flip,
    "cartpole_physics": synthetic.cartpole_physics,
}
"""Preset name -> builder. Atari, Meta-World and MinAtar are imported only when their preset is built."""


def make_sequence(name: str, **kwargs: Any) -> TaskSequence:
    """Build the preset sequence ``name``.

    :param name: one of :data:`PRESETS`
    :param kwargs: the builder's options, e.g. ``steps_per_task`` (every preset has it)
    """
    if name not in PRESETS:
        raise ValueError(f"unknown task sequence {name!r}; presets: {sorted(PRESETS)}")
    builder = PRESETS[name]
    options = list(inspect.signature(builder).parameters)
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise ValueError(f"task sequence {name!r} has no option(s) {unknown}; its options: {options}")
    if "steps_per_task" in kwargs:  # named as given, not as the budget of each task it becomes
        check_count("steps_per_task", kwargs["steps_per_task"])
    return builder(**kwargs)
