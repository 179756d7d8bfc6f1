"""Environments and task sequences for continual RL (installed as ``crl.wrappers``).

Atari (``crl.wrappers.atari``), Continual World (``crl.wrappers.continual_world``, needs the
``mujoco`` extra) and MinAtar (``crl.wrappers.minatar``, the ``minatar`` extra) are imported on use.
"""

from crl.wrappers.presets import PRESETS, make_sequence
from crl.wrappers.sequence import (
    IncompatibleSpacesError,
    PadChannels,
    Task,
    TaskIdObservation,
    TaskSequence,
    UnifiedSpaces,
    VecTaskIdObservation,
    unify_spaces,
)
from crl.wrappers.shifts import ActionShuffle, CartPolePhysics, ObservationShift, RewardSignFlip
from crl.wrappers.synthetic import cartpole_physics, permuted_observations, reward_sign_flip, shuffled_actions

__all__ = [
    "PRESETS",
    "ActionShuffle",
    "CartPolePhysics",
    "IncompatibleSpacesError",
    "ObservationShift",
    "PadChannels",
    "RewardSignFlip",
    "Task",
    "TaskIdObservation",
    "TaskSequence",
    "UnifiedSpaces",
    "VecTaskIdObservation",
    "cartpole_physics",
    "make_sequence",
    "permuted_observations",
    "reward_sign_flip",
    "shuffled_actions",
    "unify_spaces",
]
