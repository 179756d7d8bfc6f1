"""SAC with interventions: SB3's SAC whose ``train()`` calls the gradient-step hooks."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import ClassVar

import torch as th
from stable_baselines3 import sac as sb3
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from torch.nn import functional as F

from crl.algorithms.base import logged_mean, with_sb3_signature
from crl.algorithms.off_policy import ContinualOffPolicyAlgorithm
from crl.algorithms.replay import sample_replay
from crl.optim import compute_gradients, optimizer_step
from crl.policies import sac as policies
from crl.policies.module_tree import listed_parameters
from crl.policies.sac import CategoricalContinuousCritic


class SAC(ContinualOffPolicyAlgorithm, sb3.SAC):
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
    }

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        hooks = self._hooks
        self.policy.set_training_mode(True)
        optimizers = [self.actor.optimizer, self.critic.optimizer]
        if self.ent_coef_optimizer is not None:
            optimizers += [self.ent_coef_optimizer]
        self._update_learning_rate(optimizers)
        critic_networks = [f"qf{index}" for index in range(self.critic.n_critics)]
        hooks("on_train_start", self)

        ent_coef_losses, ent_coefs = [], []
        actor_losses, critic_losses = [], []

        for gradient_step in range(gradient_steps):
            replay_data = sample_replay(self.replay_buffer, batch_size, self._vec_normalize_env)  # type: ignore[arg-type]
            replay_data = hooks.transform_batch(self, replay_data)
            step = hooks.begin_gradient_step(self, gradient_step, replay_data)

            # log_std may have changed since the last gradient step
            if self.use_sde:
                self.actor.reset_noise()

            # a~ ~ pi(.|s) with its log-probability, for the actor and temperature losses
            with hooks.recording(self.policy, step, ["actor"]):
                actions_pi, log_prob = self.actor.action_log_prob(replay_data.observations)
            log_prob = log_prob.reshape(-1, 1)

            ent_coef_loss = None
            if self.ent_coef_optimizer is not None and self.log_ent_coef is not None:
                # Detached, so that the other losses do not move log(alpha) (softlearning issue #60)
                ent_coef = th.exp(self.log_ent_coef.detach())
                assert isinstance(self.target_entropy, float)
                ent_coef_loss = -(self.log_ent_coef * (log_prob + self.target_entropy).detach()).mean()
                ent_coef_losses.append(ent_coef_loss.item())
            else:
                ent_coef = self.ent_coef_tensor

            ent_coefs.append(ent_coef.item())

            # Temperature (alpha) step
            if ent_coef_loss is not None and self.ent_coef_optimizer is not None:
                compute_gradients(self.ent_coef_optimizer, ent_coef_loss)
                optimizer_step(self.ent_coef_optimizer)

            target_q_values = self._td_target(replay_data, ent_coef)

            with hooks.recording(self.policy, step, critic_networks):
                critic_loss = self._critic_loss(replay_data, target_q_values)
            critic_losses.append(critic_loss.item())
            self._optimize(step, "critic", critic_loss, self.critic.optimizer)

            actor_loss = self._actor_loss(replay_data, actions_pi, log_prob, ent_coef)
            actor_losses.append(actor_loss.item())
            self._optimize(step, "actor", actor_loss, self.actor.optimizer)

            if gradient_step % self.target_update_interval == 0:
                # Listed once per module tree rather than walked twice per gradient step
                _polyak_update(listed_parameters(self.critic), listed_parameters(self.critic_target), self.tau)
                # Copy running stats, see SB3 GH issue #996
                _polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)

        self._n_updates += gradient_steps

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/ent_coef", logged_mean(ent_coefs))
        self.logger.record("train/actor_loss", logged_mean(actor_losses))
        self.logger.record("train/critic_loss", logged_mean(critic_losses))
        if len(ent_coef_losses) > 0:
            self.logger.record("train/ent_coef_loss", logged_mean(ent_coef_losses))
        hooks("on_train_end", self)

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
        with _left_out_of_graph(p for group in self.critic.optimizer.param_groups for p in group["params"]):
            q_values_pi = th.cat(self._q_values(replay_data.observations, actions_pi), dim=1)
        min_qf_pi, _ = th.min(q_values_pi, dim=1, keepdim=True)
        return (ent_coef * log_prob - min_qf_pi).mean()

    def _q_values(self, obs: th.Tensor, actions: th.Tensor, target: bool = False) -> tuple[th.Tensor, ...]:
        """``critic(obs, actions)`` (``critic_target`` with ``target``); crl's policies call the layers directly."""
        if isinstance(self.policy, policies.SACPolicyMixin):
            return self.policy.q_values(obs, actions, target)
        q_values: tuple[th.Tensor, ...] = (self.critic_target if target else self.critic)(obs, actions)
        return q_values

    def training_losses(self, batch: ReplayBufferSamples) -> dict[str, tuple[th.Tensor, th.optim.Optimizer]]:
        """The losses ``train()`` minimises, on ``batch``, with their optimizers (for the Hessian metric).

        Uses the current temperature; actions are sampled from torch's global generator (fork it to
        leave training's stream alone). No hook fires and nothing is updated.
        """
        learned = self.ent_coef_optimizer is not None and self.log_ent_coef is not None
        ent_coef = th.exp(self.log_ent_coef.detach()) if learned else self.ent_coef_tensor  # type: ignore[union-attr]
        critic_loss = self._critic_loss(batch, self._td_target(batch, ent_coef))
        actions_pi, log_prob = self.actor.action_log_prob(batch.observations)
        actor_loss = self._actor_loss(batch, actions_pi, log_prob.reshape(-1, 1), ent_coef)
        return {"critic": (critic_loss, self.critic.optimizer), "actor": (actor_loss, self.actor.optimizer)}


@contextmanager
def _left_out_of_graph(parameters: Iterable[th.Tensor]) -> Iterator[None]:
    """Operations inside the block record no gradient path to ``parameters`` (``requires_grad`` restored after)."""
    trained = [p for p in parameters if p.requires_grad]
    for p in trained:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trained:
            p.requires_grad_(True)


def _polyak_update(params: Iterable[th.Tensor], target_params: Iterable[th.Tensor], tau: float) -> None:
    """SB3's ``polyak_update`` (``target <- (1 - tau) target + tau param``), as two multi-tensor ops.

    Same arithmetic per tensor as SB3's loop of ``mul_`` and ``add``, without a Python round trip per tensor.
    """
    params, target_params = list(params), list(target_params)
    if len(params) != len(target_params):
        raise ValueError(f"_polyak_update: {len(params)} parameters for {len(target_params)} targets")
    if not params:
        return
    with th.no_grad():
        th._foreach_mul_(target_params, 1 - tau)
        th._foreach_add_(target_params, params, alpha=tau)


with_sb3_signature(SAC, sb3.SAC)
