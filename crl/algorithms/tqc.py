"""TQC with interventions: sb3-contrib's TQC whose ``train()`` calls the gradient-step hooks."""

from __future__ import annotations

from typing import ClassVar

import sb3_contrib
import torch as th
from sb3_contrib.common.utils import quantile_huber_loss
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import ReplayBufferSamples

from crl.algorithms.base import with_sb3_signature
from crl.algorithms.soft_actor_critic import SoftActorCritic
from crl.policies import tqc as policies
from crl.policies.multihead import MultiHeadTQCPolicy


class TQC(SoftActorCritic, sb3_contrib.TQC):
    """Truncated Quantile Critics (Kuznetsov et al. 2020, "Controlling Overestimation Bias with Truncated
    Mixture of Continuous Distributional Quantile Critics") with plasticity interventions.

    Takes every argument of :class:`sb3_contrib.TQC`, plus ``interventions`` and ``metrics`` (see
    :class:`~crl.algorithms.base.ContinualAlgorithm`). With no interventions it trains exactly like
    sb3-contrib's TQC. Each gradient step optimises the loss ``"critic"`` (every quantile network
    ``qf<i>``) and then ``"actor"``; the gradient-step hooks fire for each. The critics predict return
    distributions already, so the policy option ``two_hot`` is refused.

    Notation of the docstrings below: ``N`` critics (``n_critics``) of ``M`` quantiles each
    (``n_quantiles``), ``z_m^n(s, a)`` the ``m``-th quantile of critic ``n``, ``d`` the quantiles
    dropped per critic (``top_quantiles_to_drop_per_net``).
    """

    algorithm_family: ClassVar[str] = "TQC"
    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": policies.TQCPolicy,
        "CnnPolicy": policies.CnnPolicy,
        "MultiInputPolicy": policies.MultiInputPolicy,
        "MultiHeadPolicy": MultiHeadTQCPolicy,
    }

    def _td_target(self, replay_data: ReplayBufferSamples, ent_coef: th.Tensor) -> th.Tensor:
        """``y_i = r + gamma (1 - done) (z_(i)(s', a') - alpha log pi(a'|s'))``, ``i <= N (M - d)``, ``a' ~ pi(.|s')``.

        ``z_(1) <= ... <= z_(NM)`` are the target critics' ``N M`` quantiles at ``(s', a')`` pooled and
        sorted; the ``d N`` largest are dropped against overestimation (the truncation of TQC).

        :return: the ``N (M - d)`` target atoms, shaped ``(batch, 1, N (M - d))`` to broadcast over the critics
        """
        # For n-step replay the discount is gamma**n (when the episode did not end early)
        discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma
        with th.no_grad():
            next_actions, next_log_prob = self.actor.action_log_prob(replay_data.next_observations)
            # (batch, N, M)
            next_quantiles = self._quantiles(replay_data.next_observations, next_actions, target=True)
            kept = self.critic.quantiles_total - self.top_quantiles_to_drop_per_net * self.critic.n_critics
            next_quantiles, _ = th.sort(next_quantiles.flatten(start_dim=1))
            next_quantiles = next_quantiles[:, :kept]
            next_quantiles = next_quantiles - ent_coef * next_log_prob.reshape(-1, 1)
            target_quantiles = replay_data.rewards + (1 - replay_data.dones) * discounts * next_quantiles
            return target_quantiles.unsqueeze(1)

    def _critic_loss(self, replay_data: ReplayBufferSamples, target_quantiles: th.Tensor) -> th.Tensor:
        """``J_Z = mean_{n, m, i} |tau_m - 1{y_i < z_m^n(s, a)}| L_H(y_i - z_m^n(s, a))``, ``tau_m = (2m - 1) / 2M``.

        The quantile Huber loss (``L_H(u) = u^2 / 2`` for ``|u| <= 1``, ``|u| - 1/2`` beyond), averaged
        over the batch, the ``N`` critics, their ``M`` quantiles and the target atoms ``y_i``: sb3-contrib
        takes the mean over the quantiles where the paper sums them (a constant factor ``M``).
        """
        current_quantiles = self._quantiles(replay_data.observations, replay_data.actions)
        return quantile_huber_loss(current_quantiles, target_quantiles, sum_over_quantiles=False)

    def _actor_loss(
        self, replay_data: ReplayBufferSamples, actions_pi: th.Tensor, log_prob: th.Tensor, ent_coef: th.Tensor
    ) -> th.Tensor:
        """``J_pi = E[alpha log pi(a~|s) - 1/(N M) sum_{n, m} z_m^n(s, a~)]``: every quantile, none dropped.

        Only the actor learns from this loss, so the critic's parameters are left out of its graph:
        backward computes ``dZ/da~`` through the critic but not the critic's own gradients, which
        sb3-contrib computes and its next critic step discards (``zero_grad``). Same actor update, less work.
        """
        with self._critic_left_out_of_graph():
            quantiles_pi = self._quantiles(replay_data.observations, actions_pi)
        mean_q_pi = quantiles_pi.mean(dim=2).mean(dim=1, keepdim=True)
        return (ent_coef * log_prob - mean_q_pi).mean()

    def _quantiles(self, obs: th.Tensor, actions: th.Tensor, target: bool = False) -> th.Tensor:
        """``critic(obs, actions)`` (``critic_target`` with ``target``), through crl's direct pass."""
        if isinstance(self.policy, policies.TQCPolicyMixin):
            return self.policy.quantiles(obs, actions, target)
        quantiles: th.Tensor = (self.critic_target if target else self.critic)(obs, actions)
        return quantiles


with_sb3_signature(TQC, sb3_contrib.TQC)
