"""Hyperparameter values as written in configuration files, rl-baselines3-zoo style.

A number is a constant; ``"lin_<start>"`` is a linear schedule from ``start`` to 0 over training
(``progress_remaining`` from 1 to 0), as in rl-baselines3-zoo. Schedules are SB3's picklable
:class:`~stable_baselines3.common.utils.LinearSchedule`, so saved models load without crl's config.
Strings are parsed, never evaluated.
"""

from __future__ import annotations

import re

from stable_baselines3.common.utils import LinearSchedule

SCHEDULE_PATTERN = re.compile(r"^lin_(?P<start>[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?)$")


def parse_schedule(value: str) -> LinearSchedule:
    """``"lin_0.001"`` -> a linear schedule from 0.001 to 0.

    :raises ValueError: when ``value`` is not of the form ``lin_<number>``
    """
    match = SCHEDULE_PATTERN.match(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not a schedule; write a number or 'lin_<start>' (e.g. 'lin_0.001')")
    return LinearSchedule(start=float(match["start"]), end=0.0, end_fraction=1.0)


def is_schedule(value: object) -> bool:
    """Whether ``value`` is a schedule string such as ``"lin_0.001"``."""
    return isinstance(value, str) and SCHEDULE_PATTERN.match(value.strip()) is not None
