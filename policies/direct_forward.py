"""Acting forward passes that call the layers' ``forward`` methods directly, when that is exact.

Calling a module (``module(x)``) goes through ``nn.Module._wrapped_call_impl`` and ``_call_impl``: they
look for a compiled variant, hooks on the module, global hooks and the tracing state, and only then call
``forward``, about 2 us of Python per module. DQN acts with a forward pass of its Q-network at every
environment step, through 8 modules for the MLP (feature extractor, flatten, sequential, 3 linear
layers, 2 activations). When no hook is registered on those modules or globally, none is compiled and
nothing is traced, ``module(x)`` is exactly ``module.forward(x)``, and :class:`DirectLayers` gives the
layers whose ``forward`` methods, applied in turn, compute the pass: 35 instead of 51 us for the
120x84 MLP on CartPole (``bench/hot_path.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch as th
from stable_baselines3.common.torch_layers import FlattenExtractor
from torch import nn
from torch.nn.modules import module as torch_module
from torch.utils.hooks import RemovableHandle

from crl.policies.base import SubmoduleRegistrations

_MODULE_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
"""The hook dictionaries ``nn.Module._call_impl`` looks at before it calls ``forward``."""


def _global_hooks() -> list[dict]:
    return [
        torch_module._global_forward_hooks,
        torch_module._global_forward_pre_hooks,
        torch_module._global_backward_hooks,
        torch_module._global_backward_pre_hooks,
    ]


def chained_layers(module: nn.Module) -> list[nn.Module]:
    """Modules whose ``forward`` methods, applied in turn, compute ``module.forward``.

    An ``nn.Sequential`` is its layers, SB3's ``FlattenExtractor`` is its ``nn.Flatten``; any other
    module stands for itself (its own ``forward`` calls its children the usual way).
    """
    if type(module) is nn.Sequential:
        return [layer for child in module for layer in chained_layers(child)]
    if type(module) is FlattenExtractor:
        return chained_layers(module.flatten)
    return [module]


class DirectLayers:
    """The layers of a network to run directly (:func:`chained_layers`), or ``None`` when that is not exact.

    The answer is kept until a hook is registered anywhere (``RemovableHandle`` counts every hook
    torch creates), a submodule is registered anywhere (the tree may have changed), or the hooks that
    made it ``None`` are all removed. A module compiled in place (``module.compile()``) after the answer
    was found is seen at the next of those events only; compile before the first ``predict()``.

    :param layers_of: the layers that compute a network's forward pass, ``None`` if the network is not
        one this path knows (e.g. a subclass with its own ``forward``)
    """

    def __init__(self, layers_of: Callable[[nn.Module], list[nn.Module] | None]) -> None:
        self._layers_of = layers_of
        self._network: nn.Module | None = None
        self._key: tuple[int, int] = (-1, -1)
        self._layers: list[nn.Module] | None = None
        self._hooks_in_the_way: list[dict] = []

    def __call__(self, network: nn.Module) -> list[nn.Module] | None:
        key = (RemovableHandle.next_id, SubmoduleRegistrations.count)
        hooks_removed = bool(self._hooks_in_the_way) and not any(self._hooks_in_the_way)
        if network is not self._network or key != self._key or hooks_removed:
            self._network, self._key = network, key
            self._layers = self._find_layers(network)
        if th._C._get_tracing_state():
            return None
        return self._layers

    def _find_layers(self, network: nn.Module) -> list[nn.Module] | None:
        modules = list(network.modules())
        self._hooks_in_the_way = [hooks for hooks in _global_hooks() if hooks]
        self._hooks_in_the_way += [getattr(m, name) for m in modules for name in _MODULE_HOOKS if getattr(m, name)]
        if self._hooks_in_the_way:
            return None
        called_otherwise = any(
            type(module).__call__ is not nn.Module.__call__ or module._compiled_call_impl is not None
            for module in modules
        )
        return None if called_otherwise else self._layers_of(network)
