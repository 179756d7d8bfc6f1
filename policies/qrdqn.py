"""QR-DQN policies: sb3-contrib's, with architecture options and access to the quantile network's hidden features."""

from __future__ import annotations

from typing import Any

import torch as th
from sb3_contrib.qrdqn import policies as contrib

from crl.policies.base import ContinualPolicyMixin
from crl.policies.layers import ArchitectureOptions


class QRDQNPolicyMixin(ContinualPolicyMixin):
    """The trained network is ``quantile_net`` (its target copy ``quantile_net_target`` is not trained by gradient).

    The architecture options apply to the quantile head ``quantile_net.quantile_net`` and, through
    :meth:`~crl.policies.base.ContinualPolicyMixin.make_features_extractor`, to a NatureCNN extractor.
    The option ``two_hot`` is refused: the head already outputs a distribution over returns.
    """

    quantile_net: contrib.QuantileNetwork
    quantile_net_target: contrib.QuantileNetwork

    def _validate_architecture(self, architecture: ArchitectureOptions, kwargs: dict[str, Any]) -> None:
        super()._validate_architecture(architecture, kwargs)
        if self.two_hot is not None:
            raise ValueError(
                f"policy option two_hot={self.two_hot.options()!r} is not supported by QR-DQN: its quantile "
                "network already outputs a distribution over returns (n_quantiles per action), which the "
                "quantile regression loss trains; use two_hot=None"
            )

    def make_quantile_net(self) -> contrib.QuantileNetwork:
        quantile_net: contrib.QuantileNetwork = super().make_quantile_net()  # type: ignore[misc]
        self.architecture.rewrite(quantile_net.quantile_net)
        return quantile_net

    def network_prefixes(self) -> dict[str, list[str]]:
        return {"quantile_net": ["quantile_net"]}

    def target_networks(self) -> dict[str, str]:
        return {"quantile_net": "quantile_net_target"}

    def run_networks(self, observations: th.Tensor, actions: th.Tensor | None) -> None:
        """One call of the quantile network (it takes no actions: it outputs every action's quantiles)."""
        self.quantile_net(observations)


class QRDQNPolicy(QRDQNPolicyMixin, contrib.QRDQNPolicy):
    """sb3-contrib's ``MlpPolicy`` for QR-DQN plus ``layer_norm`` and ``activation`` options."""


class CnnPolicy(QRDQNPolicyMixin, contrib.CnnPolicy):
    """sb3-contrib's ``CnnPolicy`` (NatureCNN) for QR-DQN plus ``layer_norm`` and ``activation`` options."""


class MultiInputPolicy(QRDQNPolicyMixin, contrib.MultiInputPolicy):
    """sb3-contrib's ``MultiInputPolicy`` for QR-DQN; options apply to the quantile head."""


MlpPolicy = QRDQNPolicy
