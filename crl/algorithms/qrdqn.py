"""QR-DQN with interventions: sb3-contrib's QR-DQN whose ``train()`` calls the gradient-step hooks."""

from __future__ import annotations

from typing import ClassVar

import sb3_contrib
import torch as th
from sb3_contrib.common.utils import quantile_huber_loss
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import ReplayBufferSamples

from crl.algorithms.base import with_sb3_signature
from crl.algorithms.value_based import ValueBased
from crl.policies import qrdqn as policies
from crl.policies.multihead import MultiHeadQRDQNPolicy


class QRDQN(ValueBased, sb3_contrib.QRDQN):
    """Quantile Regression DQN (Dabney et al. 2018, "Distributional Reinforcement Learning with Quantile
    Regression") with plasticity interventions.

    Takes every argument of :class:`sb3_contrib.QRDQN`, plus ``interventions`` and ``metrics`` (see
    :class:`~crl.algorithms.base.ContinualAlgorithm`). With no interventions it trains exactly like
    sb3-contrib's QR-DQN: same random draws, same parameters. The trained network (and the name of its
    loss, e.g. in ``plasticity/quantile_net/...``) is ``quantile_net``; it outputs ``n_quantiles``
    quantiles of the return of each action, and acting is greedy on their mean. The policy option
    ``two_hot`` is refused: the head is already a distribution over returns. As in sb3-contrib, Adam's
    ``eps`` defaults to ``0.01 / batch_size`` (the paper's setting) unless ``policy_kwargs`` names an
    optimizer.

    :param policy: ``"MlpPolicy"``, ``"CnnPolicy"``, ``"MultiInputPolicy"`` or a subclass of
        :class:`crl.policies.qrdqn.QRDQNPolicyMixin`
    :param env: the environment to learn from (if registered in Gymnasium, can be its id)
    :param max_grad_norm: the gradient norm is clipped to this value; ``None`` (sb3-contrib's default): no clipping
    """

    algorithm_family: ClassVar[str] = "QRDQN"
    trained_network: ClassVar[str] = "quantile_net"
    loss_names: ClassVar[tuple[str, ...]] = ("quantile_net",)
    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": policies.QRDQNPolicy,
        "CnnPolicy": policies.CnnPolicy,
        "MultiInputPolicy": policies.MultiInputPolicy,
        "MultiHeadPolicy": MultiHeadQRDQNPolicy,
    }

    def _td_target(self, replay_data: ReplayBufferSamples) -> th.Tensor:
        """``T theta_j = r + gamma * (1 - done) * theta_j(s', a*)`` with ``a* = argmax_a' mean_j theta_j(s', a')``,
        from the target network, without gradient.

        :return: the target quantiles, shape ``(batch, n_quantiles)``
        """
        # For n-step replay the discount is gamma**n (when the episode did not end early)
        discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma
        with th.no_grad():
            next_quantiles = self._quantiles(replay_data.next_observations, target=True)
            # The greedy action maximises the Q-value, the mean of the quantiles (dimension 1)
            greedy_actions = next_quantiles.mean(dim=1, keepdim=True).argmax(dim=2, keepdim=True)
            next_quantiles = self._quantiles_of(next_quantiles, greedy_actions)
            return replay_data.rewards + (1 - replay_data.dones) * discounts * next_quantiles

    def _td_loss(self, replay_data: ReplayBufferSamples, target_quantiles: th.Tensor) -> th.Tensor:
        """Quantile Huber loss between ``theta_i(s, a)`` and the targets ``T theta_j``, summed over ``i``:

        ``sum_i mean_j |tau_i - 1{T theta_j - theta_i < 0}| * huber_1(T theta_j - theta_i)``, averaged over the
        batch, with the quantile midpoints ``tau_i = (2i + 1) / (2 n_quantiles)``.
        """
        quantiles = self._quantiles_of(self._quantiles(replay_data.observations), replay_data.actions[..., None])
        return quantile_huber_loss(quantiles, target_quantiles, sum_over_quantiles=True)

    def _quantiles(self, observations: th.Tensor, target: bool = False) -> th.Tensor:
        """``quantile_net(observations)`` (``quantile_net_target`` with ``target``), through crl's direct pass."""
        if isinstance(self.policy, policies.QRDQNPolicyMixin):
            return self.policy.quantiles(observations, target)
        quantiles: th.Tensor = (self.quantile_net_target if target else self.quantile_net)(observations)
        return quantiles

    def _quantiles_of(self, quantiles: th.Tensor, actions: th.Tensor) -> th.Tensor:
        """``theta(s, a)``: each row's quantiles of its action.

        :param quantiles: every action's quantiles, shape ``(batch, n_quantiles, n_actions)``
        :param actions: one action per row, shape ``(batch, 1, 1)``
        :return: shape ``(batch, n_quantiles)``
        """
        # The action repeated along the quantile dimension, as gather's index needs it
        index = actions.long().expand(-1, self.n_quantiles, 1)
        return quantiles.gather(dim=2, index=index).squeeze(dim=2)


with_sb3_signature(QRDQN, sb3_contrib.QRDQN)
