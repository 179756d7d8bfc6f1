"""What ``crl.SAC`` and ``crl.TQC`` share (the training loop, the target critic's update), and ``crl.CrossQ`` too.

All follow Haarnoja et al. 2018's soft actor-critic: a temperature ``alpha`` tuned towards a target
entropy and an actor loss through the critics (:class:`EntropyRegularized`, shared by the three).
SAC's and TQC's critics differ (one value per Q-network, quantiles) but are trained the same way,
with Polyak-averaged target critics: each writes its TD target, critic loss and actor loss, and
:class:`SoftActorCritic` runs them in SB3's order with crl's hooks. CrossQ, without target critics
and with a joint forward pass, keeps its own loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, ClassVar

import torch as th
from stable_baselines3.common.type_aliases import ReplayBufferSamples

from crl.algorithms.base import logged_mean
from crl.algorithms.off_policy import ContinualOffPolicyAlgorithm
from crl.hooks import GradientStep
from crl.optim import compute_gradients, optimizer_step
from crl.policies.module_tree import listed_parameters
from crl.random_draws import RepeatableDraws


class EntropyRegularized(ContinualOffPolicyAlgorithm):
    """The temperature of the soft actor-critics (``crl.SAC``, ``crl.TQC``, ``crl.CrossQ``), and their actor's graph.

    Mixed in before the SB3 / sb3-contrib class, which provides the attributes.
    """

    loss_names: ClassVar[tuple[str, ...]] = ("critic", "actor")
    policy: Any
    actor: Any
    critic: Any
    log_ent_coef: th.Tensor | None
    ent_coef_optimizer: th.optim.Adam | None
    ent_coef_tensor: th.Tensor
    target_entropy: Any
    _update_learning_rate: Callable[[Any], None]

    def _begin_train(self) -> list[str]:
        """SB3's start of a soft actor-critic's ``train()``, then the hook ``on_train_start``.

        Training mode on, and the learning rates of the actor, the critic and the temperature set from
        their schedule.

        :return: the names of the critic's networks (``qf0``, ``qf1``, ...), which the loop records
        """
        self.policy.set_training_mode(True)
        optimizers = [self.actor.optimizer, self.critic.optimizer]
        if self.ent_coef_optimizer is not None:
            optimizers += [self.ent_coef_optimizer]
        self._update_learning_rate(optimizers)
        self._hooks("on_train_start", self._algo)
        return [f"qf{index}" for index in range(self.critic.n_critics)]

    def _temperature(self) -> th.Tensor:
        """``alpha``: ``exp(log alpha)`` detached when it is learned (the other losses must not move it), else fixed."""
        if self.ent_coef_optimizer is not None and self.log_ent_coef is not None:
            return th.exp(self.log_ent_coef.detach())
        return self.ent_coef_tensor

    def _temperature_step(self, log_prob: th.Tensor, ent_coef_losses: list[float]) -> None:
        """When ``alpha`` is learned, one step on ``J(alpha) = -log alpha (log pi(a~|s) + H)``.

        ``H`` is the target entropy. The loss is appended to the list ``train()`` logs.
        """
        if self.ent_coef_optimizer is None or self.log_ent_coef is None:
            return
        # (log_prob + H) detached: only log(alpha) learns from this loss (softlearning issue #60).
        # sb3-contrib keeps an automatic target entropy as a NumPy float32, SB3 as a float.
        ent_coef_loss = -(self.log_ent_coef * (log_prob + self.target_entropy).detach()).mean()
        ent_coef_losses.append(ent_coef_loss.item())
        compute_gradients(self.ent_coef_optimizer, ent_coef_loss)
        optimizer_step(self.ent_coef_optimizer)

    def _critic_left_out_of_graph(self) -> Any:
        """A block whose operations record no gradient path to the critic's trained parameters.

        The actor loss runs the critic on the actor's actions: backward then computes ``dQ/da~``
        through the critic but not the critic's own gradients, which SB3 computes and its next critic
        step discards (``zero_grad``). Same actor update, less work.
        """
        return left_out_of_graph(p for group in self.critic.optimizer.param_groups for p in group["params"])


class SoftActorCritic(EntropyRegularized):
    """The training loop of ``crl.SAC`` and ``crl.TQC``, mixed in before their SB3 / sb3-contrib class.

    Each gradient step optimises the temperature, the loss ``"critic"`` and then ``"actor"``; the
    gradient-step hooks fire for each. A subclass defines its critic's math: :meth:`_td_target`,
    :meth:`_critic_loss` and :meth:`_actor_loss`.
    """

    critic_target: Any
    replay_buffer: Any
    device: th.device
    use_sde: bool
    target_update_interval: int
    _n_updates: int
    tau: float
    batch_norm_stats: list[th.Tensor]
    batch_norm_stats_target: list[th.Tensor]

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        hooks = self._hooks
        critic_networks = self._begin_train()

        ent_coef_losses: list[float] = []
        ent_coefs: list[float] = []
        actor_losses: list[float] = []
        critic_losses: list[float] = []

        for gradient_step in range(gradient_steps):
            replay_data, step = self._begin_gradient_step(gradient_step, batch_size)

            # log_std may have changed since the last gradient step
            if self.use_sde:
                self.actor.reset_noise()

            # a~ ~ pi(.|s) with its log-probability, for the actor and temperature losses
            draws = RepeatableDraws(self.device) if hooks.replaces_gradients else None
            actions_pi, log_prob = self._recorded_policy_actions(step, replay_data)

            # alpha before its own step, as SB3 uses it for this gradient step
            ent_coef = self._temperature()
            ent_coefs.append(ent_coef.item())
            self._temperature_step(log_prob, ent_coef_losses)

            target_values = self._td_target(replay_data, ent_coef)

            critic_loss_fn = partial(self._recorded_critic_loss, step, critic_networks, replay_data, target_values)
            critic_loss = critic_loss_fn()
            critic_losses.append(critic_loss.item())
            self._optimize(step, "critic", critic_loss, self.critic.optimizer, recompute=critic_loss_fn)

            actor_loss = self._actor_loss(replay_data, actions_pi, log_prob, ent_coef)
            actor_losses.append(actor_loss.item())
            # Again at other actor parameters: the same noise, so a~ moves only with the parameters
            again = None if draws is None else partial(self._actor_loss_again, step, replay_data, ent_coef, draws)
            self._optimize(step, "actor", actor_loss, self.actor.optimizer, recompute=again)

            if gradient_step % self.target_update_interval == 0:
                self._update_target_critic()

        self._n_updates += gradient_steps
        logger = self._algo.logger

        logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        logger.record("train/ent_coef", logged_mean(ent_coefs))
        logger.record("train/actor_loss", logged_mean(actor_losses))
        logger.record("train/critic_loss", logged_mean(critic_losses))
        if len(ent_coef_losses) > 0:
            logger.record("train/ent_coef_loss", logged_mean(ent_coef_losses))
        hooks("on_train_end", self._algo)

    def training_losses(self, batch: ReplayBufferSamples) -> dict[str, tuple[th.Tensor, th.optim.Optimizer]]:
        """The losses ``train()`` minimises, on ``batch``, with their optimizers (for the Hessian metric).

        Uses the current temperature; actions are sampled from torch's global generator (fork it to
        leave training's stream alone). No hook fires and nothing is updated.
        """
        ent_coef = self._temperature()
        critic_loss = self._critic_loss(batch, self._td_target(batch, ent_coef))
        actions_pi, log_prob = self.actor.action_log_prob(batch.observations)
        actor_loss = self._actor_loss(batch, actions_pi, log_prob.reshape(-1, 1), ent_coef)
        return {"critic": (critic_loss, self.critic.optimizer), "actor": (actor_loss, self.actor.optimizer)}

    def _recorded_policy_actions(
        self, step: GradientStep | None, replay_data: ReplayBufferSamples
    ) -> tuple[th.Tensor, th.Tensor]:
        """``a~ ~ pi(.|s)`` and ``log pi(a~|s)`` shaped ``(B, 1)``, the actor's features recorded for the hooks."""
        with self._hooks.recording(self.policy, step, ["actor"]):
            actions_pi, log_prob = self.actor.action_log_prob(replay_data.observations)
        return actions_pi, log_prob.reshape(-1, 1)

    def _actor_loss_again(
        self, step: GradientStep | None, replay_data: ReplayBufferSamples, ent_coef: th.Tensor, draws: RepeatableDraws
    ) -> th.Tensor:
        """The actor loss at the actor's current parameters, ``a~`` sampled with the noise ``draws`` repeats."""
        with draws.again():
            actions_pi, log_prob = self._recorded_policy_actions(step, replay_data)
        return self._actor_loss(replay_data, actions_pi, log_prob, ent_coef)

    def _recorded_critic_loss(
        self, step: GradientStep | None, networks: list[str], replay_data: ReplayBufferSamples, target_values: th.Tensor
    ) -> th.Tensor:
        """:meth:`_critic_loss`, the features of the critic's ``networks`` recorded for the hooks."""
        with self._hooks.recording(self.policy, step, networks):
            return self._critic_loss(replay_data, target_values)

    def _td_target(self, replay_data: ReplayBufferSamples, ent_coef: th.Tensor) -> th.Tensor:
        """The critic's regression target on ``replay_data``, without gradient."""
        raise NotImplementedError

    def _critic_loss(self, replay_data: ReplayBufferSamples, target_values: th.Tensor) -> th.Tensor:
        """The critic's loss against ``target_values`` (from :meth:`_td_target`)."""
        raise NotImplementedError

    def _actor_loss(
        self, replay_data: ReplayBufferSamples, actions_pi: th.Tensor, log_prob: th.Tensor, ent_coef: th.Tensor
    ) -> th.Tensor:
        """The actor's loss for its actions ``actions_pi`` and their log-probabilities ``log_prob``."""
        raise NotImplementedError

    def _update_target_critic(self) -> None:
        """``theta_target <- (1 - tau) theta_target + tau theta``, and the batch norms' running statistics copied."""
        # Listed once per module tree rather than walked twice per gradient step
        polyak_update(listed_parameters(self.critic), listed_parameters(self.critic_target), self.tau)
        # Copy running stats, see SB3 GH issue #996
        polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)


@contextmanager
def left_out_of_graph(parameters: Iterable[th.Tensor]) -> Iterator[None]:
    """Operations inside the block record no gradient path to ``parameters`` (``requires_grad`` restored after)."""
    trained = [p for p in parameters if p.requires_grad]
    for p in trained:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trained:
            p.requires_grad_(True)


def polyak_update(params: Iterable[th.Tensor], target_params: Iterable[th.Tensor], tau: float) -> None:
    """SB3's ``polyak_update`` (``target <- (1 - tau) target + tau param``), as two multi-tensor ops.

    Same arithmetic per tensor as SB3's loop of ``mul_`` and ``add``, without a Python round trip per tensor.
    """
    params, target_params = list(params), list(target_params)
    if len(params) != len(target_params):
        raise ValueError(f"polyak_update: {len(params)} parameters for {len(target_params)} targets")
    if not params:
        return
    with th.no_grad():
        th._foreach_mul_(target_params, 1 - tau)
        th._foreach_add_(target_params, params, alpha=tau)
