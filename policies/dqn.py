"""DQN policies: SB3's, with architecture options and access to the Q-network's hidden features."""

from __future__ import annotations

import torch as th
from stable_baselines3.dqn import policies as sb3

from crl.policies.base import ContinualPolicyMixin


class _DQNMixin(ContinualPolicyMixin):
    """The trained network is ``q_net`` (its target copy is not trained by gradient)."""

    q_net: sb3.QNetwork

    def make_q_net(self) -> sb3.QNetwork:
        q_net = super().make_q_net()  # type: ignore[misc]
        self.architecture.rewrite(q_net.q_net)
        return q_net

    def network_prefixes(self) -> dict[str, list[str]]:
        return {"q_net": ["q_net"]}

    def _run_networks(self, observations: th.Tensor, actions: th.Tensor | None) -> None:
        self.q_net(observations)


class DQNPolicy(_DQNMixin, sb3.DQNPolicy):
    """SB3's ``MlpPolicy`` for DQN plus ``layer_norm`` and ``activation`` options."""


class CnnPolicy(_DQNMixin, sb3.CnnPolicy):
    """SB3's ``CnnPolicy`` (NatureCNN) for DQN plus ``layer_norm`` and ``activation`` options."""


class MultiInputPolicy(_DQNMixin, sb3.MultiInputPolicy):
    """SB3's ``MultiInputPolicy`` for DQN; options apply to the Q-network head."""


MlpPolicy = DQNPolicy
