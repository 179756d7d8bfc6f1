"""What ``crl.DQN`` and ``crl.QRDQN`` share: the training loop of a Q-network regressed on a TD target."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar

import torch as th
from stable_baselines3.common.type_aliases import ReplayBufferSamples

from crl.algorithms.base import logged_mean
from crl.algorithms.off_policy import ContinualOffPolicyAlgorithm
from crl.hooks import GradientStep
from crl.policies.module_tree import listed_parameters


class ValueBased(ContinualOffPolicyAlgorithm):
    """The training loop of ``crl.DQN`` and ``crl.QRDQN``, mixed in before their SB3 / sb3-contrib class.

    Each gradient step regresses the network :attr:`trained_network` on a target from its target
    network, with the gradient-step hooks around the optimizer step; the gradient norm is clipped at
    ``max_grad_norm`` unless it is ``None``. A subclass defines the math: :meth:`_td_target` and
    :meth:`_td_loss`.
    """

    trained_network: ClassVar[str]
    """The network (and the name of its loss) that ``train()`` optimises, e.g. ``"q_net"``."""
    policy: Any
    replay_buffer: Any
    max_grad_norm: Any  # DQN: a float; QR-DQN: a float or None
    _n_updates: int
    _update_learning_rate: Callable[[Any], None]

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        hooks = self._hooks
        network = self.trained_network
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        hooks("on_train_start", self._algo)

        losses = []
        for gradient_step in range(gradient_steps):
            replay_data, step = self._begin_gradient_step(gradient_step, batch_size)
            targets = self._td_target(replay_data)

            td_loss = partial(self._recorded_td_loss, step, replay_data, targets)
            loss = td_loss()
            losses.append(loss.item())
            clip = None if self.max_grad_norm is None else (listed_parameters(self.policy), self.max_grad_norm)
            self._optimize(step, network, loss, self.policy.optimizer, clip=clip, recompute=td_loss)

        self._n_updates += gradient_steps

        logger = self._algo.logger
        logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        logger.record("train/loss", logged_mean(losses))
        hooks("on_train_end", self._algo)

    def training_losses(self, batch: ReplayBufferSamples) -> dict[str, tuple[th.Tensor, th.optim.Optimizer]]:
        """The loss ``train()`` minimises, on ``batch``, with its optimizer (for the Hessian metric).

        No hook fires and nothing is updated.
        """
        return {self.trained_network: (self._td_loss(batch, self._td_target(batch)), self.policy.optimizer)}

    def _recorded_td_loss(
        self, step: GradientStep | None, replay_data: ReplayBufferSamples, targets: th.Tensor
    ) -> th.Tensor:
        """:meth:`_td_loss`, the trained network's features recorded for the hooks that read them."""
        with self._hooks.recording(self.policy, step, [self.trained_network]):
            return self._td_loss(replay_data, targets)

    def _td_target(self, replay_data: ReplayBufferSamples) -> th.Tensor:
        """The regression target on ``replay_data``, from the target network, without gradient."""
        raise NotImplementedError

    def _td_loss(self, replay_data: ReplayBufferSamples, targets: th.Tensor) -> th.Tensor:
        """The loss of the trained network against ``targets`` (from :meth:`_td_target`)."""
        raise NotImplementedError
