"""Parseval regularisation (Chung et al. 2024, "Parseval Regularization for Continual Reinforcement Learning")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch as th
from pydantic import Field, PrivateAttr

from crl.hooks import GradientStep
from crl.interventions.layer_groups import trained_weight_layers
from crl.interventions.network import weight_of
from crl.interventions.regularizers import LoggedPenalty, loss_optimizer
from crl.optim import OptimizerCache

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

RegularisedWeights = tuple[list[th.Tensor], list[th.Tensor], list[float]]
"""The hidden layers' weights one optimizer updates, each one's ``-s I`` and width factor ``(w_ref / rows)^2``."""


class _ParsevalPenalty(th.autograd.Function):
    """``sum_l f_l ||G_l||_F^2``, ``G_l = W_l W_l^T - s I``, with the closed-form gradient ``4 f_l G_l W_l``.

    Through autograd the term costs about ten graph nodes per layer and a third matrix product in the
    backward pass (the gradient of ``W W^T`` through both operands); here it is two operations per
    layer each way: 380 against 480 us for DQN's two hidden layers, forward and backward (a backward
    pass of its own), and 2.7 against 4.4 ms for SAC's two critics' 256-unit layers.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, minus_scaled_identities: list[th.Tensor], factors: list[float], *weights: th.Tensor
    ) -> th.Tensor:
        matrices = [weight.flatten(1) for weight in weights]
        grams = [th.addmm(minus_si, w, w.T) for minus_si, w in zip(minus_scaled_identities, matrices, strict=True)]
        squared_norms = th.stack([th.dot(gram.view(-1), gram.view(-1)) for gram in grams])
        ctx.factors, ctx.shapes = factors, [weight.shape for weight in weights]
        ctx.save_for_backward(*grams, *matrices)
        return th.dot(squared_norms, squared_norms.new_tensor(factors))

    @staticmethod
    def backward(ctx: Any, grad_output: th.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        saved = ctx.saved_tensors
        grams, matrices = saved[: len(saved) // 2], saved[len(saved) // 2 :]
        scale = 4.0 * float(grad_output)
        gradients = [
            th.mm(gram, w).mul_(scale * factor).view(shape)
            for gram, w, factor, shape in zip(grams, matrices, ctx.factors, ctx.shapes, strict=True)
        ]
        return (None, None, *gradients)


def parseval_penalty(weights: list[th.Tensor], scale: float, width_factors: list[float]) -> th.Tensor:
    """``sum_l f_l * ||W_l W_l^T - s I||_F^2``, each ``W_l`` as a ``rows x fan_in`` matrix (a conv
    kernel flattened over its input channels and receptive field), differentiable in the weights.

    :param weights: the layers' weights
    :param scale: ``s``, the squared gain the rows should keep (2: orthogonal initialisation with gain sqrt(2))
    :param width_factors: ``f_l`` per layer
    """
    return _ParsevalPenalty.apply(minus_scaled_identities(weights, scale), width_factors, *weights)


def minus_scaled_identities(weights: list[th.Tensor], scale: float) -> list[th.Tensor]:
    """``-s I`` of each weight's number of rows."""
    return [-scale * th.eye(w.shape[0], dtype=w.dtype, device=w.device) for w in weights]


class Parseval(LoggedPenalty):
    """Parseval regularisation: ``loss += lambda * sum_l (w_ref / width_l)^2 * ||W_l W_l^T - s I||_F^2``.

    The term pulls the rows of every hidden layer's weight toward an orthogonal set of norm ``sqrt(s)``,
    the property an orthogonal initialisation starts with and that training erodes: it keeps the
    layers' singular values, and with them the gradients' ability to change the network, from
    collapsing. As in the authors' code the output layers and every bias are left out, ``s`` is the
    square of the orthogonal initialisation's gain (2), and the coefficient is scaled by
    ``(64 / width)^2`` because it was tuned on 64-unit layers.

    Added to every loss, over the hidden Linear/Conv2d layers its optimizer updates (PPO's joint loss:
    actor and critic, as in the authors' PPO; SAC: each critic in the critic loss, the actor in the
    actor loss). Logs ``interventions/parseval/penalty``, the mean added term of the last ``train()``.

    Deviations: ``width_l`` is each layer's number of output units (the authors' networks have one
    width, ``net_width``); conv kernels are regularised as ``out x (in * kh * kw)`` matrices (the
    authors' networks are MLPs). The authors' optional additions (learnable diagonal layers after
    each hidden layer and a learnable input scale, used on Meta-World, and grouping the units) are not
    part of this intervention.

    :param coef: lambda (the authors: 1e-3 on Meta-World and the grid world, 1e-4 on LunarLander and
        Quadruped)
    :param scale: s, the squared norm each row keeps
    :param reference_width: the width ``coef`` was tuned on; ``None`` applies ``coef`` unscaled
    """

    name = "parseval"
    needs_crl_policy = True

    coef: float = Field(default=1e-3, gt=0.0)
    scale: float = Field(default=2.0, gt=0.0)
    reference_width: int | None = Field(default=64, gt=0)

    _weights: OptimizerCache[RegularisedWeights] = PrivateAttr(default_factory=OptimizerCache)

    transient = ("_weights",)

    def _regularised(self, algo: BaseAlgorithm, optimizer: th.optim.Optimizer) -> RegularisedWeights:
        weights = [weight_of(layer) for layer in trained_weight_layers(algo.policy, optimizer, "hidden")]
        width = self.reference_width
        factors = [self.coef * (1.0 if width is None else (width / w.shape[0]) ** 2) for w in weights]
        return weights, minus_scaled_identities(weights, self.scale), factors

    def auxiliary_loss(self, algo: BaseAlgorithm, step: GradientStep) -> th.Tensor | None:
        optimizer = loss_optimizer(algo, step.loss_name)
        weights, minus_si, factors = self._weights.get(optimizer, lambda o: self._regularised(algo, o))
        if not weights:
            return None
        return self.logged(_ParsevalPenalty.apply(minus_si, factors, *weights), step)
