"""DQN policies: SB3's, with architecture options and access to the Q-network's hidden features."""

from __future__ import annotations

from typing import Any, TypeGuard

import torch as th
from stable_baselines3.common.policies import BaseModel
from stable_baselines3.common.type_aliases import PyTorchObs
from stable_baselines3.dqn import policies as sb3
from torch import nn

from crl.policies.base import ContinualPolicyMixin
from crl.policies.direct_forward import DirectLayers, Step, chained_layers, has_call_hooks
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


def _q_network_layers(q_net: nn.Module) -> list[Step] | None:
    """The layers that compute SB3's ``QNetwork`` after ``preprocess_obs``; ``None`` for another forward."""
    if not _runs_sb3s_forward(q_net) or type(q_net)._predict is not sb3.QNetwork._predict:
        return None
    return chained_layers(q_net.features_extractor) + chained_layers(q_net.q_net)


def _runs_sb3s_forward(q_net: nn.Module) -> TypeGuard[sb3.QNetwork]:
    """Whether ``q_net`` is SB3's ``QNetwork`` with its forward pass and its ``extract_features``."""
    if not isinstance(q_net, sb3.QNetwork):
        return False
    network = type(q_net)
    return network.forward is sb3.QNetwork.forward and network.extract_features is BaseModel.extract_features


class DQNPolicyMixin(ContinualPolicyMixin):
    """The trained network is ``q_net`` (its target copy is not trained by gradient)."""

    q_net: sb3.QNetwork
    q_net_target: sb3.QNetwork
    _direct_q_layers: DirectLayers[list[Step]] | None = None
    """The Q-network's layers :meth:`q_values` calls directly (built at the first call)."""
    _direct_target_layers: DirectLayers[list[Step]] | None = None
    """The target network's layers :meth:`q_values` calls directly (built at the first call)."""

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

    def run_networks(self, observations: th.Tensor, actions: th.Tensor | None) -> None:
        """The Q-network's modules on crl's preprocessing when it runs SB3's forward, else its module call.

        :meth:`preprocessed` normalises a probe batch of 1,024 Atari frame stacks in 55 ms against SB3's
        105 ms (the float copy divided in place). A hook on the Q-network itself, or a global one, takes
        the module call, which runs it.
        """
        q_net = self.q_net
        if not _runs_sb3s_forward(q_net) or has_call_hooks(q_net):
            q_net(observations)
            return
        q_net.q_net(q_net.features_extractor(self.preprocessed(observations, q_net)))

    def _predict(self, obs: PyTorchObs, deterministic: bool = True) -> th.Tensor:
        """SB3's greedy action; the Q-network's layers are called directly when that is exact.

        DQN acts at every environment step; skipping ``nn.Module``'s call machinery saves about a
        quarter of the forward pass of the 120x84 MLP (see :mod:`crl.policies.direct_forward`).
        """
        q_values = self._direct_q_values(obs, target=False)
        if q_values is None:
            return super()._predict(obs, deterministic)  # type: ignore[misc]
        return q_values.argmax(dim=1).reshape(-1)

    def q_values(self, obs: PyTorchObs, target: bool = False) -> th.Tensor:
        """``q_net(obs)``, or ``q_net_target(obs)`` with ``target``; the layers are called directly when that is exact.

        DQN's ``train()`` calls it twice per gradient step (the TD target and the loss): 9 module
        calls each for the 120x84 MLP, which the direct calls skip.
        """
        q_values = self._direct_q_values(obs, target)
        if q_values is None:
            q_values = (self.q_net_target if target else self.q_net)(obs)
        return q_values

    def _direct_q_values(self, obs: PyTorchObs, target: bool) -> th.Tensor | None:
        """The network's forward pass through its layers' ``forward``; ``None`` when that would not be exact.

        Not exact: a network that is not SB3's ``QNetwork`` (e.g. the two-hot head), hooks on its
        modules or globally, compilation or tracing (see :meth:`direct_pass`).
        """
        if target:
            return self.direct_pass(obs, self.q_net_target, "_direct_target_layers", _q_network_layers)
        return self.direct_pass(obs, self.q_net, "_direct_q_layers", _q_network_layers)


class DQNPolicy(DQNPolicyMixin, sb3.DQNPolicy):
    """SB3's ``MlpPolicy`` for DQN plus ``layer_norm`` and ``activation`` options."""


class CnnPolicy(DQNPolicyMixin, sb3.CnnPolicy):
    """SB3's ``CnnPolicy`` (NatureCNN) for DQN plus ``layer_norm`` and ``activation`` options."""


class MultiInputPolicy(DQNPolicyMixin, sb3.MultiInputPolicy):
    """SB3's ``MultiInputPolicy`` for DQN; options apply to the Q-network head."""


MlpPolicy = DQNPolicy
