"""CrossQ with interventions: sb3-contrib's CrossQ whose ``train()`` calls the gradient-step hooks."""

from __future__ import annotations

from functools import partial
from typing import Any, ClassVar

import sb3_contrib
import torch as th
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from torch.nn import functional as F

from crl.algorithms.base import logged_mean, with_sb3_signature
from crl.algorithms.soft_actor_critic import EntropyRegularized
from crl.hooks import GradientStep
from crl.policies import crossq as policies
from crl.policies.crossq import kept_batch_norm_state
from crl.policies.multihead import MultiHeadCrossQPolicy
from crl.random_draws import RepeatableDraws


class CrossQ(EntropyRegularized, sb3_contrib.CrossQ):
    """CrossQ (Bhatt et al. 2024, "CrossQ: Batch Normalization in Deep Reinforcement Learning for Greater
    Sample Efficiency and Simplicity") with plasticity interventions.

    Takes every argument of :class:`sb3_contrib.CrossQ`, plus ``interventions`` and ``metrics`` (see
    :class:`~crl.algorithms.base.ContinualAlgorithm`). With no interventions it trains exactly like
    sb3-contrib's CrossQ. Each gradient step optimises the loss ``"critic"`` and, every
    ``policy_delay`` updates, the temperature and the loss ``"actor"``; the gradient-step hooks fire
    for each. There is no target critic: the critics' ``BatchRenorm`` layers normalise one joint batch
    of ``(s, a)`` and ``(s', a')`` whose second half gives the TD target.

    Notation of the docstrings below: ``Q_i`` the ``N`` critics, ``pi`` the actor, ``alpha`` the
    temperature, ``B`` the batch size.
    """

    algorithm_family: ClassVar[str] = "CrossQ"
    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": policies.CrossQPolicy,
        "MultiHeadPolicy": MultiHeadCrossQPolicy,
    }

    replay_buffer: Any
    use_sde: bool
    policy_delay: int
    _n_updates: int

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        hooks = self._hooks
        critic_networks = self._begin_train()

        ent_coef_losses: list[float] = []
        ent_coefs: list[float] = []
        actor_losses: list[float] = []
        critic_losses: list[float] = []

        for gradient_step in range(gradient_steps):
            # Counted first: the policy delay reads the count of this update
            self._n_updates += 1
            replay_data, step = self._begin_gradient_step(gradient_step, batch_size)

            # log_std may have changed since the last gradient step
            if self.use_sde:
                self.actor.reset_noise()

            ent_coef = self._temperature()
            ent_coefs.append(ent_coef.item())

            next_actions, next_log_prob = self._next_actions(replay_data)
            with hooks.recording(self.policy, step, critic_networks):
                current_q_values, next_q_values = self._joint_q_values(replay_data, next_actions)
            target_q_values = self._td_target(replay_data, next_q_values, next_log_prob, ent_coef)
            critic_loss = self._critic_loss(current_q_values, target_q_values)
            critic_losses.append(critic_loss.item())
            critic_again = partial(
                self._critic_loss_again, step, critic_networks, replay_data, next_actions, target_q_values
            )
            self._optimize(step, "critic", critic_loss, self.critic.optimizer, recompute=critic_again)

            if self._n_updates % self.policy_delay == 0:
                draws = RepeatableDraws(self.device) if hooks.replaces_gradients else None
                with hooks.recording(self.policy, step, ["actor"]):
                    actions_pi, log_prob = self._policy_actions(replay_data)
                self._temperature_step(log_prob, ent_coef_losses)
                actor_loss = self._actor_loss(replay_data, actions_pi, log_prob, ent_coef)
                actor_losses.append(actor_loss.item())
                # Again at other actor parameters: the same noise, so a~ moves only with the parameters
                again = None if draws is None else partial(self._actor_loss_again, step, replay_data, ent_coef, draws)
                self._optimize(step, "actor", actor_loss, self.actor.optimizer, recompute=again)

        logger = self._algo.logger
        logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        logger.record("train/ent_coef", logged_mean(ent_coefs))
        if len(actor_losses) > 0:
            logger.record("train/actor_loss", logged_mean(actor_losses))
        logger.record("train/critic_loss", logged_mean(critic_losses))
        if len(ent_coef_losses) > 0:
            logger.record("train/ent_coef_loss", logged_mean(ent_coef_losses))
        hooks("on_train_end", self._algo)

    def training_losses(self, batch: ReplayBufferSamples) -> dict[str, tuple[th.Tensor, th.optim.Optimizer]]:
        """The losses ``train()`` minimises, on ``batch``, with their optimizers (for the Hessian metric).

        Computed as ``train()`` computes them, with its ``BatchRenorm`` modes (the critic loss from
        batch statistics of the joint batch, the actor's actions from batch statistics too), at the
        current temperature. The layers' modes and running statistics are restored afterwards, the
        networks' other modes are left as they are; actions are sampled from torch's global generator
        (fork it to leave training's stream alone). No hook fires and nothing is updated.
        """
        with kept_batch_norm_state(self.policy):
            ent_coef = self._temperature()
            next_actions, next_log_prob = self._next_actions(batch)
            current_q_values, next_q_values = self._joint_q_values(batch, next_actions)
            target_q_values = self._td_target(batch, next_q_values, next_log_prob, ent_coef)
            critic_loss = self._critic_loss(current_q_values, target_q_values)
            actions_pi, log_prob = self._policy_actions(batch)
            actor_loss = self._actor_loss(batch, actions_pi, log_prob, ent_coef)
        return {"critic": (critic_loss, self.critic.optimizer), "actor": (actor_loss, self.actor.optimizer)}

    def _critic_loss_again(
        self,
        step: GradientStep | None,
        networks: list[str],
        replay_data: ReplayBufferSamples,
        next_actions: th.Tensor,
        target_q_values: th.Tensor,
    ) -> th.Tensor:
        """The critic loss at the critics' current parameters against the first pass's target.

        The joint forward pass normalises with its own batch statistics, as training's does; the batch
        norms' running statistics, which that pass updated already, are left as it left them.
        """
        with kept_batch_norm_state(self.policy), self._hooks.recording(self.policy, step, networks):
            current_q_values, _ = self._joint_q_values(replay_data, next_actions)
        return self._critic_loss(current_q_values, target_q_values)

    def _actor_loss_again(
        self, step: GradientStep | None, replay_data: ReplayBufferSamples, ent_coef: th.Tensor, draws: RepeatableDraws
    ) -> th.Tensor:
        """The actor loss at the actor's current parameters, ``a~`` sampled with the noise ``draws`` repeats
        (the batch norms' running statistics left as the first pass left them)."""
        with draws.again(), kept_batch_norm_state(self.policy), self._hooks.recording(self.policy, step, ["actor"]):
            actions_pi, log_prob = self._policy_actions(replay_data)
        return self._actor_loss(replay_data, actions_pi, log_prob, ent_coef)

    def _next_actions(self, replay_data: ReplayBufferSamples) -> tuple[th.Tensor, th.Tensor]:
        """``a' ~ pi(.|s')`` and ``log pi(a'|s')``, without gradient, the actor's batch norms on running statistics."""
        with th.no_grad():
            self.actor.set_bn_training_mode(False)
            next_actions, next_log_prob = self.actor.action_log_prob(replay_data.next_observations)
        return next_actions, next_log_prob

    def _joint_q_values(self, replay_data: ReplayBufferSamples, next_actions: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """``Q_i`` on the joint batch ``[(s, a); (s', a')]`` of ``2B`` rows, in one forward pass.

        The critics' batch norms normalise with (and update their running statistics from) the
        statistics of the mixture of both halves: normalising ``(s', a')`` by statistics of ``(s, a)``
        alone is what makes batch norm fail in SAC (Bhatt et al. 2024, section 4).

        :return: ``Q_i(s, a)`` shaped ``(N, B, 1)`` (with gradient), and ``Q_i(s', a')`` shaped ``(B, N)``
        """
        all_obs = th.cat([replay_data.observations, replay_data.next_observations], dim=0)
        all_actions = th.cat([replay_data.actions, next_actions], dim=0)
        self.critic.set_bn_training_mode(True)
        all_q_values = th.cat(self._q_values(all_obs, all_actions), dim=1)
        self.critic.set_bn_training_mode(False)
        # A batch transformed by a hook may differ from the batch_size asked for: split at its own size
        current_q_values, next_q_values = th.split(all_q_values, replay_data.rewards.shape[0], dim=0)
        return current_q_values.T[..., None], next_q_values

    def _td_target(
        self, replay_data: ReplayBufferSamples, next_q_values: th.Tensor, next_log_prob: th.Tensor, ent_coef: th.Tensor
    ) -> th.Tensor:
        """``y = r + gamma (1 - done) (min_i Q_i(s', a') - alpha log pi(a'|s'))``, without gradient.

        ``Q_i(s', a')`` comes from the critics themselves (their joint forward pass), not from a target copy.
        """
        # For n-step replay the discount is gamma**n (when the episode did not end early)
        discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma
        with th.no_grad():
            min_next_q_values, _ = th.min(next_q_values.detach(), dim=1, keepdim=True)
            min_next_q_values = min_next_q_values - ent_coef * next_log_prob.reshape(-1, 1)
            return replay_data.rewards + (1 - replay_data.dones) * discounts * min_next_q_values

    def _critic_loss(self, current_q_values: th.Tensor, target_q_values: th.Tensor) -> th.Tensor:
        """``J_Q = 1/2 sum_i mean_B (Q_i(s, a) - y)^2``."""
        critic_loss = 0.5 * sum(F.mse_loss(current_q, target_q_values.detach()) for current_q in current_q_values)
        assert isinstance(critic_loss, th.Tensor)  # for type checker
        return critic_loss

    def _policy_actions(self, replay_data: ReplayBufferSamples) -> tuple[th.Tensor, th.Tensor]:
        """``a~ ~ pi(.|s)`` and ``log pi(a~|s)`` shaped ``(B, 1)``, the actor's batch norms on (and updating)
        the batch statistics of ``s``."""
        self.actor.set_bn_training_mode(True)
        actions_pi, log_prob = self.actor.action_log_prob(replay_data.observations)
        log_prob = log_prob.reshape(-1, 1)
        self.actor.set_bn_training_mode(False)
        return actions_pi, log_prob

    def _actor_loss(
        self, replay_data: ReplayBufferSamples, actions_pi: th.Tensor, log_prob: th.Tensor, ent_coef: th.Tensor
    ) -> th.Tensor:
        """``J_pi = mean_B (alpha log pi(a~|s) - min_i Q_i(s, a~))``, the critics' batch norms on running statistics.

        Only the actor learns from this loss, so the critic's trained parameters are left out of its
        graph: backward computes ``dQ/da~`` through the critic but not the critic's own gradients,
        which sb3-contrib computes and its next critic step discards (``zero_grad``). Same actor
        update, less work.
        """
        with self._critic_left_out_of_graph():
            self.critic.set_bn_training_mode(False)
            q_values_pi = th.cat(self._q_values(replay_data.observations, actions_pi), dim=1)
        min_qf_pi, _ = th.min(q_values_pi, dim=1, keepdim=True)
        return (ent_coef * log_prob.reshape(-1, 1) - min_qf_pi).mean()

    def _q_values(self, obs: th.Tensor, actions: th.Tensor) -> tuple[th.Tensor, ...]:
        """``critic(obs, actions)``: each Q-network's output, through crl's direct pass when exact."""
        q_values = None
        if isinstance(self.policy, policies.CrossQPolicyMixin):
            q_values = self.policy.critic_outputs(obs, actions)
        if q_values is None:
            q_values = self.critic(obs, actions)
        return q_values


with_sb3_signature(CrossQ, sb3_contrib.CrossQ)
