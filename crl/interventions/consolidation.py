"""Consolidation: keeping the parameters near those of the tasks already learned (L2, EWC, MAS).

Continual World's regularisation baselines (Wolczyk et al. 2021), the methods its CW20 reference
figures compare (SPEC.md §4). At the end of each task the parameters ``theta*`` are remembered and
each parameter gets an importance ``Omega`` for that task, added to those of the earlier tasks; on
the next tasks every loss gets

    penalty = coef * sum_theta Omega (theta - theta*)^2

over the parameters its optimizer updates. The methods differ in ``Omega``:
:class:`L2Previous` (1 for every parameter), :class:`EWC` (the Fisher information of the outputs,
Kirkpatrick et al. 2017) and :class:`MAS` (the sensitivity of the outputs' squared norm, Aljundi et
al. 2018); see :mod:`crl.interventions.importance` for the outputs of each algorithm.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch as th
from gymnasium import spaces
from pydantic import Field, PrivateAttr

from crl.interventions.base import InterventionError
from crl.interventions.importance import (
    OutputFunction,
    Reached,
    check_protected_networks,
    fisher_sums,
    mas_sums,
    regularised_parameters,
)
from crl.interventions.penalty import PenaltyTerms
from crl.interventions.regularizers import AnchoredPenalty
from crl.metrics.probe_batch import draw_probe_batch

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

Batch = tuple[Any, th.Tensor]
"""Observations (a tensor or a dict of tensors) and actions."""


class Consolidation(AnchoredPenalty):
    """Regularise the parameters toward their values at the end of the last task, weighted by importance.

    At the end of every task (``end_task()``, which :func:`crl.learn_continual` calls), ``theta*``
    becomes the current parameters and the task's importance is added to ``Omega``; from then on
    every loss gets ``coef * sum Omega (theta - theta*)^2`` (no ``1/2``, as Continual World's code).
    Before the first task ends there is no penalty. Regularised are the parameters of the network that
    acts (SAC's, TQC's and CrossQ's actor, PPO's action distribution, DQN's Q-network, QR-DQN's
    quantile network) and, with ``critic=True``, of the critics, except the task heads of a
    multi-head policy (each task's head is its own, as Continual World's "common variables"). The
    importance is measured on ``importance_batches`` batches of ``importance_batch_size`` samples of
    the task's data (the replay buffer, or PPO's last rollout), with the networks in evaluation mode;
    each batch's samples are distinct (Continual World draws with replacement). Logs
    ``interventions/<name>/penalty`` (the mean added term of the last ``train()``) and, at a task's
    end, ``interventions/<name>/importance`` (the mean of that task's ``Omega``).

    :param coef: the regularisation strength (Continual World's ``cl_reg_coef``)
    :param critic: also regularise the critics (Continual World's ``regularize_critic``)
    :param importance_batches: batches the importance is averaged over (Continual World: 10)
    :param importance_batch_size: samples per batch (Continual World: 256)
    """

    coef: float = Field(default=1.0, gt=0.0)
    critic: bool = False
    importance_batches: int = Field(default=10, gt=0)
    importance_batch_size: int = Field(default=256, gt=0)

    _anchor: dict[str, th.Tensor] | None = PrivateAttr(default=None)
    _importance: dict[str, th.Tensor] | None = PrivateAttr(default=None)

    def check(self, algo: BaseAlgorithm) -> None:
        super().check(algo)
        check_protected_networks(self.name, algo, self.critic)

    def task_importance(self, algo: BaseAlgorithm, reached: Reached, batches: list[Batch]) -> dict[str, th.Tensor]:
        """One task's ``Omega`` of the regularised parameters (those ``reached`` lists), measured on ``batches``."""
        raise NotImplementedError

    def on_task_end(self, algo: BaseAlgorithm, task_id: int) -> None:
        policy = algo.policy
        was_training = policy.training
        policy.set_training_mode(False)  # batch norm (CrossQ) from its running statistics, per sample
        try:
            batches = self._draw_batches(algo)
            parameters, reached = self._regularised_parameters(algo, batches[0])
            importance = self.task_importance(algo, reached, batches)
        finally:
            policy.set_training_mode(was_training)
        earlier = self._importance or {}
        self._importance = {
            name: importance[name] + earlier.get(name, th.zeros_like(parameter))
            for name, parameter in parameters.items()
        }
        self._anchor = {name: parameter.detach().clone() for name, parameter in parameters.items()}
        self._terms.clear()
        values = th.cat([importance[name].flatten() for name in parameters]) if parameters else th.zeros(1)
        self.record(algo, "importance", float(values.mean()))

    def penalty_coef(self) -> float:
        return self.coef

    def optimizer_terms(self, algo: BaseAlgorithm, optimizer: th.optim.Optimizer) -> PenaltyTerms:
        """``theta``, ``theta*`` and ``Omega`` of the regularised parameters that ``optimizer`` updates
        (none before the first task ends)."""
        if self._importance is None or self._anchor is None:
            return [], [], None
        updated = {id(parameter) for group in optimizer.param_groups for parameter in group["params"]}
        names = [
            (name, parameter)
            for name, parameter in algo.policy.named_parameters()
            if name in self._importance and id(parameter) in updated and parameter.requires_grad
        ]
        return (
            [parameter for _, parameter in names],
            [self._anchor[name].to(parameter.device) for name, parameter in names],
            [self._importance[name].to(parameter.device) for name, parameter in names],
        )

    def _draw_batches(self, algo: BaseAlgorithm) -> list[Batch]:
        batches = []
        for _ in range(self.importance_batches):
            # Seeded from numpy's global generator: the importance is part of training, like its minibatches.
            samples = draw_probe_batch(algo, self.importance_batch_size, seed=int(np.random.randint(2**31)))
            batches.append((samples.observations, samples.actions))
        return batches

    def _regularised_parameters(self, algo: BaseAlgorithm, batch: Batch) -> tuple[dict[str, th.Tensor], Reached]:
        """Name -> parameter of every regularised parameter, and which outputs reach which."""
        return regularised_parameters(algo, self.critic, *batch)


class L2Previous(Consolidation):
    """Continual World's L2: ``Omega = 1`` for every regularised parameter, added at each task's end
    (so after ``k`` tasks it is ``k``, as in Continual World's code). See :class:`Consolidation`.

    :param coef: the regularisation strength (1e5 in Continual World's CW20 runs)
    """

    name = "l2_previous"

    coef: float = Field(default=1e5, gt=0.0)

    def task_importance(self, algo: BaseAlgorithm, reached: Reached, batches: list[Batch]) -> dict[str, th.Tensor]:
        parameters = {name: parameter for _, named in reached for name, parameter in named.items()}
        return {name: th.ones_like(parameter, requires_grad=False) for name, parameter in parameters.items()}


class _SampledImportance(Consolidation):
    """Importance averaged over the samples of the batches, per regularised output function (of the
    Gaussian and categorical distributions :mod:`crl.interventions.importance` defines)."""

    def check(self, algo: BaseAlgorithm) -> None:
        super().check(algo)
        _check_distribution(self.name, algo)

    def task_importance(self, algo: BaseAlgorithm, reached: Reached, batches: list[Batch]) -> dict[str, th.Tensor]:
        policy = algo.policy
        totals = {name: th.zeros_like(p, requires_grad=False) for _, named in reached for name, p in named.items()}
        for outputs, parameters in reached:
            for observations, actions in batches:
                for name, value in self.importance_sums(policy, outputs, parameters, observations, actions).items():
                    totals[name] += value
        n_samples = sum(len(actions) for _, actions in batches)
        return {name: total / n_samples for name, total in totals.items()}

    def importance_sums(
        self, policy: th.nn.Module, outputs: OutputFunction, parameters: Mapping[str, th.Tensor], observations: Any,
        actions: th.Tensor,
    ) -> dict[str, th.Tensor]:  # fmt: skip
        raise NotImplementedError


class EWC(_SampledImportance):
    """Elastic weight consolidation (Kirkpatrick et al. 2017) as Continual World computes it: ``Omega``
    is the diagonal of the Fisher information of the outputs, per sample and then averaged.

    - Gaussian actors: ``sum_j ((d mu_j)^2 + 2 (d sigma_j)^2) / (sigma_j^2 + 1e-6)``, with SAC's (TQC's,
      CrossQ's) mean after ``tanh`` (Continual World differentiates the squashed mean), clipped from
      below at ``1e-5`` per sample.
    - Categorical actors (PPO on discrete actions): ``sum_a p_a (d log p_a)^2``, clipped the same way.
    - Values (critics, DQN's Q-value and QR-DQN's quantiles of the sample's action):
      ``sum_k (d v_k)^2``, each output a unit-variance Gaussian.

    See :class:`Consolidation`; gSDE is refused (its noise is not the Gaussian above).

    :param coef: the regularisation strength (1e4 in Continual World's CW20 runs)
    """

    name = "ewc"

    coef: float = Field(default=1e4, gt=0.0)

    def importance_sums(
        self, policy: th.nn.Module, outputs: OutputFunction, parameters: Mapping[str, th.Tensor], observations: Any,
        actions: th.Tensor,
    ) -> dict[str, th.Tensor]:  # fmt: skip
        return fisher_sums(policy, outputs, parameters, observations, actions)


class MAS(_SampledImportance):
    """Memory-aware synapses (Aljundi et al. 2018) as Continual World computes it: ``Omega`` is
    ``|d ||y||^2 / d theta|`` per sample, averaged, ``y`` the outputs: a Gaussian actor's
    ``tanh``-squashed mean (SAC's; PPO's unsquashed) and log-std, a categorical actor's
    log-probabilities, the values of critics and Q-networks (at the sample's action).

    See :class:`Consolidation`; gSDE is refused.

    :param coef: the regularisation strength (1e4 in Continual World's CW20 runs)
    """

    name = "mas"

    coef: float = Field(default=1e4, gt=0.0)

    def importance_sums(
        self, policy: th.nn.Module, outputs: OutputFunction, parameters: Mapping[str, th.Tensor], observations: Any,
        actions: th.Tensor,
    ) -> dict[str, th.Tensor]:  # fmt: skip
        return mas_sums(policy, outputs, parameters, observations, actions)


def _check_distribution(name: str, algo: BaseAlgorithm) -> None:
    """Refuse action distributions whose outputs :mod:`crl.interventions.importance` does not define."""
    if getattr(algo, "use_sde", False):
        raise InterventionError(
            f"intervention {name!r}: use_sde=True is not supported (gSDE's state-dependent noise is not the "
            "Gaussian whose outputs the importance reads); set use_sde=False"
        )
    if algo.algorithm_family == "PPO" and not isinstance(algo.action_space, (spaces.Box, spaces.Discrete)):  # type: ignore[attr-defined]
        raise InterventionError(
            f"intervention {name!r}: PPO's action space {algo.action_space} is not supported; it reads Gaussian "
            "(Box) and categorical (Discrete) action distributions"
        )
