"""DQN policies: SB3's, with architecture options and access to the Q-network's hidden features."""

from __future__ import annotations

from typing import Any

import torch as th
from stable_baselines3.common.type_aliases import PyTorchObs
from stable_baselines3.dqn import policies as sb3
from torch import nn

from crl.policies.base import ContinualPolicyMixin
from crl.policies.two_hot import TwoHot


class CategoricalQNetwork(sb3.QNetwork):
    """SB3's Q-network with a categorical head: ``bins`` logits per action (see :mod:`crl.policies.two_hot`).

    ``forward`` returns the expected Q-values, so acting (``argmax``) and the TD target are SB3's;
    :meth:`logits` is what DQN's cross-entropy loss trains.

    :param two_hot: the support of each action's value distribution
    """

    def __init__(self, *args: Any, two_hot: TwoHot, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.two_hot = two_hot
        output = self.q_net[-1]
        assert isinstance(output, nn.Linear)
        self.q_net[-1] = nn.Linear(output.in_features, output.out_features * two_hot.bins)

    def logits(self, obs: PyTorchObs) -> th.Tensor:
        """Logits of shape ``(batch, n_actions, bins)``."""
        logits = self.q_net(self.extract_features(obs, self.features_extractor))
        return logits.unflatten(-1, (-1, self.two_hot.bins))

    def forward(self, obs: PyTorchObs) -> th.Tensor:
        return self.two_hot.decode(self.logits(obs))


class _DQNMixin(ContinualPolicyMixin):
    """The trained network is ``q_net`` (its target copy is not trained by gradient)."""

    q_net: sb3.QNetwork

    def make_q_net(self) -> sb3.QNetwork:
        if self.two_hot is None:
            q_net = super().make_q_net()  # type: ignore[misc]
        else:
            net_args = self._update_features_extractor(self.net_args, features_extractor=None)  # type: ignore[attr-defined]
            q_net = CategoricalQNetwork(**net_args, two_hot=self.two_hot).to(self.device)  # type: ignore[attr-defined]
        self.architecture.rewrite(q_net.q_net)
        return q_net

    def network_prefixes(self) -> dict[str, list[str]]:
        return {"q_net": ["q_net"]}

    def target_networks(self) -> dict[str, str]:
        return {"q_net": "q_net_target"}

    def _run_networks(self, observations: th.Tensor, actions: th.Tensor | None) -> None:
        self.q_net(observations)


class DQNPolicy(_DQNMixin, sb3.DQNPolicy):
    """SB3's ``MlpPolicy`` for DQN plus ``layer_norm`` and ``activation`` options."""


class CnnPolicy(_DQNMixin, sb3.CnnPolicy):
    """SB3's ``CnnPolicy`` (NatureCNN) for DQN plus ``layer_norm`` and ``activation`` options."""


class MultiInputPolicy(_DQNMixin, sb3.MultiInputPolicy):
    """SB3's ``MultiInputPolicy`` for DQN; options apply to the Q-network head."""


MlpPolicy = DQNPolicy
