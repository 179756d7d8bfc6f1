"""PPO with interventions: SB3's PPO whose ``train()`` calls the gradient-step hooks."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import ClassVar, NamedTuple

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import ppo as sb3
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import RolloutBufferSamples
from stable_baselines3.common.utils import explained_variance
from torch.nn import functional as F

from crl.algorithms.base import ContinualAlgorithm, with_sb3_signature
from crl.hooks import GradientStep
from crl.policies import actor_critic as policies
from crl.policies.module_tree import listed_parameters
from crl.policies.multihead import MultiHeadActorCriticPolicy


class SurrogateTerms(NamedTuple):
    """PPO's loss on a minibatch and what ``train()`` logs of it."""

    loss: th.Tensor
    policy_loss: th.Tensor
    value_loss: th.Tensor
    entropy_loss: th.Tensor
    ratio: th.Tensor
    log_prob: th.Tensor


def total_loss(surrogate: Callable[[], SurrogateTerms]) -> th.Tensor:
    """The loss of the terms ``surrogate()`` computes."""
    return surrogate().loss


class PPO(ContinualAlgorithm, sb3.PPO):
    """Proximal Policy Optimization (Schulman et al. 2017) with plasticity interventions.

    Takes every argument of :class:`stable_baselines3.PPO`, plus ``interventions`` and ``metrics``
    (see :class:`~crl.algorithms.base.ContinualAlgorithm`). With no interventions it trains exactly
    like SB3's PPO. The gradient-step hooks see one minibatch per step and the joint loss
    ``"policy"`` (clipped surrogate + entropy + value terms, one optimizer). With the policy option
    ``two_hot`` the value term is the cross-entropy of the value logits against the two-hot encoding
    of the return (:mod:`crl.policies.two_hot`); value clipping (``clip_range_vf``) is then refused.
    """

    algorithm_family: ClassVar[str] = "PPO"
    loss_names: ClassVar[tuple[str, ...]] = ("policy",)
    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": policies.ActorCriticPolicy,
        "CnnPolicy": policies.ActorCriticCnnPolicy,
        "MultiInputPolicy": policies.MultiInputActorCriticPolicy,
        "MultiHeadPolicy": MultiHeadActorCriticPolicy,
    }

    def _setup_model(self) -> None:
        if self.clip_range_vf is not None and self.policy_kwargs.get("two_hot") is not None:
            raise ValueError(
                f"clip_range_vf={self.clip_range_vf!r} clips a scalar value estimate and cannot be used with the "
                "policy option two_hot; use clip_range_vf=None"
            )
        super()._setup_model()

    def train(self) -> None:
        hooks = self._hooks
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)  # type: ignore[operator]
        clip_range_vf = None
        if self.clip_range_vf is not None:
            clip_range_vf = self.clip_range_vf(self._current_progress_remaining)  # type: ignore[operator]
        hooks("on_train_start", self)

        entropy_losses = []
        pg_losses, value_losses = [], []
        clip_fractions = []
        gradient_step = 0

        continue_training = True
        for epoch in range(self.n_epochs):
            approx_kl_divs = []
            for rollout_data in self.rollout_buffer.get(self.batch_size):
                rollout_data = hooks.transform_batch(self, rollout_data)
                step = hooks.begin_gradient_step(self, gradient_step, rollout_data)
                gradient_step += 1
                actions = rollout_data.actions
                if isinstance(self.action_space, spaces.Discrete):
                    actions = rollout_data.actions.long().flatten()

                surrogate = partial(self._surrogate_loss, step, rollout_data, actions, clip_range, clip_range_vf)
                terms = surrogate()
                pg_losses.append(terms.policy_loss.item())
                clip_fraction = th.mean((th.abs(terms.ratio - 1) > clip_range).float()).item()
                clip_fractions.append(clip_fraction)
                value_losses.append(terms.value_loss.item())
                entropy_losses.append(terms.entropy_loss.item())
                loss = terms.loss

                # Approximate reverse KL for early stopping (Schulman's k3 estimator)
                with th.no_grad():
                    log_ratio = terms.log_prob - rollout_data.old_log_prob
                    approx_kl_div = th.mean((th.exp(log_ratio) - 1) - log_ratio).cpu().numpy()
                    approx_kl_divs.append(approx_kl_div)

                if self.target_kl is not None and approx_kl_div > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: {approx_kl_div:.2f}")
                    break

                clip = (listed_parameters(self.policy), self.max_grad_norm)
                again = partial(total_loss, surrogate)
                self._optimize(step, "policy", loss, self.policy.optimizer, clip=clip, recompute=again)

            self._n_updates += 1
            if not continue_training:
                break

        explained_var = explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())

        self.logger.record("train/entropy_loss", np.mean(entropy_losses))
        self.logger.record("train/policy_gradient_loss", np.mean(pg_losses))
        self.logger.record("train/value_loss", np.mean(value_losses))
        self.logger.record("train/approx_kl", np.mean(approx_kl_divs))
        self.logger.record("train/clip_fraction", np.mean(clip_fractions))
        self.logger.record("train/loss", loss.item())
        self.logger.record("train/explained_variance", explained_var)
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        if self.clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)
        hooks("on_train_end", self)

    def _surrogate_loss(
        self,
        step: GradientStep | None,
        batch: RolloutBufferSamples,
        actions: th.Tensor,
        clip_range: float,
        clip_range_vf: float | None,
    ) -> SurrogateTerms:
        """PPO's loss on a minibatch: ``L = L_clip + c_ent L_ent + c_vf L_vf``, with its terms.

        The actor's and critic's features are recorded for the hooks that read them.
        """
        with self._hooks.recording(self.policy, step, ["actor", "critic"]):
            values, log_prob, entropy = self.policy.evaluate_actions(batch.observations, actions)
        advantages = batch.advantages
        # Normalising a minibatch of one is meaningless (SB3 GH issue #325)
        if self.normalize_advantage and len(advantages) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

        # r = pi(a|s) / pi_old(a|s);  L_clip = -E[min(r A, clip(r, 1-eps, 1+eps) A)]
        ratio = th.exp(log_prob - batch.old_log_prob)
        policy_loss_1 = advantages * ratio
        policy_loss_2 = advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)
        policy_loss = -th.min(policy_loss_1, policy_loss_2).mean()

        value_loss = self._value_loss(values, batch, clip_range_vf)

        if entropy is None:
            # No analytical entropy: estimate it from the log-probabilities
            entropy_loss = -th.mean(-log_prob)
        else:
            entropy_loss = -th.mean(entropy)

        loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
        return SurrogateTerms(loss, policy_loss, value_loss, entropy_loss, ratio, log_prob)

    def _value_loss(self, values: th.Tensor, batch: RolloutBufferSamples, clip_range_vf: float | None) -> th.Tensor:
        """``(R - V(s))^2`` averaged, ``V``'s change clipped to ``clip_range_vf`` if given; with a two-hot
        head (``values`` are then logits) the cross-entropy against ``twohot(R)``."""
        if self.two_hot is not None:
            return self.two_hot.loss(values, batch.returns)
        values = values.flatten()
        if clip_range_vf is None:
            values_pred = values
        else:
            # Clip the change of the value estimate (depends on the reward scale)
            values_pred = batch.old_values + th.clamp(values - batch.old_values, -clip_range_vf, clip_range_vf)
        return F.mse_loss(batch.returns, values_pred)

    def training_losses(self, batch: RolloutBufferSamples) -> dict[str, tuple[th.Tensor, th.optim.Optimizer]]:
        """The loss ``train()`` minimises, on ``batch``, at the start of an update (for the Hessian metric).

        The old policy is taken to be the current one (ratio ``r = 1``, its value carrying the
        gradient), where the clipped surrogate equals ``-A r`` and value clipping is inactive, so the
        loss and its first two derivatives are those of ``train()``'s first minibatch. No hook fires
        and nothing is updated.
        """
        actions = batch.actions.long().flatten() if isinstance(self.action_space, spaces.Discrete) else batch.actions
        values, log_prob, entropy = self.policy.evaluate_actions(batch.observations, actions)
        advantages = batch.advantages
        if self.normalize_advantage and len(advantages) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        ratio = th.exp(log_prob - log_prob.detach())
        policy_loss = -(advantages * ratio).mean()
        value_loss = self._value_loss(values, batch, clip_range_vf=None)
        entropy_loss = -th.mean(-log_prob) if entropy is None else -th.mean(entropy)
        loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
        return {"policy": (loss, self.policy.optimizer)}


with_sb3_signature(PPO, sb3.PPO)
