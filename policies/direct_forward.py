"""Acting forward passes that call the layers' ``forward`` methods directly, when that is exact.

Calling a module (``module(x)``) goes through ``nn.Module._wrapped_call_impl`` and ``_call_impl``: they
look for a compiled variant, hooks on the module, global hooks and the tracing state, and only then call
``forward``, about 2 us of Python per module. DQN acts with a forward pass of its Q-network at every
environment step, through 9 modules for the MLP (Q-network, feature extractor, flatten, sequential,
3 linear layers, 2 activations). When no hook is registered on those modules or globally, none is compiled and
nothing is traced, ``module(x)`` is exactly ``module.forward(x)``, and :class:`DirectLayers` gives the
layers whose ``forward`` methods, applied in turn, compute the pass (a linear or LayerNorm layer's as
the torch call it makes: :func:`layer_step`). PPO's forward pass at every step
calls 15 modules of its two 64x64 MLPs below the policy (the action head stays a module call, made by
SB3's ``_get_action_dist_from_latent``), and so does its minibatch pass at every gradient step
(``evaluate_actions``). ``bench/hot_path.py`` times them.

The passes start from SB3's ``preprocess_obs`` result; for a ``Box`` space the policies' ``preprocessed``
(:mod:`crl.policies.base`) gives it without SB3's per-call check of the space's kind, and for uint8
frames divided in place of their float copy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import torch as th
from stable_baselines3.common.torch_layers import FlattenExtractor, NatureCNN
from torch import nn
from torch.nn import functional as F
from torch.nn.modules import module as torch_module
from torch.overrides import has_torch_function_variadic
from torch.utils.hooks import RemovableHandle

from crl.policies.features import RecorderHooks, is_recorder_hook
from crl.policies.module_tree import SubmoduleRegistrations

Step = Callable[[Any], Any]
"""One layer's part of a forward pass: ``layer.forward`` or the same computation, cheaper (:func:`layer_step`)."""

Layers = TypeVar("Layers")
"""How a network's forward pass is laid out in layers, e.g. one list, or a tuple of lists per path."""

_MODULE_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
"""The hook dictionaries ``nn.Module._call_impl`` looks at before it calls ``forward``."""


def _global_hooks() -> list[dict]:
    return [
        torch_module._global_forward_hooks,
        torch_module._global_forward_pre_hooks,
        torch_module._global_backward_hooks,
        torch_module._global_backward_pre_hooks,
    ]


def has_call_hooks(module: nn.Module) -> bool:
    """Whether calling ``module`` would run a hook of its own or a global one besides its ``forward``."""
    return any(_global_hooks()) or any(getattr(module, name) for name in _MODULE_HOOKS)


def chained_layers(module: nn.Module) -> list[Step]:
    """Steps that, applied in turn, compute ``module.forward``: one per layer (see :func:`layer_step`).

    An ``nn.Sequential`` is its layers, SB3's ``FlattenExtractor`` is its ``nn.Flatten``, SB3's
    ``NatureCNN`` is the layers of its ``cnn`` then of its ``linear`` (11 module calls fewer per pass); any
    other module, subclasses of those included, stands for itself (its own ``forward`` calls its
    children the usual way).
    """
    if type(module) is nn.Sequential:
        return [step for child in module for step in chained_layers(child)]
    if type(module) is FlattenExtractor:
        return chained_layers(module.flatten)
    if type(module) is NatureCNN:  # forward(x) = self.linear(self.cnn(x))
        return chained_layers(module.cnn) + chained_layers(module.linear)
    return [layer_step(module)]


def layer_step(layer: nn.Module) -> Step:
    """``layer.forward``, or for a linear or LayerNorm layer the same torch call made with less Python.

    ``nn.Linear.forward`` and ``nn.LayerNorm.forward`` read their weight and bias through
    ``nn.Module.__getattr__`` (0.6 us each), and ``nn.LayerNorm.forward`` then goes through the Python
    function ``F.layer_norm`` before the torch call. A step makes that call itself: ``F.linear`` or
    ``torch.layer_norm`` with the same arguments, the parameters read from the layer's dictionary and
    its other attributes from the layer at each call (a parameter replaced later is the one used).
    Where ``F.layer_norm`` would hand the call to ``__torch_function__`` (a tensor subclass or a torch
    function mode), the step calls it. Exactly these classes: a subclass, or a layer parametrized in
    place (spectral norm), keeps its ``forward``; so do other layers (a ReLU's step would save 0.05 us).
    A step is a bound method: :func:`step_layer` gives back its layer.
    """
    step_class = _STEPS.get(type(layer))
    return layer.forward if step_class is None else step_class(layer).run


def step_layer(step: Step) -> nn.Module:
    """The layer whose forward pass ``step`` (of :func:`layer_step`) computes."""
    owner = step.__self__  # type: ignore[attr-defined]
    return owner if isinstance(owner, nn.Module) else owner.layer


class _LayerStep:
    """A layer's forward pass as its torch call, with the parameters read from the layer's dictionary."""

    __slots__ = ("_parameters", "layer")

    layer: nn.Module

    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer
        self._parameters = layer._parameters

    def run(self, inputs: th.Tensor) -> th.Tensor:
        raise NotImplementedError


class _LinearStep(_LayerStep):
    """``nn.Linear.forward``: ``F.linear(input, weight, bias)`` (see :func:`layer_step`)."""

    def run(self, inputs: th.Tensor) -> th.Tensor:
        parameters = self._parameters
        return F.linear(inputs, parameters["weight"], parameters["bias"])  # type: ignore[arg-type]


class _LayerNormStep(_LayerStep):
    """``nn.LayerNorm.forward``: the ``torch.layer_norm`` call of ``F.layer_norm`` (see :func:`layer_step`).

    5.4 against 3.1 us for a LayerNorm over 120 units of one observation (median of 9).
    """

    layer: nn.LayerNorm

    def run(self, inputs: th.Tensor) -> th.Tensor:
        layer, weight, bias = self.layer, self._parameters["weight"], self._parameters["bias"]
        if has_torch_function_variadic(inputs, weight, bias):
            return F.layer_norm(inputs, layer.normalized_shape, weight, bias, layer.eps)  # type: ignore[arg-type]
        return th.layer_norm(inputs, layer.normalized_shape, weight, bias, layer.eps, th.backends.cudnn.enabled)


_STEPS: dict[type[nn.Module], Callable[[Any], _LayerStep]] = {
    nn.Linear: _LinearStep,
    nn.LayerNorm: _LayerNormStep,
}
"""The layer classes with a cheaper step, exactly (not their subclasses)."""


def run_layers(steps: list[Step], inputs: Any) -> Any:
    """``inputs`` through ``steps`` (:func:`chained_layers`), in turn.

    While a :class:`~crl.policies.features.FeatureRecorder` is open, each step's input and output go to
    the recorders of its layer, as the recorder's forward hook would have had them from a module call.
    """
    if RecorderHooks.recording:
        return _run_recording(steps, inputs)
    for step in steps:
        inputs = step(inputs)
    return inputs


def _run_recording(steps: list[Step], inputs: Any) -> Any:
    recording = RecorderHooks.recording
    for step in steps:
        outputs = step(inputs)
        layer = step_layer(step)
        for recorder in recording.get(layer, ()):
            recorder.record(layer, inputs, outputs)
        inputs = outputs
    return inputs


def _other_than_recorders(hooks: dict) -> bool:
    """Whether a module's hook dictionary holds a hook that is not a feature recorder's."""
    return any(not is_recorder_hook(hook) for hook in hooks.values())


class DirectLayers(Generic[Layers]):
    """The layers of a network to run directly (:func:`chained_layers`), or ``None`` when that is not exact.

    The answer is kept until a hook is registered anywhere (``RemovableHandle`` counts every hook
    torch creates; a :class:`~crl.policies.features.FeatureRecorder`'s are left out, since
    :func:`run_layers` records for it), a submodule is registered anywhere (the tree may have changed),
    or the hooks that made it ``None`` are all removed. A module compiled in place
    (``module.compile()``) after the answer was found is seen at the next of those events only;
    compile before the first ``predict()``.

    :param layers_of: the layers that compute a network's forward pass, ``None`` if the network is not
        one this path knows (e.g. a subclass with its own ``forward``)
    """

    def __init__(self, layers_of: Callable[[nn.Module], Layers | None]) -> None:
        self._layers_of = layers_of
        self._network: nn.Module | None = None
        self._key: tuple[int, int] = (-1, -1)
        self._layers: Layers | None = None
        self._hooks_in_the_way: list[dict] = []

    def __getstate__(self) -> dict[str, Any]:
        # A copy finds its own layers (and would otherwise carry hook dictionaries that may not pickle)
        return {"layers_of": self._layers_of}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["layers_of"])  # type: ignore[misc]

    def __call__(self, network: nn.Module) -> Layers | None:
        # A recorder's hooks are not in the way (run_layers records for it): they do not count.
        key = (RemovableHandle.next_id - RecorderHooks.registered, SubmoduleRegistrations.count)
        hooks_removed = bool(self._hooks_in_the_way) and not any(self._hooks_in_the_way)
        if network is not self._network or key != self._key or hooks_removed:
            self._network, self._key = network, key
            self._layers = self._find_layers(network)
        if th._C._get_tracing_state():
            return None
        return self._layers

    def _find_layers(self, network: nn.Module) -> Layers | None:
        modules = list(network.modules())
        self._hooks_in_the_way = [hooks for hooks in _global_hooks() if hooks]
        self._hooks_in_the_way += [
            hooks for m in modules for name in _MODULE_HOOKS if _other_than_recorders(hooks := getattr(m, name))
        ]
        if self._hooks_in_the_way:
            return None
        called_otherwise = any(
            type(module).__call__ is not nn.Module.__call__ or module._compiled_call_impl is not None
            for module in modules
        )
        return None if called_otherwise else self._layers_of(network)


def kept_direct_layers(
    owner: Any, attribute: str, layers_of: Callable[[nn.Module], Layers | None]
) -> DirectLayers[Layers]:
    """``owner``'s :class:`DirectLayers` in ``attribute``, built at the first call.

    Kept on the owner (a policy), so that its copies and pickles find their own layers.
    """
    direct: DirectLayers[Layers] | None = getattr(owner, attribute)
    if direct is None:
        direct = DirectLayers(layers_of)
        setattr(owner, attribute, direct)
    return direct
