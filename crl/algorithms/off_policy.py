"""What ``crl.DQN`` and ``crl.SAC`` share beyond :class:`ContinualAlgorithm`: storing a transition cheaply."""

from __future__ import annotations

from typing import Any

import numpy as np
from stable_baselines3.common.buffers import ReplayBuffer

from crl.algorithms.base import ContinualAlgorithm
from crl.algorithms.replay import add_transition


class ContinualOffPolicyAlgorithm(ContinualAlgorithm):
    """:class:`ContinualAlgorithm` for SB3's off-policy algorithms (mixed in before ``OffPolicyAlgorithm``)."""

    _last_obs: Any
    _last_original_obs: Any
    _vec_normalize_env: Any

    def _store_transition(
        self,
        replay_buffer: ReplayBuffer,
        buffer_action: np.ndarray,
        new_obs: np.ndarray | dict[str, np.ndarray],
        reward: np.ndarray,
        dones: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        """SB3's ``_store_transition``, storing the transition with :func:`~crl.algorithms.replay.add_transition`.

        SB3 deep-copies the next observation to write the terminal observations of ended episodes
        into it, then its ``add`` copies every array again before the buffer's assignment copies
        it (see ``add_transition``). Dict observations and ``VecNormalize`` take SB3's code.
        """
        if type(new_obs) is not np.ndarray or self._vec_normalize_env is not None:
            super()._store_transition(replay_buffer, buffer_action, new_obs, reward, dones, infos)  # type: ignore[misc]
            return
        self._last_original_obs = self._last_obs
        add_transition(replay_buffer, self._last_obs, new_obs, buffer_action, reward, dones, infos)
        self._last_obs = new_obs
