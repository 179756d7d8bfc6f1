"""The Linear/Conv2d layers an optimizer trains, split into hidden layers and output layers.

Weight clipping and Parseval regularisation act per layer, on the layers whose parameters the
stepping optimizer updates: a layer's bound or penalty depends on its shape, and only the loss that
trains a layer should move it. The split follows :func:`crl.policies.spectral_norm.weight_layer_groups`
(a network's output layers, or else its last weight layer), extended to injected heads: after a
plasticity injection the last weight layer of each branch of an :class:`~crl.policies.layers.InjectedHead`
is an output layer (the frozen branches drop out, since no optimizer trains them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch as th
from torch import nn

from crl.interventions.network import WEIGHT_LAYERS, WeightLayer, weight_of
from crl.policies.layers import InjectedHead
from crl.policies.spectral_norm import weight_layer_groups

if TYPE_CHECKING:
    from crl.policies.base import ContinualPolicyMixin

LayerGroup = Literal["all", "hidden"]


def output_weight_layers(policy: ContinualPolicyMixin) -> set[nn.Module]:
    """The output layers of the trained networks, injected heads' branches included."""
    modules = dict(policy.named_modules())  # type: ignore[attr-defined]
    heads: set[nn.Module] = {modules[path] for path in weight_layer_groups(policy)["head"]}
    for injected in (m for m in modules.values() if isinstance(m, InjectedHead)):
        for branch in injected.branches():
            layers = [m for m in branch.modules() if isinstance(m, WEIGHT_LAYERS)]
            heads.update(layers[-1:])
    return heads


def trained_weight_layers(policy: nn.Module, optimizer: th.optim.Optimizer, group: LayerGroup) -> list[WeightLayer]:
    """The Linear/Conv2d layers of ``policy`` whose weight ``optimizer`` updates, in module order.

    :param group: ``"all"``, or ``"hidden"`` (without the output layers, which needs a crl policy)
    """
    trained = {p for g in optimizer.param_groups for p in g["params"] if p.requires_grad}
    layers = [m for m in policy.modules() if isinstance(m, WEIGHT_LAYERS) and weight_of(m) in trained]
    if group == "hidden":
        heads = output_weight_layers(policy)  # type: ignore[arg-type]
        layers = [layer for layer in layers if layer not in heads]
    return layers
