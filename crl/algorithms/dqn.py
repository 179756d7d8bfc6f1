"""DQN with interventions: SB3's DQN whose ``train()`` calls the gradient-step hooks."""

from __future__ import annotations

from typing import ClassVar

import torch as th
from stable_baselines3 import dqn as sb3
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from torch.nn import functional as F

from crl.algorithms.base import with_sb3_signature
from crl.algorithms.value_based import ValueBased
from crl.policies import dqn as policies
from crl.policies.dqn import CategoricalQNetwork
from crl.policies.multihead import MultiHeadDQNPolicy


class DQN(ValueBased, sb3.DQN):
    """Deep Q-Network (Mnih et al. 2015) with plasticity interventions.

    Takes every argument of :class:`stable_baselines3.DQN`, plus ``interventions`` and ``metrics``
    (see :class:`~crl.algorithms.base.ContinualAlgorithm`). With no interventions it trains exactly
    like SB3's DQN: same random draws, same parameters. With the policy option ``two_hot`` the
    Q-network has a categorical head trained by cross-entropy against the two-hot encoding of the
    TD target (:mod:`crl.policies.two_hot`); the target uses the expected Q-values.
    """

    algorithm_family: ClassVar[str] = "DQN"
    trained_network: ClassVar[str] = "q_net"
    loss_names: ClassVar[tuple[str, ...]] = ("q_net",)
    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": policies.DQNPolicy,
        "CnnPolicy": policies.CnnPolicy,
        "MultiInputPolicy": policies.MultiInputPolicy,
        "MultiHeadPolicy": MultiHeadDQNPolicy,
    }

    def _td_target(self, replay_data: ReplayBufferSamples) -> th.Tensor:
        """``y = r + gamma * (1 - done) * max_a' Q_target(s', a')``, without gradient."""
        # For n-step replay the discount is gamma**n (when the episode did not end early)
        discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma
        with th.no_grad():
            next_q_values = self._q_values(replay_data.next_observations, target=True)
            next_q_values, _ = next_q_values.max(dim=1)
            next_q_values = next_q_values.reshape(-1, 1)
            return replay_data.rewards + (1 - replay_data.dones) * discounts * next_q_values

    def _td_loss(self, replay_data: ReplayBufferSamples, target_q_values: th.Tensor) -> th.Tensor:
        """Huber loss between ``Q(s, a)`` and ``y``; with a two-hot head, cross-entropy against ``twohot(y)``."""
        two_hot = self.two_hot
        if two_hot is not None:
            assert isinstance(self.q_net, CategoricalQNetwork)
            logits = self.q_net.logits(replay_data.observations)
            # Z(s, a): the logits of the action taken
            logits = logits[th.arange(len(logits), device=logits.device), replay_data.actions.long().flatten()]
            return two_hot.loss(logits, target_q_values)
        current_q_values = self._q_values(replay_data.observations)
        current_q_values = th.gather(current_q_values, dim=1, index=replay_data.actions.long())
        return F.smooth_l1_loss(current_q_values, target_q_values)

    def _q_values(self, observations: th.Tensor, target: bool = False) -> th.Tensor:
        """``q_net(observations)`` (``q_net_target`` with ``target``); crl's policies call the layers directly."""
        if isinstance(self.policy, policies.DQNPolicyMixin):
            return self.policy.q_values(observations, target)
        q_values: th.Tensor = (self.q_net_target if target else self.q_net)(observations)
        return q_values


with_sb3_signature(DQN, sb3.DQN)
