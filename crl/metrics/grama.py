"""GraMa: which hidden units still learn, read from the gradients of the training loss.

Liu et al. 2025 ("Measure gradients, not activations! Enhancing neuronal activity in deep
reinforcement learning") score a unit by the magnitude of the gradient that reaches it rather than by
its activation (ReDo's score): a unit can be active and still have stopped learning (saturated,
behind a normalisation, silenced downstream). Here a unit's score is
:func:`~crl.metrics.functions.gradient_scores` of its incoming weights' gradient, taken from the loss
whose optimizer trains that layer, on a batch of training data; units scoring ``<= tau`` are
GraMa-inactive. ``grama_ratio`` is their fraction, per layer and pooled per network, and
:class:`~crl.interventions.ReGraMa` recycles them.

The definition through the incoming weights is the one that needs only the parameter gradients
training computes anyway (the paper's "lightweight" claim); the paper's own code was not available to
check it against, nor its threshold: ``GRAMA_TAU`` = 0.01 is that of a public ReGraMa implementation.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch as th

from crl.metrics.functions import gradient_scores, layer_fraction, pooled_fraction
from crl.metrics.losses import measured_training_losses, optimizer_parameters
from crl.metrics.suite import WHOLE, metric_name

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

    from crl.interventions.network import UnitLayer
    from crl.policies.base import ContinualPolicyMixin


def unit_gradient_scores(algo: BaseAlgorithm, batch: object, layers: Sequence[UnitLayer], seed: int) -> list[th.Tensor]:
    """GraMa scores of the units of each layer, on ``batch``.

    Each layer's incoming weight is differentiated against the training loss whose optimizer updates
    it (:func:`~crl.metrics.losses.measured_training_losses`: eval mode, sampling seeded with
    ``seed``); no ``.grad`` is written. A layer that no optimizer trains, or that its loss does not
    reach, has no gradient: every unit scores 0.

    :param algo: a crl algorithm
    :param batch: a batch as ``algo.training_losses`` takes it
    :param layers: the layers to score (:func:`~crl.interventions.network.unit_layers`)
    :param seed: seed of the sampling inside the losses
    :return: one score per unit, per layer, in ``layers``' order
    """
    from crl.interventions.network import weight_of  # crl.interventions imports crl.metrics

    weights = [weight_of(layer.incoming) for layer in layers]
    gradients: list[th.Tensor] = [th.zeros_like(w) for w in weights]
    with measured_training_losses(algo, batch, seed) as losses:
        trained_by: dict[th.Tensor, str] = {}
        for name, (_, optimizer) in losses.items():
            for parameter in optimizer_parameters(optimizer):
                trained_by.setdefault(parameter, name)
        by_loss: dict[str, list[int]] = defaultdict(list)
        for index, weight in enumerate(weights):
            if weight in trained_by:
                by_loss[trained_by[weight]].append(index)
        for name, indices in by_loss.items():
            found = th.autograd.grad(
                losses[name][0], [weights[i] for i in indices], retain_graph=True, allow_unused=True
            )
            for index, gradient in zip(indices, found, strict=True):
                if gradient is not None:
                    gradients[index] = gradient
    return [gradient_scores(gradient) for gradient in gradients]


def grama_metrics(algo: BaseAlgorithm, batch: object, tau: float, seed: int) -> dict[str, float]:
    """``grama_ratio`` of every hidden layer of every trained network, and pooled per network (``all``).

    Logged as ``plasticity/<network>/<layer>/grama_ratio``; a layer shared by two networks (PPO's
    shared CNN) is scored once and counts in both networks' pooled ratios, as in
    :func:`~crl.metrics.suite.feature_metrics`.

    :param algo: a crl algorithm
    :param batch: the probe batch (SB3 buffer samples)
    :param tau: inactivity threshold on the normalised score
    :param seed: seed of the sampling inside the losses
    """
    from crl.interventions.network import unit_layers  # crl.interventions imports crl.metrics

    policy: ContinualPolicyMixin = algo.policy  # type: ignore[assignment]
    layers = unit_layers(policy)
    scores = unit_gradient_scores(algo, batch, layers, seed)
    inactive = {layer.activation: score <= tau for layer, score in zip(layers, scores, strict=True)}
    values: dict[str, float] = {}
    for network, hidden in policy.hidden_layers(list(policy.network_prefixes())).items():
        masks = [(layer.name, inactive[layer.activation]) for layer in hidden if layer.activation in inactive]
        if not masks:
            continue
        values.update({metric_name(network, name, "grama_ratio"): layer_fraction(mask) for name, mask in masks})
        values[metric_name(network, WHOLE, "grama_ratio")] = pooled_fraction([mask for _, mask in masks])
    return values
