"""The penalty ``coef * sum_i Omega_i (theta_i - theta*_i)^2`` over parameter tensors, with a fused gradient.

L2-init (``Omega = 1``, ``theta*`` the initial parameters) and the consolidation methods (L2, EWC,
MAS) add it to every loss. Written as one autograd expression per tensor it costs four graph nodes
per tensor forward and backward; here the forward and the gradient
``d/d theta_i = 2 coef Omega_i (theta_i - theta*_i)`` are a handful of ``torch._foreach`` calls over
all tensors at once (83 us instead of 138 us for DQN's 64 x 64 Q-network, forward and backward).
The gradient multiplies in the order autograd does for
``coef * stack([(Omega * (theta - theta*).square()).sum() ...]).sum()``, so value and gradients are
bitwise those of that expression (``tests/test_interventions_penalty.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch as th

PenaltyTerms = tuple[list[th.Tensor], list[th.Tensor], list[th.Tensor] | None]
"""``theta``, ``theta*`` and ``Omega`` (``None``: 1) of the parameters one optimizer updates."""


class _WeightedSquaredDistance(th.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, anchors: list[th.Tensor], omegas: list[th.Tensor] | None, coef: float, *thetas: th.Tensor
    ) -> th.Tensor:
        differences = th._foreach_sub(thetas, anchors)
        squares = th._foreach_mul(differences, differences)
        if omegas is not None:
            th._foreach_mul_(squares, omegas)
        ctx.coef, ctx.weighted = coef, omegas is not None
        ctx.save_for_backward(*differences, *(omegas or ()))
        return coef * th.stack([square.sum() for square in squares]).sum()

    @staticmethod
    def backward(ctx: Any, grad_output: th.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        saved = ctx.saved_tensors
        n_thetas = len(saved) // 2 if ctx.weighted else len(saved)
        differences, omegas = saved[:n_thetas], saved[n_thetas:]
        scale = ctx.coef * grad_output
        doubled = th._foreach_mul(differences, 2.0)
        # autograd's order: ((coef * g) * Omega) * (2 * (theta - theta*)), without Omega if it is 1
        if ctx.weighted:
            gradients = th._foreach_mul(th._foreach_mul(omegas, scale), doubled)
        else:
            gradients = th._foreach_mul(doubled, scale)
        return (None, None, None, *gradients)


def weighted_squared_distance(
    thetas: Sequence[th.Tensor],
    anchors: list[th.Tensor],
    omegas: list[th.Tensor] | None,
    coef: float,
) -> th.Tensor:
    """``coef * sum_i sum(Omega_i * (theta_i - anchor_i)^2)``, differentiable in ``thetas``.

    :param thetas: the parameters (the gradient flows to them)
    :param anchors: a tensor of each parameter's shape, without gradient
    :param omegas: each parameter's weights, without gradient, or ``None`` for 1
    :param coef: the scale
    """
    return _WeightedSquaredDistance.apply(anchors, omegas, coef, *thetas)
