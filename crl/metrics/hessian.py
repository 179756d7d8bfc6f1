"""``hessian_top_eig``: the top eigenvalue of the training loss's Hessian by power iteration (SPEC.md §1).

Lyle et al. 2023 ("Understanding plasticity in neural networks") relate loss of plasticity to the
curvature of the loss landscape. The Hessian is never formed: each power-iteration step is one
Hessian-vector product, ``H v = d/dtheta (grad L . v)``, by double backward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch as th

from crl.metrics.losses import measured_training_losses, optimizer_parameters

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

HESSIAN_ITERATIONS = 20


def hessian_top_eigenvalue(
    loss: th.Tensor,
    parameters: Sequence[th.Tensor],
    iterations: int = HESSIAN_ITERATIONS,
    generator: th.Generator | None = None,
) -> float:
    """The dominant eigenvalue of ``d^2 loss / d theta^2`` by power iteration.

    ``v <- H v / ||H v||`` from a random unit ``v``; the estimate is the Rayleigh quotient ``v^T H v``
    of the last iterate. Power iteration converges to the eigenvalue of largest magnitude, so the
    result is signed (negative if the most curved direction is a negative one). Uses
    ``torch.autograd.grad`` only: no ``.grad`` is written.

    :param loss: a scalar with an autograd graph to ``parameters``
    :param parameters: the tensors to differentiate against (parameters the loss does not reach count
        as zero curvature)
    :param iterations: number of Hessian-vector products
    :param generator: source of the random start vector (keeps torch's global stream untouched)
    """
    first = th.autograd.grad(loss, list(parameters), create_graph=True, allow_unused=True)
    pairs = [(g, p) for g, p in zip(first, parameters, strict=True) if g is not None and g.requires_grad]
    if not pairs:
        return 0.0
    gradients, parameters = [g for g, _ in pairs], [p for _, p in pairs]
    v = _normalised([th.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in parameters])
    eigenvalue = 0.0
    for _ in range(iterations):
        products = th.autograd.grad(gradients, parameters, grad_outputs=v, retain_graph=True, allow_unused=True)
        hv = [th.zeros_like(p) if h is None else h.detach() for h, p in zip(products, parameters, strict=True)]
        # Rayleigh quotient v^T H v with ||v|| = 1
        eigenvalue = float(sum((h * u).sum() for h, u in zip(hv, v, strict=True)))
        norm = _norm(hv)
        if norm == 0.0:
            return 0.0
        v = [h / norm for h in hv]
    return eigenvalue


def _norm(tensors: Sequence[th.Tensor]) -> float:
    return float(th.sqrt(sum(t.double().square().sum() for t in tensors)))  # type: ignore[arg-type]


def _normalised(tensors: Sequence[th.Tensor]) -> list[th.Tensor]:
    norm = _norm(tensors)
    return [t / norm for t in tensors]


def training_loss_eigenvalues(
    algo: BaseAlgorithm, batch: object, iterations: int = HESSIAN_ITERATIONS, seed: int = 0
) -> dict[str, float]:
    """``hessian_top_eig`` of each training loss of ``algo`` on ``batch``, per loss name.

    The losses come from the algorithm's ``training_losses(batch)`` (the loss ``train()`` optimises,
    see its docstring), each against the parameters of the optimizer that minimises it, computed as
    :func:`~crl.metrics.losses.measured_training_losses` computes them (eval mode, sampling on a
    forked generator seeded with ``seed``).

    :param algo: a ``crl.DQN``, ``crl.PPO`` or ``crl.SAC``
    :param batch: a batch as ``algo.training_losses`` takes it (e.g. the monitor's probe batch)
    :param iterations: power-iteration steps per loss
    :param seed: seed of the sampling inside the losses and of the start vectors
    """
    generator = th.Generator().manual_seed(seed)
    with measured_training_losses(algo, batch, seed) as losses:
        return {
            name: hessian_top_eigenvalue(loss, optimizer_parameters(optimizer), iterations, generator)
            for name, (loss, optimizer) in losses.items()
        }
