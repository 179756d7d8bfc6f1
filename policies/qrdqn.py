"""QR-DQN policies: sb3-contrib's, with architecture options and access to the quantile network's hidden features."""

from __future__ import annotations

from typing import Any, TypeGuard

import torch as th
from sb3_contrib.qrdqn import policies as contrib
from stable_baselines3.common.policies import BaseModel
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import nn

from crl.policies.base import ContinualPolicyMixin
from crl.policies.direct_forward import DirectLayers, Step, chained_layers, has_call_hooks
from crl.policies.layers import ArchitectureOptions


def _quantile_network_layers(quantile_net: nn.Module) -> list[Step] | None:
    """The layers that compute sb3-contrib's ``QuantileNetwork`` before its reshape; ``None`` for another forward."""
    if not _runs_contribs_forward(quantile_net):
        return None
    return chained_layers(quantile_net.features_extractor) + chained_layers(quantile_net.quantile_net)


def _runs_contribs_forward(quantile_net: nn.Module) -> TypeGuard[contrib.QuantileNetwork]:
    """Whether ``quantile_net`` is sb3-contrib's ``QuantileNetwork`` with its own ``forward``, ``_predict``
    and ``extract_features``."""
    if not isinstance(quantile_net, contrib.QuantileNetwork):
        return False
    network = type(quantile_net)
    return (
        network.forward is contrib.QuantileNetwork.forward
        and network._predict is contrib.QuantileNetwork._predict
        and network.extract_features is BaseModel.extract_features
    )


class QRDQNPolicyMixin(ContinualPolicyMixin):
    """The trained network is ``quantile_net`` (its target copy ``quantile_net_target`` is not trained by gradient).

    The architecture options apply to the quantile head ``quantile_net.quantile_net`` and, through
    :meth:`~crl.policies.base.ContinualPolicyMixin.make_features_extractor`, to a NatureCNN extractor.
    The option ``two_hot`` is refused: the head already outputs a distribution over returns.
    """

    quantile_net: contrib.QuantileNetwork
    quantile_net_target: contrib.QuantileNetwork
    _direct_quantile_layers: DirectLayers[list[Step]] | None = None
    """The quantile network's layers :meth:`quantiles` calls directly (built at the first call)."""
    _direct_target_layers: DirectLayers[list[Step]] | None = None
    """The target network's layers :meth:`quantiles` calls directly (built at the first call)."""

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
        """One pass of the quantile network (it takes no actions: it outputs every action's quantiles).

        Its modules on crl's preprocessing when it runs sb3-contrib's forward, as DQN's
        (:meth:`~crl.policies.dqn.DQNPolicyMixin.run_networks`: uint8 frames normalised in place of
        their float copy); a hook on the network itself, or a global one, takes the module call.
        """
        quantile_net = self.quantile_net
        if not _runs_contribs_forward(quantile_net) or has_call_hooks(quantile_net):
            quantile_net(observations)
            return
        quantile_net.quantile_net(quantile_net.features_extractor(self.preprocessed(observations, quantile_net)))

    def _predict(self, obs: PyTorchObs, deterministic: bool = True) -> th.Tensor:
        """sb3-contrib's greedy action (on the quantiles' mean); the layers are called directly when that is exact.

        QR-DQN acts at every environment step; as for DQN (:class:`~crl.policies.dqn.DQNPolicyMixin`),
        skipping ``nn.Module``'s call machinery saves about 2 us per module of the pass.
        """
        quantiles = self._direct_quantiles(obs, target=False)
        if quantiles is None:
            return super()._predict(obs, deterministic)  # type: ignore[misc]
        return quantiles.mean(dim=1).argmax(dim=1).reshape(-1)

    def quantiles(self, obs: PyTorchObs, target: bool = False) -> th.Tensor:
        """``quantile_net(obs)`` (``quantile_net_target(obs)`` with ``target``), calling the layers directly if exact.

        QR-DQN's ``train()`` calls it twice per gradient step (the TD target and the loss).

        :return: shape ``(batch, n_quantiles, n_actions)``
        """
        quantiles = self._direct_quantiles(obs, target)
        if quantiles is None:
            quantiles = (self.quantile_net_target if target else self.quantile_net)(obs)
        return quantiles

    def _direct_quantiles(self, obs: PyTorchObs, target: bool) -> th.Tensor | None:
        """sb3-contrib's ``QuantileNetwork.forward`` through its layers (:meth:`direct_pass`); ``None`` if not exact."""
        network = self.quantile_net_target if target else self.quantile_net
        kept_in = "_direct_target_layers" if target else "_direct_quantile_layers"
        outputs = self.direct_pass(obs, network, kept_in, _quantile_network_layers)
        if outputs is None:
            return None
        quantiles: th.Tensor = outputs.view(-1, network.n_quantiles, int(network.action_space.n))
        return quantiles


class QRDQNPolicy(QRDQNPolicyMixin, contrib.QRDQNPolicy):
    """sb3-contrib's ``MlpPolicy`` for QR-DQN plus ``layer_norm`` and ``activation`` options."""


class CnnPolicy(QRDQNPolicyMixin, contrib.CnnPolicy):
    """sb3-contrib's ``CnnPolicy`` (NatureCNN) for QR-DQN plus ``layer_norm`` and ``activation`` options."""


class MultiInputPolicy(QRDQNPolicyMixin, contrib.MultiInputPolicy):
    """sb3-contrib's ``MultiInputPolicy`` for QR-DQN; options apply to the quantile head."""


MlpPolicy = QRDQNPolicy
