"""PPO (actor-critic) policies: SB3's, with architecture options and access to hidden features."""

from __future__ import annotations

import torch as th
from stable_baselines3.common import policies as sb3

from crl.policies.base import ContinualPolicyMixin


class _ActorCriticMixin(ContinualPolicyMixin):
    """The trained networks are the ``actor`` path and the ``critic`` path.

    Both include the features extractor when it is shared (SB3's default for PPO).
    """

    def _build_mlp_extractor(self) -> None:
        super()._build_mlp_extractor()  # type: ignore[misc]
        extractor = self.mlp_extractor
        # The action and value heads are built after this, from the latent widths.
        if self.architecture.rewrite(extractor.policy_net):
            extractor.latent_dim_pi *= 2
        if self.architecture.rewrite(extractor.value_net):
            extractor.latent_dim_vf *= 2

    def network_prefixes(self) -> dict[str, list[str]]:
        critic_extractor = "features_extractor" if self.share_features_extractor else "vf_features_extractor"
        return {
            "actor": ["features_extractor", "mlp_extractor.policy_net"],
            "critic": [critic_extractor, "mlp_extractor.value_net"],
        }

    def output_layers(self) -> dict[str, list[str]]:
        return {"actor": ["action_net"], "critic": ["value_net"]}

    def _run_networks(self, observations: th.Tensor, actions: th.Tensor | None) -> None:
        self.get_distribution(observations)
        self.predict_values(observations)


class ActorCriticPolicy(_ActorCriticMixin, sb3.ActorCriticPolicy):
    """SB3's ``MlpPolicy`` for PPO plus ``layer_norm`` and ``activation`` options."""


class ActorCriticCnnPolicy(_ActorCriticMixin, sb3.ActorCriticCnnPolicy):
    """SB3's ``CnnPolicy`` (NatureCNN) for PPO plus ``layer_norm`` and ``activation`` options."""


class MultiInputActorCriticPolicy(_ActorCriticMixin, sb3.MultiInputActorCriticPolicy):
    """SB3's ``MultiInputPolicy`` for PPO; options apply to the MLP heads."""


MlpPolicy = ActorCriticPolicy
CnnPolicy = ActorCriticCnnPolicy
MultiInputPolicy = MultiInputActorCriticPolicy
