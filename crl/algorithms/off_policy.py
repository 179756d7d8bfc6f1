"""What crl's off-policy algorithms share beyond :class:`ContinualAlgorithm`: the warm-up's actions,
storing a transition cheaply, and the start of a gradient step."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.type_aliases import ReplayBufferSamples

from crl.algorithms.base import ContinualAlgorithm
from crl.algorithms.replay import add_transition, sample_replay
from crl.hooks import GradientStep


class ContinualOffPolicyAlgorithm(ContinualAlgorithm):
    """:class:`ContinualAlgorithm` for SB3's off-policy algorithms (mixed in before ``OffPolicyAlgorithm``)."""

    _last_obs: Any
    num_timesteps: int
    action_space: spaces.Space
    policy: Any
    _last_original_obs: Any
    _vec_normalize_env: Any
    replay_buffer: Any

    def _begin_gradient_step(
        self, gradient_step: int, batch_size: int
    ) -> tuple[ReplayBufferSamples, GradientStep | None]:
        """A gradient step's minibatch (SB3's draw, then the hooks' ``transform_batch``) and its hook record.

        :param gradient_step: the step's index in this ``train()`` call
        """
        replay_data = sample_replay(self.replay_buffer, batch_size, self._vec_normalize_env)
        replay_data = self._hooks.transform_batch(self._algo, replay_data)
        return replay_data, self._hooks.begin_gradient_step(self._algo, gradient_step, replay_data)

    def _sample_action(
        self, learning_starts: int, action_noise: ActionNoise | None = None, n_envs: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """SB3's ``_sample_action``, except that during the warm-up a hook may choose the actions
        (:meth:`~crl.hooks.TrainingHook.warmup_actions`) instead of the uniformly random ones.

        :return: the actions for the environment and the (scaled) actions to store, as SB3's
        """
        if self._hooks.replaces_warmup and self.num_timesteps < learning_starts:
            actions = self._hooks.warmup_actions(self._algo, self._last_obs)
            if actions is not None:
                return self._env_and_buffer_actions(actions, action_noise)
        return super()._sample_action(learning_starts, action_noise, n_envs)  # type: ignore[misc]

    def _env_and_buffer_actions(
        self, actions: np.ndarray, action_noise: ActionNoise | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """What SB3's ``_sample_action`` makes of actions in the environment's space: a ``Box``'s are
        stored scaled to [-1, 1] (with the action noise, clipped), and taken as stored."""
        if not isinstance(self.action_space, spaces.Box):
            return actions, actions
        buffer_actions = self.policy.scale_action(actions)  # type: ignore[attr-defined]
        if action_noise is not None:
            buffer_actions = np.clip(buffer_actions + action_noise(), -1, 1)
        return self.policy.unscale_action(buffer_actions), buffer_actions  # type: ignore[attr-defined]

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
        it (see ``add_transition``). Dict observations and ``VecNormalize`` take SB3's code. The hooks'
        ``on_transition`` sees the step first.
        """
        if self._hooks.observes_transitions:
            self._hooks("on_transition", self._algo, reward, dones, infos)
        if type(new_obs) is not np.ndarray or self._vec_normalize_env is not None:
            super()._store_transition(replay_buffer, buffer_action, new_obs, reward, dones, infos)  # type: ignore[misc]
            return
        self._last_original_obs = self._last_obs
        add_transition(replay_buffer, self._last_obs, new_obs, buffer_action, reward, dones, infos)
        self._last_obs = new_obs
