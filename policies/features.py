"""Reading hidden-layer features of a policy's networks without changing their forward pass.

A hidden layer is identified by its activation module: the module's input is the layer's
pre-activation and its output the post-activation. :class:`FeatureRecorder` attaches forward hooks to
those modules for the duration of a ``with`` block and removes them afterwards, so networks run
exactly as SB3 built them and pay nothing when no one is recording. crl's direct forward passes
(:mod:`crl.policies.direct_forward`) call no module, so no hook fires there: they record the same two
tensors themselves for the open recorders (:class:`RecorderHooks`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar

import torch as th
from torch import nn
from torch.utils.hooks import RemovableHandle

from crl.policies.layers import ACTIVATION_TYPES, InjectedHead


@dataclass(frozen=True)
class HiddenLayer:
    """A hidden layer of a named network.

    :param name: ``layer<k>``, k counting hidden layers from the input of that network
    :param path: dotted path of the activation module inside the policy
    :param activation: the activation module
    """

    name: str
    path: str
    activation: nn.Module


@dataclass(frozen=True)
class LayerFeatures:
    """Features of one hidden layer for a batch: ``pre`` is the activation's input, ``post`` its output."""

    path: str
    pre: th.Tensor
    post: th.Tensor


# network name -> hidden layer name -> features
Features = dict[str, dict[str, LayerFeatures]]


def hidden_layers(policy: nn.Module, prefixes: Sequence[str], outputs: Sequence[str] = ()) -> list[HiddenLayer]:
    """The hidden layers found under the given submodule paths of ``policy``, in forward order.

    :param policy: the module that owns the network
    :param prefixes: dotted paths of the submodules that make up the network, input side first
    :param outputs: dotted paths of the network's output layers: an activation inside one (SB3's gSDE
        actor clips ``mu`` with a ``Hardtanh``) acts on the output, not on a hidden layer
    """
    skipped = {m for path in outputs for m in policy.get_submodule(path).modules()}
    layers: list[HiddenLayer] = []
    for prefix in prefixes:
        submodule = policy.get_submodule(prefix)
        # The frozen branches of an injected head duplicate its trained branch.
        frozen = {m for head in submodule.modules() if isinstance(head, InjectedHead) for m in head.frozen_modules()}
        for path, module in submodule.named_modules(prefix=prefix):
            if isinstance(module, ACTIVATION_TYPES) and module not in frozen and module not in skipped:
                layers.append(HiddenLayer(f"layer{len(layers)}", path, module))
    return layers


class RecorderHooks:
    """The open :class:`FeatureRecorder` blocks, and how many hooks recorders have registered.

    The direct forward path (:mod:`crl.policies.direct_forward`) calls no module, so a recorder's
    hooks do not fire there: it hands each activation's input and output to the recorders of that
    module (``recording``) itself. A recorder's hooks are therefore not in its way, and they are left
    out of the count by which it notices new hooks (``registered``).
    """

    recording: ClassVar[dict[nn.Module, list[FeatureRecorder]]] = {}
    """Activation module -> the open recorders that record it."""
    registered = 0


class FeatureRecorder:
    """Context manager recording the hidden features of some networks during forward passes.

    The most recent forward pass through each hidden layer wins. Tensors keep their autograd graph,
    so an auxiliary loss can be built from them.

    :param networks: network name -> its hidden layers (see :func:`hidden_layers`)
    """

    def __init__(self, networks: Mapping[str, Sequence[HiddenLayer]]) -> None:
        self.networks = networks
        self._records: dict[nn.Module, tuple[th.Tensor, th.Tensor]] = {}
        self._handles: list[RemovableHandle] = []
        self._modules: list[nn.Module] = []

    def __enter__(self) -> FeatureRecorder:
        self._modules = list({layer.activation for layers in self.networks.values() for layer in layers})
        for module in self._modules:
            RecorderHooks.recording.setdefault(module, []).append(self)
        self._handles = [module.register_forward_hook(self._record) for module in self._modules]
        RecorderHooks.registered += len(self._handles)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for module in self._modules:
            recorders = RecorderHooks.recording[module]
            recorders.remove(self)
            if not recorders:
                del RecorderHooks.recording[module]
        self._modules = []

    def _record(self, module: nn.Module, inputs: tuple[Any, ...], output: th.Tensor) -> None:
        self.record(module, inputs[0], output)

    def record(self, module: nn.Module, pre: th.Tensor, post: th.Tensor) -> None:
        """Keep ``module``'s input and output of this forward pass (the direct path calls it)."""
        self._records[module] = (pre, post)

    def features(self) -> Features:
        """Features recorded so far, per network and hidden layer (layers not run are left out)."""
        recorded: Features = {}
        for network, layers in self.networks.items():
            recorded[network] = {
                layer.name: LayerFeatures(layer.path, *self._records[layer.activation])
                for layer in layers
                if layer.activation in self._records
            }
        return recorded


def is_recorder_hook(hook: Any) -> bool:
    """Whether ``hook`` is a :class:`FeatureRecorder`'s (which the direct path stands in for)."""
    return getattr(hook, "__func__", None) is FeatureRecorder._record
