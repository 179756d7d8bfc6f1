"""TQC policies: sb3-contrib's, with architecture options and access to hidden features."""

from __future__ import annotations

from typing import Any

import torch as th
from sb3_contrib.tqc import policies as sb3_contrib

from crl.policies.layers import ArchitectureOptions
from crl.policies.sac import SoftActorCriticPolicyMixin


class TQCPolicyMixin(SoftActorCriticPolicyMixin):
    """The trained networks are the ``actor`` and each quantile critic ``qf0``, ``qf1``, ...

    Each critic ``qf<i>`` is one MLP ending in ``n_quantiles`` outputs. The target critics are not
    trained by gradient and are not listed. As SAC's, the critics' layers are called directly when that
    is exact (:meth:`quantiles`); the actor is called as sb3-contrib builds it.
    """

    algorithm_name = "TQC"
    critic_class = sb3_contrib.Critic
    actor: sb3_contrib.Actor
    critic: sb3_contrib.Critic
    critic_target: sb3_contrib.Critic

    def _validate_architecture(self, architecture: ArchitectureOptions, kwargs: dict[str, Any]) -> None:
        if self.two_hot is not None:
            raise ValueError(
                f"policy option two_hot={self.two_hot.options()!r} is not supported by TQC: its critics "
                "already predict return distributions (n_quantiles quantiles each, trained by quantile "
                "regression); leave two_hot out"
            )
        super()._validate_architecture(architecture, kwargs)

    def quantiles(self, obs: th.Tensor, actions: th.Tensor, target: bool = False) -> th.Tensor:
        """``critic(obs, actions)`` (``critic_target(obs, actions)`` with ``target``), through :meth:`critic_outputs`
        when exact.

        :return: every critic's quantiles, shape ``(batch, n_critics, n_quantiles)``
        """
        outputs = self.critic_outputs(obs, actions, target)
        if outputs is None:
            quantiles: th.Tensor = (self.critic_target if target else self.critic)(obs, actions)
            return quantiles
        # sb3-contrib's Critic.forward stacks its quantile networks' outputs
        return th.stack(outputs, dim=1)


class TQCPolicy(TQCPolicyMixin, sb3_contrib.TQCPolicy):
    """sb3-contrib's ``MlpPolicy`` for TQC plus ``layer_norm`` and ``activation`` options."""


class CnnPolicy(TQCPolicyMixin, sb3_contrib.CnnPolicy):
    """sb3-contrib's ``CnnPolicy`` (NatureCNN) for TQC plus ``layer_norm`` and ``activation`` options."""


class MultiInputPolicy(TQCPolicyMixin, sb3_contrib.MultiInputPolicy):
    """sb3-contrib's ``MultiInputPolicy`` for TQC; options apply to the MLP heads."""


MlpPolicy = TQCPolicy
