"""PPO (actor-critic) policies: SB3's, with architecture options and access to hidden features."""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch as th
from stable_baselines3.common import policies as sb3
from stable_baselines3.common.torch_layers import MlpExtractor
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import nn

from crl.policies.base import ContinualPolicyMixin
from crl.policies.direct_forward import DirectLayers, Step, chained_layers, kept_direct_layers, layer_step, run_layers


class _ActorCriticLayers(NamedTuple):
    """The steps of SB3's ``ActorCriticPolicy`` passes with a shared features extractor."""

    features: list[Step]
    actor: list[Step]
    """The actor's latent path (``mlp_extractor.policy_net``)."""
    critic: list[Step]
    """The critic's latent path (``mlp_extractor.value_net``)."""
    value_head: Step


def _actor_critic_layers(policy: nn.Module) -> _ActorCriticLayers | None:
    """The layers of SB3's ``ActorCriticPolicy.forward`` with a shared features extractor, else ``None``."""
    if not isinstance(policy, sb3.ActorCriticPolicy) or not policy.share_features_extractor:
        return None
    if not _runs_sb3s_extract_features(policy) or type(policy.mlp_extractor) is not MlpExtractor:
        return None
    extractor = policy.mlp_extractor
    return _ActorCriticLayers(
        chained_layers(policy.features_extractor),
        chained_layers(extractor.policy_net),
        chained_layers(extractor.value_net),
        layer_step(policy.value_net),
    )


def _runs_sb3s_extract_features(policy: nn.Module) -> bool:
    """Whether ``policy`` extracts features with SB3's ``ActorCriticPolicy.extract_features``."""
    return type(policy).extract_features is sb3.ActorCriticPolicy.extract_features  # type: ignore[attr-defined]


class _ActorCriticMixin(ContinualPolicyMixin):
    """The trained networks are the ``actor`` path and the ``critic`` path.

    Both include the features extractor when it is shared (SB3's default for PPO).

    With the option ``two_hot`` the value network ``value_net`` outputs ``bins`` logits
    (:mod:`crl.policies.two_hot`): ``forward`` and ``predict_values`` return the expected value, as
    SB3's do, while ``evaluate_actions`` returns the logits in place of the values, for PPO's
    cross-entropy value loss.
    """

    _direct_layers: DirectLayers[_ActorCriticLayers] | None = None
    """The layers ``forward`` calls directly (built at the first call)."""

    def _build_mlp_extractor(self) -> None:
        super()._build_mlp_extractor()  # type: ignore[misc]
        extractor = self.mlp_extractor
        # The action and value heads are built after this, from the latent widths.
        if self.architecture.rewrite(extractor.policy_net):
            extractor.latent_dim_pi *= 2
        if self.architecture.rewrite(extractor.value_net):
            extractor.latent_dim_vf *= 2

    def _build(self, lr_schedule: Schedule) -> None:
        super()._build(lr_schedule)  # type: ignore[misc]
        if self.two_hot is not None:
            self.value_net = nn.Linear(self.mlp_extractor.latent_dim_vf, self.two_hot.bins)
            if self.ortho_init:
                self.value_net.apply(partial(self.init_weights, gain=1))
            # SB3 built the optimizer with the scalar head's parameters.
            self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def forward(self, obs: th.Tensor, deterministic: bool = False) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """SB3's forward pass; the networks' layers are called directly when that is exact.

        PPO runs it at every environment step; skipping ``nn.Module``'s call machinery for 15 of
        its module calls saves about a fifth of it on the 64x64 MLP (see :mod:`crl.policies.direct_forward`).
        """
        layers = kept_direct_layers(self, "_direct_layers", _actor_critic_layers)(self)  # type: ignore[arg-type]
        if layers is None:
            actions, values, log_prob = super().forward(obs, deterministic)  # type: ignore[misc]
            return actions, self._expected_values(values), log_prob
        latent_pi, latent_vf = self._direct_latents(layers, obs)
        values = layers.value_head(latent_vf)
        distribution = self._get_action_dist_from_latent(latent_pi)  # type: ignore[attr-defined]
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        actions = actions.reshape((-1, *self.action_space.shape))  # type: ignore[attr-defined]
        return actions, self._expected_values(values), log_prob

    def evaluate_actions(self, obs: PyTorchObs, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        """SB3's ``evaluate_actions``, PPO's pass at every gradient step; the layers are called directly when exact.

        The operations are SB3's, in SB3's order, so the autograd graph and the gradients are the same.
        A minibatch of uint8 frames is normalised in place of its float copy (:func:`normalized_images`):
        SB3 allocates a second float tensor for the division, 29 MB for PPO's minibatch of 256 Atari
        frames (12.2 to 13.9 against 3.1 to 3.6 ms per minibatch inside a 2,048-step run, medians).
        """
        layers = kept_direct_layers(self, "_direct_layers", _actor_critic_layers)(self)  # type: ignore[arg-type]
        if layers is None:
            return super().evaluate_actions(obs, actions)  # type: ignore[misc,no-any-return]
        latent_pi, latent_vf = self._direct_latents(layers, obs)
        distribution = self._get_action_dist_from_latent(latent_pi)  # type: ignore[attr-defined]
        log_prob = distribution.log_prob(actions)
        values = layers.value_head(latent_vf)
        return values, log_prob, distribution.entropy()

    def latents(self, obs: PyTorchObs) -> tuple[th.Tensor, th.Tensor]:
        """The actor's and the critic's latents of SB3's ``forward``, through the direct layers when exact."""
        layers = kept_direct_layers(self, "_direct_layers", _actor_critic_layers)(self)  # type: ignore[arg-type]
        if layers is not None:
            return self._direct_latents(layers, obs)
        features = self.extract_features(obs)  # type: ignore[attr-defined]
        if self.share_features_extractor:  # type: ignore[attr-defined]
            return self.mlp_extractor(features)  # type: ignore[attr-defined,no-any-return]
        pi_features, vf_features = features
        return self.mlp_extractor.forward_actor(pi_features), self.mlp_extractor.forward_critic(vf_features)  # type: ignore[attr-defined]

    def _direct_latents(self, layers: _ActorCriticLayers, obs: PyTorchObs) -> tuple[th.Tensor, th.Tensor]:
        """The actor's and the critic's latents through the direct layers (the shared extractor once)."""
        features = run_layers(layers.features, self.preprocessed(obs, self))  # type: ignore[arg-type]
        return run_layers(layers.actor, features), run_layers(layers.critic, features)

    def predict_values(self, obs: PyTorchObs) -> th.Tensor:
        return self._expected_values(super().predict_values(obs))  # type: ignore[misc]

    def _expected_values(self, outputs: th.Tensor) -> th.Tensor:
        """``value_net``'s outputs as values of shape ``(batch, 1)``: decoded from logits with ``two_hot``."""
        return outputs if self.two_hot is None else self.two_hot.decode(outputs).unsqueeze(-1)

    def network_prefixes(self) -> dict[str, list[str]]:
        critic_extractor = "features_extractor" if self.share_features_extractor else "vf_features_extractor"
        return {
            "actor": ["features_extractor", "mlp_extractor.policy_net"],
            "critic": [critic_extractor, "mlp_extractor.value_net"],
        }

    def output_layers(self) -> dict[str, list[str]]:
        return {"actor": ["action_net"], "critic": ["value_net"]}

    def run_networks(self, observations: th.Tensor, actions: th.Tensor | None) -> None:
        """The actor's and the critic's passes, through a shared features extractor once.

        ``get_distribution`` and ``predict_values`` would each run the shared extractor, and the
        second run records the same features again: on PPO's NatureCNN that doubled the cost of a
        metrics measurement's probe pass (0.55 s of 3.1 s on 1,024 samples) and of a ReDo check.
        """
        if not self.share_features_extractor:
            self.get_distribution(observations)  # type: ignore[attr-defined]
            self.predict_values(observations)
            return
        features = self._shared_features(observations)
        self._get_action_dist_from_latent(self.mlp_extractor.forward_actor(features))  # type: ignore[attr-defined]
        self.value_net(self.mlp_extractor.forward_critic(features))  # type: ignore[attr-defined]

    def _shared_features(self, observations: th.Tensor) -> th.Tensor:
        """``extract_features`` with a shared extractor: the extractor's module call on crl's preprocessing.

        :meth:`preprocessed` normalises a probe batch of 1,024 Atari frame stacks in 55 ms against SB3's
        105 ms (the float copy divided in place). A subclass's own ``extract_features`` is called instead.
        """
        if not _runs_sb3s_extract_features(self):
            return self.extract_features(observations)  # type: ignore[attr-defined]
        return self.features_extractor(self.preprocessed(observations, self))  # type: ignore[attr-defined,arg-type]


class ActorCriticPolicy(_ActorCriticMixin, sb3.ActorCriticPolicy):
    """SB3's ``MlpPolicy`` for PPO plus ``layer_norm`` and ``activation`` options."""


class ActorCriticCnnPolicy(_ActorCriticMixin, sb3.ActorCriticCnnPolicy):
    """SB3's ``CnnPolicy`` (NatureCNN) for PPO plus ``layer_norm`` and ``activation`` options."""


class MultiInputActorCriticPolicy(_ActorCriticMixin, sb3.MultiInputActorCriticPolicy):
    """SB3's ``MultiInputPolicy`` for PPO; options apply to the MLP heads."""


MlpPolicy = ActorCriticPolicy
CnnPolicy = ActorCriticCnnPolicy
MultiInputPolicy = MultiInputActorCriticPolicy
