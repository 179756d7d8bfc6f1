"""Activation functions and the architecture options that crl policies add to SB3's networks.

SB3 builds its networks as ``nn.Sequential`` stacks of ``Linear``/``Conv2d`` layers and activation
modules. Rather than re-implementing SB3's network builders, crl policies let SB3 build the network
and then rewrite each stack in place: LayerNorm is inserted around every hidden activation and, for
a concatenating activation (CReLU, deep Fourier features), every activation is replaced and the next
layer's input width doubled. With the default options the rewrite does nothing, so a crl policy is
parameter-for-parameter identical to SB3's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch as th
from torch import nn
from torch.nn import functional as F


class ConcatenatedActivation(nn.Module):
    """An activation that passes on two features per unit: ``[f(x), g(x)]`` along the feature (channel)
    dimension (dim 1), so the output is twice as wide as the input.

    Of ``D`` units (or channels), unit ``i`` feeds output channels ``i`` and ``i + D``, its two
    halves: the next layer reads twice the width, and ReDo, continual backprop, the resets and the
    metrics treat both halves as one unit.
    """


class CReLU(ConcatenatedActivation):
    """Concatenated ReLU: ``[relu(x), relu(-x)]`` along the feature (channel) dimension.

    Abbas et al. 2023, "Loss of Plasticity in Continual Deep Reinforcement Learning": every unit has
    an active half for any input, so no unit can go dormant. The output is twice as wide as the input.
    """

    def forward(self, x: th.Tensor) -> th.Tensor:
        return F.relu(th.cat((x, -x), dim=1))


class Fourier(ConcatenatedActivation):
    """Deep Fourier features: ``[sin(x), cos(x)]`` along the feature (channel) dimension.

    Lewandowski, Schuurmans & Machado 2024, "Plastic Learning with Deep Fourier Features". The sine
    and cosine of the same pre-activation never have zero derivative together
    (``sin'(x)^2 + cos'(x)^2 = 1``): every unit keeps a gradient path that is never zero (the paper's
    "embedded linearity"), so its units cannot go dormant or saturate all at once. The output is twice
    as wide as the input.
    """

    def forward(self, x: th.Tensor) -> th.Tensor:
        return th.cat((th.sin(x), th.cos(x)), dim=1)


class InjectedHead(nn.Module):
    """A head after plasticity injection (Nikishin et al. 2023): ``h_old(x) + h_new(x) - h_new_frozen(x)``.

    ``h_old`` (the trained head) and ``h_new_frozen`` (a copy of the fresh head ``h_new``) are frozen,
    so at injection the output is unchanged and only ``h_new`` trains; gradients still reach the
    input ``x`` through every branch.

    :param old: the head as trained so far (frozen here)
    :param new: a freshly initialised head of the same architecture (trained)
    """

    def __init__(self, old: nn.Module, new: nn.Module) -> None:
        super().__init__()
        self.old = old.requires_grad_(False)
        self.new = new
        self.new_frozen = copy.deepcopy(new).requires_grad_(False)

    def forward(self, x: th.Tensor) -> th.Tensor:
        # The difference first: it is exactly zero at injection, so the output is exactly h_old's.
        return self.old(x) + (self.new(x) - self.new_frozen(x))

    def branches(self) -> tuple[nn.Module, nn.Module, nn.Module]:
        return self.old, self.new, self.new_frozen

    def frozen_modules(self) -> set[nn.Module]:
        """Modules of the frozen branches (their activations are not hidden layers of the network)."""
        return {*self.old.modules(), *self.new_frozen.modules()}


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
    "crelu": CReLU,
    "fourier": Fourier,
}

CONCATENATED_ACTIVATIONS: frozenset[str] = frozenset(
    name for name, cls in ACTIVATIONS.items() if issubclass(cls, ConcatenatedActivation)
)
"""The names in :data:`ACTIVATIONS` of the activations that pass on two features per unit."""

# torch.nn's activation modules that do not act unit by unit: a softmax normalises across units, GLU
# halves the width, attention is a layer of its own. None of them computes a hidden layer's units.
_NOT_UNIT_WISE: frozenset[str] = frozenset(
    {"GLU", "LogSoftmax", "MultiheadAttention", "Softmax", "Softmax2d", "Softmin"}
)


def _torch_activation_types() -> tuple[type[nn.Module], ...]:
    """Every unit-wise activation class of ``torch.nn`` (``torch.nn.modules.activation``).

    Read from torch rather than listed, so that any activation SB3's builders may be given through
    ``activation_fn`` (``ReLU6``, ``Hardswish``, ``PReLU``, ...) is recognised as one.
    """
    module = nn.modules.activation
    found = (getattr(module, name) for name in module.__all__ if name not in _NOT_UNIT_WISE)
    return tuple(cls for cls in found if isinstance(cls, type) and issubclass(cls, nn.Module))


# Modules whose input is a hidden layer's pre-activation and whose output its post-activation:
# torch.nn's unit-wise activations, CReLU and Fourier. An activation inside an output layer (e.g. the
# Hardtanh that SB3's gSDE actor puts after ``mu``) is not a hidden layer: hidden_layers() skips output
# layers.
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (*_torch_activation_types(), CReLU, Fourier)

LAYER_NORM_PLACEMENTS = ("pre", "post")

_WEIGHT_LAYERS = (nn.Linear, nn.Conv2d)


@dataclass(frozen=True)
class ArchitectureOptions:
    """Options crl policies add on top of SB3's ``net_arch`` / ``activation_fn``.

    :param layer_norm: ``None`` (off), ``"pre"`` (LayerNorm between the linear map and the activation,
        as in Lyle et al. 2023/2024) or ``"post"`` (after the activation).
    :param activation: name of the activation (one of :data:`ACTIVATIONS`), or ``None`` to keep the
        policy's ``activation_fn``. The concatenating activations ``"crelu"`` (``[relu(x), relu(-x)]``)
        and ``"fourier"`` (``[sin(x), cos(x)]``) double the width each hidden layer passes on.
    :param crelu_halve_width: with a concatenating activation (``"crelu"`` or ``"fourier"``; the name
        is kept for saved models), halve every hidden layer's width (units or channels) instead, so
        each layer passes on its original width and the layer shapes downstream are unchanged; widths
        must be even. SPEC.md §2 calls this keeping the parameter count; it keeps the width each layer
        passes on, and the hidden layers' own matrices halve: DQN's CartPole Q-network with
        ``net_arch=[64, 64]`` has 4,610 parameters with ReLU, 8,834 with CReLU or Fourier and 2,370
        with either halved
    """

    layer_norm: Literal["pre", "post"] | None = None
    activation: str | None = None
    crelu_halve_width: bool = False

    def __post_init__(self) -> None:
        if self.layer_norm not in (None, *LAYER_NORM_PLACEMENTS):
            raise ValueError(
                f"policy option layer_norm={self.layer_norm!r} is not allowed; "
                f"use one of {[None, *LAYER_NORM_PLACEMENTS]}"
            )
        if self.activation is not None and self.activation not in ACTIVATIONS:
            raise ValueError(
                f"policy option activation={self.activation!r} is not allowed; use one of {sorted(ACTIVATIONS)}"
            )
        if not isinstance(self.crelu_halve_width, bool):
            raise ValueError(
                f"policy option crelu_halve_width={self.crelu_halve_width!r} is not allowed; use True or False"
            )
        if self.crelu_halve_width and not self.concatenated:
            raise ValueError(
                "policy option crelu_halve_width=True needs activation='crelu' or activation='fourier', "
                f"got activation={self.activation!r}"
            )

    @property
    def concatenated(self) -> bool:
        """The activation passes on two features per unit (CReLU or Fourier): it doubles the width."""
        return self.activation in CONCATENATED_ACTIVATIONS

    @property
    def is_default(self) -> bool:
        return self.layer_norm is None and not self.concatenated

    def check_activation_fn(self, activation_fn: object) -> None:
        """Reject an ``activation_fn`` that the rewrite would not recognise when the options need it.

        LayerNorm is placed around the activation modules; a class that is not one of
        :data:`ACTIVATION_TYPES` (a user's own) would leave the network without any, silently.
        """
        if self.layer_norm is None or activation_fn is None:
            return
        if not (isinstance(activation_fn, type) and issubclass(activation_fn, ACTIVATION_TYPES)):
            name = getattr(activation_fn, "__name__", repr(activation_fn))
            raise ValueError(
                f"policy option layer_norm={self.layer_norm!r} needs activation_fn to be an activation it can "
                f"find, got activation_fn={name}; use one of {sorted(cls.__name__ for cls in ACTIVATION_TYPES)}"
            )

    def activation_fn(self, default: type[nn.Module]) -> type[nn.Module]:
        """The activation class SB3's builders should use (ReLU for CReLU and Fourier, which are swapped
        in after)."""
        if self.activation is None:
            return default
        return nn.ReLU if self.concatenated else ACTIVATIONS[self.activation]

    def rewrite(self, stack: nn.Sequential, example: th.Tensor | None = None, doubled_input: bool = False) -> bool:
        """Apply the options to ``stack`` in place.

        :param stack: a network stack built by SB3
        :param example: a batch shaped like the input the rewritten stack will receive, used to size
            LayerNorm (values are ignored); for a stack starting with a Linear layer it can be left out
        :param doubled_input: the previous stack ends in a concatenating activation (CReLU, Fourier), so
            this stack's first layer must take twice as many inputs
        :return: whether this stack's output is twice as wide as before (it ends in a concatenating
            activation)
        """
        modules = list(stack)
        if not any(isinstance(module, ACTIVATION_TYPES) for module in modules) and not doubled_input:
            return False
        doubled_output = doubled_input
        if self.crelu_halve_width:
            modules = _halve_hidden_widths(modules)
        if self.concatenated or doubled_input:
            # Halved units are passed on twice: the next layer reads its original width.
            widen = not self.crelu_halve_width
            swapped = ACTIVATIONS[self.activation] if self.activation is not None and self.concatenated else None
            modules, doubled_output = _swap_in_concatenated(modules, doubled_input, swapped, widen=widen)
        if self.layer_norm is not None:
            modules = _insert_layer_norm(modules, _example_input(modules, example), self.layer_norm)
        _replace_contents(stack, modules)
        return doubled_output


def _swap_in_concatenated(
    modules: list[nn.Module], doubled_input: bool, activation: type[nn.Module] | None, widen: bool = True
) -> tuple[list[nn.Module], bool]:
    """Replace activations by a concatenating one and (``widen``) widen the input of the layer that
    follows each one.

    :param modules: the stack's modules
    :param doubled_input: the stack's first weight layer reads a doubled input and must be widened
    :param activation: the concatenating activation class (CReLU, Fourier) to swap in, or ``None`` to
        keep the activations (only the first layer is widened)
    :param widen: widen the layer after each swapped-in activation (``False`` when the widths are halved)
    :return: the rewritten modules and whether their output is twice as wide as before
    """
    rewritten: list[nn.Module] = []
    widen_next = doubled_input
    for module in modules:
        if widen_next and isinstance(module, _WEIGHT_LAYERS):
            module = widened(module)
            widen_next = False
        elif activation is not None and isinstance(module, ACTIVATION_TYPES):
            module = activation()
            widen_next = widen
        rewritten.append(module)
    return rewritten, widen_next


def _halve_hidden_widths(modules: list[nn.Module]) -> list[nn.Module]:
    """Halve the output width of every weight layer followed by an activation."""
    rewritten = list(modules)
    for index, module in enumerate(modules[:-1]):
        if isinstance(module, _WEIGHT_LAYERS) and isinstance(modules[index + 1], ACTIVATION_TYPES):
            rewritten[index] = halved(module)
    return rewritten


def _example_input(modules: list[nn.Module], example: th.Tensor | None) -> th.Tensor:
    if example is not None:
        return example
    first = modules[0]
    if not isinstance(first, nn.Linear):
        raise ValueError(f"an example input is needed to size LayerNorm for a stack starting with {first}")
    return th.zeros((1, first.in_features))


def widened(layer: nn.Module) -> nn.Module:
    """A freshly initialised copy of ``layer`` that takes twice as many inputs."""
    if isinstance(layer, nn.Linear):
        return nn.Linear(2 * layer.in_features, layer.out_features, bias=layer.bias is not None)
    assert isinstance(layer, nn.Conv2d)
    return nn.Conv2d(
        2 * layer.in_channels,
        layer.out_channels,
        kernel_size=layer.kernel_size,  # type: ignore[arg-type]
        stride=layer.stride,  # type: ignore[arg-type]
        padding=layer.padding,  # type: ignore[arg-type]
        bias=layer.bias is not None,
    )


def halved(layer: nn.Module) -> nn.Module:
    """A freshly initialised copy of ``layer`` with half as many outputs (units or channels)."""
    if not isinstance(layer, nn.Linear | nn.Conv2d):
        raise TypeError(f"only Linear and Conv2d layers can be halved, got {layer}")
    width = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if width % 2:
        raise ValueError(f"crelu_halve_width=True needs even hidden widths, got a layer of width {width}: {layer}")
    if isinstance(layer, nn.Linear):
        return nn.Linear(layer.in_features, width // 2, bias=layer.bias is not None)
    return nn.Conv2d(
        layer.in_channels,
        width // 2,
        kernel_size=layer.kernel_size,  # type: ignore[arg-type]
        stride=layer.stride,  # type: ignore[arg-type]
        padding=layer.padding,  # type: ignore[arg-type]
        bias=layer.bias is not None,
    )


def _insert_layer_norm(modules: list[nn.Module], example: th.Tensor, placement: str) -> list[nn.Module]:
    """Insert a LayerNorm before (``pre``) or after (``post``) every activation.

    Convolutional features are normalised over (C, H, W), the shapes found by a dry run of ``example``.
    """
    rewritten: list[nn.Module] = []
    x = example
    with th.no_grad():
        for module in modules:
            if isinstance(module, ACTIVATION_TYPES):
                if placement == "pre":
                    rewritten.append(nn.LayerNorm(tuple(x.shape[1:])))
                x = module(x)
                rewritten.append(module)
                if placement == "post":
                    rewritten.append(nn.LayerNorm(tuple(x.shape[1:])))
            else:
                x = module(x)
                rewritten.append(module)
    return rewritten


def _replace_contents(stack: nn.Sequential, modules: list[nn.Module]) -> None:
    """Refill ``stack`` so that every reference to it (e.g. SAC's ``q_networks`` list) stays valid."""
    for key in list(stack._modules):
        del stack._modules[key]
    for index, module in enumerate(modules):
        stack.add_module(str(index), module)
