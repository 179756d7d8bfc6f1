"""SAC policies: SB3's, with architecture options and access to hidden features."""

from __future__ import annotations

from functools import partial
from typing import Any, ClassVar

import torch as th
from stable_baselines3.common.policies import BaseModel, ContinuousCritic
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.sac import policies as sb3
from torch import nn

from crl.policies.base import ContinualPolicyMixin
from crl.policies.direct_forward import DirectLayers, Step, chained_layers, kept_direct_layers, run_layers
from crl.policies.layers import ArchitectureOptions, widened
from crl.policies.two_hot import TwoHot


class CategoricalContinuousCritic(ContinuousCritic):
    """SB3's SAC critic whose Q-networks end in ``bins`` logits (see :mod:`crl.policies.two_hot`).

    ``forward`` returns each network's expected Q-value, shaped like SB3's, so the actor loss and
    the TD target are SB3's; :meth:`logits` is what SAC's cross-entropy critic loss trains.

    :param two_hot: the support of each Q-network's value distribution
    """

    def __init__(self, *args: Any, two_hot: TwoHot, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.two_hot = two_hot
        for q_net in self.q_networks:
            assert isinstance(q_net, nn.Sequential)
            output = q_net[-1]
            assert isinstance(output, nn.Linear)
            q_net[-1] = nn.Linear(output.in_features, two_hot.bins)

    def logits(self, obs: th.Tensor, actions: th.Tensor) -> tuple[th.Tensor, ...]:
        """One ``(batch, bins)`` tensor of logits per Q-network."""
        return super().forward(obs, actions)

    def forward(self, obs: th.Tensor, actions: th.Tensor) -> tuple[th.Tensor, ...]:
        return tuple(self.two_hot.decode(logits).unsqueeze(-1) for logits in self.logits(obs, actions))

    def q1_forward(self, obs: th.Tensor, actions: th.Tensor) -> th.Tensor:
        return self.two_hot.decode(super().q1_forward(obs, actions)).unsqueeze(-1)


_CriticLayers = tuple[list[Step], list[list[Step]]]
"""Layers of a critic's features extractor, and of each of its Q-networks."""


def _critic_layers(critic_class: type[BaseModel], critic: nn.Module) -> _CriticLayers | None:
    """The layers of ``critic_class.forward`` after ``preprocess_obs``; ``None`` for a critic with another forward.

    :param critic_class: SB3's ``ContinuousCritic`` or a critic class whose ``forward`` runs its extractor
        (without gradient when shared) and then each of its ``q_networks`` on the features and actions
    """
    if not isinstance(critic, critic_class):
        return None
    own_class = type(critic)
    if own_class.forward is not critic_class.forward or own_class.extract_features is not BaseModel.extract_features:
        return None
    q_networks: list[nn.Module] = critic.q_networks  # type: ignore[assignment]  # both critic classes have them
    return chained_layers(critic.features_extractor), [chained_layers(q_net) for q_net in q_networks]


class SoftActorCriticPolicyMixin(ContinualPolicyMixin):
    """The networks of a soft actor-critic policy (SAC's, TQC's, CrossQ's): the ``actor`` and each critic
    ``qf0``, ``qf1``, ...

    The architecture options apply to the actor's hidden layers and to each of the critic's
    ``q_networks``. The target critics are not trained by gradient and are not listed. The critics'
    layers are called directly where that is exact (:meth:`critic_outputs`).
    """

    algorithm_name: str
    """The algorithm named in error messages."""
    critic_class: ClassVar[type[BaseModel] | None] = None
    """The critic class whose ``forward`` :meth:`critic_outputs` computes layer by layer (see
    :func:`_critic_layers`); ``None``: the critic is always called as a module."""
    actor: Any
    critic: Any
    critic_target: Any
    _direct_critic_layers: DirectLayers[_CriticLayers] | None = None
    """The critic's layers :meth:`critic_outputs` calls directly (built at the first call)."""
    _direct_target_layers: DirectLayers[_CriticLayers] | None = None
    """The target critic's layers :meth:`critic_outputs` calls directly (built at the first call)."""

    def _validate_architecture(self, architecture: ArchitectureOptions, kwargs: dict[str, Any]) -> None:
        if architecture.concatenated and kwargs.get("use_sde", False):
            # gSDE's log_std is a (latent, action) parameter and its mu may end in a Hardtanh: neither can
            # be widened to read a doubled last hidden layer (CReLU's or Fourier's).
            raise ValueError(
                f"policy option activation={architecture.activation!r} is not supported with use_sde=True for "
                f"{self.algorithm_name}; use another activation or use_sde=False"
            )

    def make_actor(self, features_extractor: BaseFeaturesExtractor | None = None) -> Any:
        return self._rewrite_actor(super().make_actor(features_extractor))  # type: ignore[misc]

    def make_critic(self, features_extractor: BaseFeaturesExtractor | None = None) -> Any:
        return self._rewrite_critic(super().make_critic(features_extractor))  # type: ignore[misc]

    def _rewrite_actor(self, actor: Any) -> Any:
        """Apply the architecture options to an actor built by SB3 (or a subclass of its Actor)."""
        if self.architecture.rewrite(actor.latent_pi):
            # The Gaussian heads read the (now doubled) last hidden layer.
            actor.mu = widened(actor.mu)
            actor.log_std = widened(actor.log_std)
        return actor

    def _rewrite_critic(self, critic: Any) -> Any:
        """Apply the architecture options to each Q-network (quantile network) of a critic, in place.

        In place: the critic's list ``q_networks`` and its attributes ``qf<i>`` hold the same modules.
        """
        for q_net in critic.q_networks:
            self.architecture.rewrite(q_net)
        return critic

    def network_prefixes(self) -> dict[str, list[str]]:
        extractor = "actor.features_extractor" if self.share_features_extractor else "critic.features_extractor"  # type: ignore[attr-defined]
        critics = {f"qf{index}": [extractor, f"critic.qf{index}"] for index in range(self.critic.n_critics)}
        return {"actor": ["actor"], **critics}

    def target_networks(self) -> dict[str, str]:
        return {"critic": "critic_target"}

    def output_layers(self) -> dict[str, list[str]]:
        # With gSDE, log_std is a parameter, not a layer.
        heads = ["actor.mu", "actor.log_std"] if isinstance(self.actor.log_std, th.nn.Module) else ["actor.mu"]
        return {"actor": heads}

    def run_networks(self, observations: th.Tensor, actions: th.Tensor | None) -> None:
        actions_pi = self.actor(observations, deterministic=True)
        self.critic(observations, actions_pi if actions is None else actions)

    def critic_outputs(self, obs: th.Tensor, actions: th.Tensor, target: bool = False) -> tuple[th.Tensor, ...] | None:
        """Each Q-network's output on ``(obs, actions)``, the critic's (the target critic's with ``target``)
        layers called directly; ``None`` when that would not be exact.

        A soft actor-critic's ``train()`` runs a critic three times per gradient step (the TD target,
        the critic loss, the actor loss), each through 15 modules for two 256x256 MLPs (see
        :mod:`crl.policies.direct_forward`). Not exact: a critic that is not :attr:`critic_class` with
        its ``forward`` (e.g. the two-hot head), hooks or compilation.
        """
        critic_class = self.critic_class
        if critic_class is None:
            return None
        critic = self.critic_target if target else self.critic
        kept_in = "_direct_target_layers" if target else "_direct_critic_layers"
        layers = kept_direct_layers(self, kept_in, partial(_critic_layers, critic_class))(critic)
        if layers is None:
            return None
        extractor_layers, q_network_layers = layers
        # The critic's forward: a shared extractor is trained by the actor's loss only
        with th.set_grad_enabled(not critic.share_features_extractor):
            observations = self.preprocessed(obs, critic)
            features = run_layers(extractor_layers, observations)
        q_input = th.cat([features, actions], dim=1)
        return tuple(run_layers(q_layers, q_input) for q_layers in q_network_layers)


class SACPolicyMixin(SoftActorCriticPolicyMixin):
    """SAC's networks (:class:`SoftActorCriticPolicyMixin`), with critics called layer by layer when exact."""

    algorithm_name = "SAC"
    critic_class = ContinuousCritic
    actor: sb3.Actor
    critic: ContinuousCritic
    critic_target: ContinuousCritic

    def make_critic(self, features_extractor: BaseFeaturesExtractor | None = None) -> ContinuousCritic:
        if self.two_hot is None:
            return super().make_critic(features_extractor)  # type: ignore[no-any-return]
        critic_kwargs = self._update_features_extractor(self.critic_kwargs, features_extractor)  # type: ignore[attr-defined]
        critic = CategoricalContinuousCritic(**critic_kwargs, two_hot=self.two_hot).to(self.device)  # type: ignore[attr-defined]
        return self._rewrite_critic(critic)  # type: ignore[no-any-return]

    def q_values(self, obs: th.Tensor, actions: th.Tensor, target: bool = False) -> tuple[th.Tensor, ...]:
        """``critic(obs, actions)`` (``critic_target(obs, actions)`` with ``target``), through :meth:`critic_outputs`
        when exact."""
        q_values = self.critic_outputs(obs, actions, target)
        if q_values is None:
            q_values = (self.critic_target if target else self.critic)(obs, actions)
        return q_values


class SACPolicy(SACPolicyMixin, sb3.SACPolicy):
    """SB3's ``MlpPolicy`` for SAC plus ``layer_norm`` and ``activation`` options."""


class CnnPolicy(SACPolicyMixin, sb3.CnnPolicy):
    """SB3's ``CnnPolicy`` (NatureCNN) for SAC plus ``layer_norm`` and ``activation`` options."""


class MultiInputPolicy(SACPolicyMixin, sb3.MultiInputPolicy):
    """SB3's ``MultiInputPolicy`` for SAC; options apply to the MLP heads."""


MlpPolicy = SACPolicy
