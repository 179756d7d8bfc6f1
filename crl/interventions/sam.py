"""Sharpness-aware minimisation (Foret et al. 2021; ASAM, Kwon et al. 2021), the smooth-minima half of
PLASTIC (Lee et al. 2023, "PLASTIC: Improving Input and Label Plasticity for Sample Efficient
Reinforcement Learning").

SAM minimises the loss at the worst parameters of a neighbourhood, ``max_{||eps|| <= rho} L(theta + eps)``.
To first order the maximiser is ``eps = rho g / ||g||`` with ``g = grad L(theta)``, and each gradient
step descends with the gradient there:

    g     = grad L(theta)
    eps   = rho T^2 g / ||T g||               T = I (SAM) or diag(|theta|) (ASAM)
    theta <- optimizer_step(theta, grad L(theta + eps))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch as th
from pydantic import Field, PrivateAttr

from crl.hooks import GradientStep
from crl.interventions.base import Intervention, InterventionError

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm


def sharpness_aware_perturbation(
    parameters: list[th.Tensor], gradients: list[th.Tensor], rho: float, adaptive: bool = False
) -> list[th.Tensor]:
    """``eps = rho T^2 g / (||T g|| + 1e-12)``, one tensor per parameter, ``||T g||`` over all of them.

    :param parameters: ``theta`` (read for ``T = diag(|theta|)`` only)
    :param gradients: ``g``, one per parameter
    :param rho: the neighbourhood's radius (in ``T^-1``-scaled coordinates with ``adaptive``)
    :param adaptive: ASAM's ``T = diag(|theta|)`` instead of SAM's ``T = I``
    """
    with th.no_grad():
        magnitudes = th._foreach_abs(parameters) if adaptive else None
        t_g = th._foreach_mul(gradients, magnitudes) if magnitudes is not None else gradients
        t_g_norm = th.linalg.vector_norm(th.stack(th._foreach_norm(t_g)))
        scale = rho / (t_g_norm + 1e-12)
        epsilon = th._foreach_mul(t_g, magnitudes) if magnitudes is not None else t_g
        return list(th._foreach_mul(epsilon, scale))


class SAM(Intervention):
    """Sharpness-aware minimisation: every optimizer step uses the gradient at ``theta + eps``.

    At each gradient step, once the algorithm has the gradients ``g`` of its loss (and the other
    interventions' terms), the parameters that have one move to ``theta + eps``
    (:func:`sharpness_aware_perturbation`), the algorithm computes the same loss again there (same
    batch, same TD targets, the same actor noise from torch's generator, which is then left where the
    first pass left it), and the gradients there, clipped where the algorithm clips, replace ``g``;
    the parameters go back to ``theta`` exactly and the optimizer steps. Every other intervention's
    ``after_backward`` (weight decay, A-GEM's projection, PackNet's masks) sees the replaced gradients.
    ``losses=None`` applies it to every loss the algorithm optimises (PLASTIC makes SAM its agent's
    optimizer); ``losses`` limits it to some losses, e.g. ``["critic"]``.

    The first gradient is the clipped one where the algorithm clips (DQN, PPO): clipping scales all
    gradients alike, so ``eps`` is the same. On CrossQ the second pass normalises its joint batch with
    its own batch statistics, and the batch norms' running statistics stay as the first pass moved them.
    Logs ``interventions/sam/sharpness``, the mean over the last ``train()`` of ``L(theta + eps) - L(theta)``
    (the algorithm's loss, before other interventions' terms): SAM's estimate of the sharpness it
    minimises, about ``rho ||g||`` while the first-order picture holds.

    Costs a second forward and backward pass of every loss it applies to.

    :param rho: the neighbourhood's radius (the usual default 0.05; Foret et al. 2021 search 0.01 to 0.5;
        ASAM's ball needs about ten times more)
    :param adaptive: ASAM's scale-invariant neighbourhood, ``T = diag(|theta|)``
    :param losses: the losses to apply it to (names as in :class:`crl.hooks.GradientStep`: ``q_net``,
        ``quantile_net``, ``policy``, ``critic``, ``actor``); ``None``: all of the algorithm's
    """

    name = "sam"

    rho: float = Field(default=0.05, gt=0.0)
    adaptive: bool = False
    losses: list[str] | None = Field(default=None, min_length=1)

    _rises: list[th.Tensor] = PrivateAttr(default_factory=list)

    def check(self, algo: BaseAlgorithm) -> None:
        super().check(algo)
        known = tuple(getattr(algo, "loss_names", ()))
        unknown = [loss for loss in self.losses or () if loss not in known]
        if unknown:
            family = getattr(algo, "algorithm_family", type(algo).__name__)
            raise InterventionError(
                f"intervention {self.name!r}: parameter losses={self.losses!r} names {unknown}, which {family} "
                f"does not optimise; its losses are {list(known)}"
            )

    def replace_gradients(self, algo: BaseAlgorithm, step: GradientStep) -> None:
        if step.recompute_gradients is None or (self.losses is not None and step.loss_name not in self.losses):
            return
        assert step.optimizer is not None and step.loss is not None
        parameters = [p for group in step.optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not parameters:
            return
        gradients = [p.grad for p in parameters]
        epsilon = sharpness_aware_perturbation(parameters, gradients, self.rho, self.adaptive)  # type: ignore[arg-type]
        with th.no_grad():
            theta = [p.clone() for p in parameters]
            th._foreach_add_(parameters, epsilon)
        try:
            loss_at_epsilon = step.recompute_gradients()
        finally:
            with th.no_grad():  # exactly theta again: theta + eps - eps may differ in the last bit
                th._foreach_copy_(parameters, theta)
        self._rises.append((loss_at_epsilon - step.loss).detach())

    def on_train_end(self, algo: BaseAlgorithm) -> None:
        if self._rises:
            self.record(algo, "sharpness", float(th.stack(self._rises).mean()))
            self._rises = []
