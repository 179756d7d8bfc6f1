"""SAC with interventions: SB3's SAC whose ``train()`` calls the gradient-step hooks."""

from __future__ import annotations

from typing import ClassVar

import torch as th
from stable_baselines3 import sac as sb3
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from torch.nn import functional as F

from crl.algorithms.base import with_sb3_signature
from crl.algorithms.soft_actor_critic import SoftActorCritic
from crl.policies import sac as policies
from crl.policies.multihead import MultiHeadSACPolicy
from crl.policies.sac import CategoricalContinuousCritic


class SAC(SoftActorCritic, sb3.SAC):
    """Soft Actor-Critic (Haarnoja et al. 2018) with plasticity interventions.

    Takes every argument of :class:`stable_baselines3.SAC`, plus ``interventions`` and ``metrics``
    (see :class:`~crl.algorithms.base.ContinualAlgorithm`). With no interventions it trains exactly
    like SB3's SAC. Each gradient step optimises the loss ``"critic"`` and then ``"actor"``; the
    gradient-step hooks fire for each. With the policy option ``two_hot`` the critics have categorical
    heads trained by cross-entropy against the two-hot encoding of the TD target
    (:mod:`crl.policies.two_hot`); the target and the actor loss use the expected Q-values.
    """

    algorithm_family: ClassVar[str] = "SAC"
    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": policies.SACPolicy,
        "CnnPolicy": policies.CnnPolicy,
        "MultiInputPolicy": policies.MultiInputPolicy,
        "MultiHeadPolicy": MultiHeadSACPolicy,
    }

    def _td_target(self, replay_data: ReplayBufferSamples, ent_coef: th.Tensor) -> th.Tensor:
        """``y = r + gamma (1 - done) (min_i Q_target_i(s', a') - alpha log pi(a'|s'))``, ``a' ~ pi(.|s')``."""
        # For n-step replay the discount is gamma**n (when the episode did not end early)
        discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma
        with th.no_grad():
            next_actions, next_log_prob = self.actor.action_log_prob(replay_data.next_observations)
            next_q_values = th.cat(self._q_values(replay_data.next_observations, next_actions, target=True), dim=1)
            next_q_values, _ = th.min(next_q_values, dim=1, keepdim=True)
            next_q_values = next_q_values - ent_coef * next_log_prob.reshape(-1, 1)
            return replay_data.rewards + (1 - replay_data.dones) * discounts * next_q_values

    def _critic_loss(self, replay_data: ReplayBufferSamples, target_q_values: th.Tensor) -> th.Tensor:
        """``J_Q = 1/2 sum_i (Q_i(s, a) - y)^2``; with a two-hot head ``1/2 sum_i CE(Z_i(s, a), twohot(y))``."""
        two_hot = self.two_hot
        if two_hot is not None:
            assert isinstance(self.critic, CategoricalContinuousCritic)
            logits = self.critic.logits(replay_data.observations, replay_data.actions)
            critic_loss = 0.5 * sum(two_hot.loss(current_logits, target_q_values) for current_logits in logits)
        else:
            current_q_values = self._q_values(replay_data.observations, replay_data.actions)
            critic_loss = 0.5 * sum(F.mse_loss(current_q, target_q_values) for current_q in current_q_values)
        assert isinstance(critic_loss, th.Tensor)  # for type checker
        return critic_loss

    def _actor_loss(
        self, replay_data: ReplayBufferSamples, actions_pi: th.Tensor, log_prob: th.Tensor, ent_coef: th.Tensor
    ) -> th.Tensor:
        """``J_pi = E[alpha log pi(a~|s) - min_i Q_i(s, a~)]``.

        Only the actor learns from this loss, so the critic's parameters are left out of its graph:
        backward computes ``dQ/da~`` through the critic but not the critic's own gradients, which SB3
        computes and its next critic step discards (``zero_grad``). Same actor update, less work.
        """
        with self._critic_left_out_of_graph():
            q_values_pi = th.cat(self._q_values(replay_data.observations, actions_pi), dim=1)
        min_qf_pi, _ = th.min(q_values_pi, dim=1, keepdim=True)
        return (ent_coef * log_prob - min_qf_pi).mean()

    def _q_values(self, obs: th.Tensor, actions: th.Tensor, target: bool = False) -> tuple[th.Tensor, ...]:
        """``critic(obs, actions)`` (``critic_target`` with ``target``); crl's policies call the layers directly."""
        if isinstance(self.policy, policies.SACPolicyMixin):
            return self.policy.q_values(obs, actions, target)
        q_values: tuple[th.Tensor, ...] = (self.critic_target if target else self.critic)(obs, actions)
        return q_values


with_sb3_signature(SAC, sb3.SAC)
