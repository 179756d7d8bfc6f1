"""SAC policies: SB3's, with architecture options and access to hidden features."""

from __future__ import annotations

from typing import Any

import torch as th
from stable_baselines3.common.policies import ContinuousCritic
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.sac import policies as sb3

from crl.policies.base import ContinualPolicyMixin
from crl.policies.layers import ArchitectureOptions, widened


class _SACMixin(ContinualPolicyMixin):
    """The trained networks are the ``actor`` and each critic ``qf0``, ``qf1``, ...

    The target critics are not trained by gradient and are not listed.
    """

    actor: sb3.Actor
    critic: ContinuousCritic

    def _validate_architecture(self, architecture: ArchitectureOptions, kwargs: dict[str, Any]) -> None:
        if architecture.crelu and kwargs.get("use_sde", False):
            raise ValueError(
                "policy option activation='crelu' is not supported with use_sde=True for SAC; "
                "use another activation or use_sde=False"
            )

    def make_actor(self, features_extractor: BaseFeaturesExtractor | None = None) -> sb3.Actor:
        return self._rewrite_actor(super().make_actor(features_extractor))  # type: ignore[misc]

    def make_critic(self, features_extractor: BaseFeaturesExtractor | None = None) -> ContinuousCritic:
        return self._rewrite_critic(super().make_critic(features_extractor))  # type: ignore[misc]

    def _rewrite_actor(self, actor: sb3.Actor) -> sb3.Actor:
        """Apply the architecture options to an actor built by SB3 (or a subclass of its Actor)."""
        if self.architecture.rewrite(actor.latent_pi):
            # The Gaussian heads read the (now doubled) last hidden layer.
            actor.mu = widened(actor.mu)
            actor.log_std = widened(actor.log_std)  # type: ignore[arg-type]
        return actor

    def _rewrite_critic(self, critic: ContinuousCritic) -> ContinuousCritic:
        """Apply the architecture options to a critic built by SB3 (or a subclass of its critic)."""
        for q_net in critic.q_networks:
            self.architecture.rewrite(q_net)  # type: ignore[arg-type]
        return critic

    def network_prefixes(self) -> dict[str, list[str]]:
        extractor = "actor.features_extractor" if self.share_features_extractor else "critic.features_extractor"
        critics = {f"qf{index}": [extractor, f"critic.qf{index}"] for index in range(self.critic.n_critics)}
        return {"actor": ["actor"], **critics}

    def output_layers(self) -> dict[str, list[str]]:
        # With gSDE, log_std is a parameter, not a layer.
        heads = ["actor.mu", "actor.log_std"] if isinstance(self.actor.log_std, th.nn.Module) else ["actor.mu"]
        return {"actor": heads}

    def _run_networks(self, observations: th.Tensor, actions: th.Tensor | None) -> None:
        actions_pi = self.actor(observations, deterministic=True)
        self.critic(observations, actions_pi if actions is None else actions)


class SACPolicy(_SACMixin, sb3.SACPolicy):
    """SB3's ``MlpPolicy`` for SAC plus ``layer_norm`` and ``activation`` options."""


class CnnPolicy(_SACMixin, sb3.CnnPolicy):
    """SB3's ``CnnPolicy`` (NatureCNN) for SAC plus ``layer_norm`` and ``activation`` options."""


class MultiInputPolicy(_SACMixin, sb3.MultiInputPolicy):
    """SB3's ``MultiInputPolicy`` for SAC; options apply to the MLP heads."""


MlpPolicy = SACPolicy
