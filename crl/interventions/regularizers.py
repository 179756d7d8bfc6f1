"""Parameter regularisers: decoupled weight decay and L2 toward the initial parameters."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch as th
from pydantic import Field, PrivateAttr

from crl.hooks import GradientStep
from crl.interventions.base import Intervention
from crl.interventions.penalty import PenaltyTerms, weighted_squared_distance
from crl.optim import OptimizerCache

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm


def loss_optimizer(algo: BaseAlgorithm, loss_name: str) -> th.optim.Optimizer:
    """The optimizer that minimises the loss ``loss_name`` (see :class:`crl.hooks.GradientStep`)."""
    policy = algo.policy
    owner = {"actor": getattr(policy, "actor", None), "critic": getattr(policy, "critic", None)}.get(loss_name)
    return (owner if owner is not None else policy).optimizer


class WeightDecay(Intervention):
    """Decoupled weight decay (Loshchilov & Hutter 2019, AdamW): ``theta <- theta - lr * lambda * theta``.

    Applied as a separate step just before each optimizer step, on the parameters that have a
    gradient, exactly as ``torch.optim.AdamW`` does inside its step: with SB3's default Adam this *is*
    AdamW, and it works unchanged with any other optimizer class (RMSprop for Atari DQN). The
    algorithm's optimizer class and arguments are left as configured; ``lr`` is the current
    (scheduled) learning rate of each parameter group. Lyle et al. 2024 combine it with LayerNorm.
    SAC's entropy coefficient is not decayed.

    :param weight_decay: lambda (1e-4 ... 1e-3 in the references)
    """

    name = "weight_decay"

    weight_decay: float = Field(default=1e-4, gt=0.0)

    @th.no_grad()
    def after_backward(self, algo: BaseAlgorithm, step: GradientStep) -> None:
        assert step.optimizer is not None
        for group in step.optimizer.param_groups:
            parameters = [p for p in group["params"] if p.grad is not None]
            if parameters:
                th._foreach_mul_(parameters, 1.0 - group["lr"] * self.weight_decay)


class LoggedPenalty(Intervention):
    """An intervention that adds a penalty to the losses and logs it as ``interventions/<name>/penalty``
    (the mean added term of the last ``train()``): its ``auxiliary_loss`` returns :meth:`logged`."""

    _penalties: list[th.Tensor] = PrivateAttr(default_factory=list)

    def logged(self, penalty: th.Tensor, step: GradientStep) -> th.Tensor:
        """``penalty``, kept for the log unless ``step`` is computing its loss again (at perturbed parameters)."""
        if not step.recomputing:
            self._penalties.append(penalty.detach())
        return penalty

    def on_train_end(self, algo: BaseAlgorithm) -> None:
        if self._penalties:
            self.record(algo, "penalty", float(th.stack(self._penalties).mean()))
            self._penalties = []


class AnchoredPenalty(LoggedPenalty):
    """An intervention that adds ``coef * sum Omega (theta - theta*)^2`` to every loss, over the
    parameters the loss's optimizer updates (see :mod:`crl.interventions.penalty`), and logs it.

    A subclass says which parameters, anchors and weights (:meth:`optimizer_terms`) and the scale
    (:meth:`penalty_coef`); it calls ``self._terms.clear()`` when its anchors or weights change.
    """

    _terms: OptimizerCache[PenaltyTerms] = PrivateAttr(default_factory=OptimizerCache)

    transient = ("_terms",)

    def optimizer_terms(self, algo: BaseAlgorithm, optimizer: th.optim.Optimizer) -> PenaltyTerms:
        """``theta``, ``theta*`` and ``Omega`` (``None``: 1) of the penalised parameters ``optimizer`` updates."""
        raise NotImplementedError

    def penalty_coef(self) -> float:
        raise NotImplementedError

    def auxiliary_loss(self, algo: BaseAlgorithm, step: GradientStep) -> th.Tensor | None:
        thetas, anchors, omegas = self._terms.get(
            loss_optimizer(algo, step.loss_name), lambda optimizer: self.optimizer_terms(algo, optimizer)
        )
        if not thetas:
            return None
        return self.logged(weighted_squared_distance(thetas, anchors, omegas, self.penalty_coef()), step)


class L2Init(AnchoredPenalty):
    """L2 regularisation toward the initial parameters (Kumar et al. 2023, "Maintaining Plasticity via
    Regenerative Regularization"): ``loss += lambda / 2 * sum ||theta - theta_0||^2``.

    Applied to every loss, over the parameters its optimizer updates. ``theta_0`` is the parameters at
    construction; it is saved with the model. Logs ``interventions/l2_init/penalty`` (the mean added
    term of the last ``train()``).

    :param l2_init: lambda (swept over 1e-2 ... 1e-4 in the paper)
    """

    name = "l2_init"

    l2_init: float = Field(default=1e-3, gt=0.0)

    _theta_0: dict[str, th.Tensor] | None = PrivateAttr(default=None)

    def on_setup(self, algo: BaseAlgorithm) -> None:
        if self._theta_0 is None:  # after load() the saved theta_0 is kept
            self._theta_0 = {name: p.detach().clone() for name, p in algo.policy.named_parameters()}

    def penalty_coef(self) -> float:
        return 0.5 * self.l2_init

    def optimizer_terms(self, algo: BaseAlgorithm, optimizer: th.optim.Optimizer) -> PenaltyTerms:
        """``theta`` and ``theta_0`` of the parameters that ``optimizer`` trains and that existed at
        construction (an injected head has no ``theta_0``)."""
        assert self._theta_0 is not None
        theta_0 = {p: self._theta_0[name] for name, p in algo.policy.named_parameters() if name in self._theta_0}
        thetas = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad and p in theta_0]
        return thetas, [theta_0[p] for p in thetas], None
