"""The fused penalty ``coef * sum Omega (theta - theta*)^2`` (crl.interventions.penalty)."""

from __future__ import annotations

import pytest
import torch as th

from crl.interventions.penalty import weighted_squared_distance

SHAPES = [(64, 4), (64,), (64, 64), (64,), (2, 64), (2,), ()]


def _tensors(seed: int, dtype: th.dtype = th.float32) -> tuple[list[th.Tensor], list[th.Tensor], list[th.Tensor]]:
    generator = th.Generator().manual_seed(seed)
    thetas = [th.randn(shape, generator=generator, dtype=dtype, requires_grad=True) for shape in SHAPES]
    anchors = [theta.detach() + 0.1 * th.randn(theta.shape, generator=generator, dtype=dtype) for theta in thetas]
    omegas = [th.rand(theta.shape, generator=generator, dtype=dtype) for theta in thetas]
    return thetas, anchors, omegas


def _plain(thetas: list[th.Tensor], anchors: list[th.Tensor], omegas: list[th.Tensor] | None, coef: float) -> (
    th.Tensor
):  # fmt: skip
    """The penalties as L2-init and the consolidation methods wrote them before the fused version."""
    pairs = zip(thetas, anchors, strict=True)
    if omegas is None:
        return coef * th.stack([(theta - anchor).pow(2).sum() for theta, anchor in pairs]).sum()
    return coef * th.stack([(o * (t - a).square()).sum() for (t, a), o in zip(pairs, omegas, strict=True)]).sum()


@pytest.mark.parametrize("weighted", [True, False])
def test_value_and_gradients_are_bitwise_those_of_the_plain_expression(weighted: bool) -> None:
    thetas, anchors, omegas = _tensors(0)
    weights = omegas if weighted else None
    results = []
    for penalty in (weighted_squared_distance, _plain):
        for theta in thetas:
            theta.grad = None
        value = penalty(thetas, anchors, weights, 1e4)
        (3.7 * value + thetas[0].sum()).backward()  # an upstream gradient other than 1, and another loss
        results.append((value.detach(), [theta.grad.clone() for theta in thetas]))
    (fused, fused_gradients), (plain, plain_gradients) = results
    assert th.equal(fused, plain)
    assert all(th.equal(a, b) for a, b in zip(fused_gradients, plain_gradients, strict=True))


@pytest.mark.parametrize("weighted", [True, False])
def test_gradients_are_those_of_the_formula(weighted: bool) -> None:
    thetas, anchors, omegas = _tensors(1, dtype=th.float64)
    weights = omegas if weighted else None
    assert th.autograd.gradcheck(lambda *ts: weighted_squared_distance(ts, anchors, weights, 0.3), thetas)
    value = weighted_squared_distance(thetas, anchors, weights, 0.3)
    triples = zip(thetas, anchors, omegas, strict=True)
    expected = sum(((o if weighted else 1.0) * (t - a) ** 2).sum() for t, a, o in triples)
    th.testing.assert_close(value, 0.3 * expected)
    gradients = th.autograd.grad(value, thetas)
    for gradient, theta, anchor, omega in zip(gradients, thetas, anchors, omegas, strict=True):
        th.testing.assert_close(gradient, 2 * 0.3 * (omega if weighted else 1.0) * (theta - anchor).detach())
