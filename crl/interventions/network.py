"""The structure interventions operate on: hidden units, their weights, fresh initial values, targets.

A hidden unit (ReDo, continual backprop) owns a row of its incoming Linear/Conv2d layer (weight and
bias), its LayerNorm affine entries when a LayerNorm sits next to its activation, and the columns of
every layer that reads it (its outgoing weights). Across a conv -> linear boundary a channel's
outgoing weights are the columns at every spatial position of that channel in the flattened input
(SPEC.md §6); behind a concatenating activation (CReLU ``[relu(x), relu(-x)]``, Fourier
``[sin(x), cos(x)]``) a unit feeds two halves, channels ``i`` and ``i + D``. The last layer of
a branch of SB3's ``CombinedExtractor`` (dict observations: a NatureCNN per image key) is read at its
branch's place in the concatenation of all branches, after the branches before it.

:class:`Reinitializer` performs the edits and keeps the algorithm consistent (SPEC.md §2): edited
entries get their optimizer moments zeroed (the whole state, step included, for whole tensors) and
the same edit is copied into the target networks.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch as th
from sb3_contrib.common.torch_layers import BatchRenorm
from stable_baselines3.common.preprocessing import get_flattened_obs_dim
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, CombinedExtractor
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from torch import nn
from torch.nn.utils import parametrize

from crl.interventions.base import InterventionError
from crl.metrics.probe_batch import draw_probe_batch
from crl.optim import algorithm_optimizers, reset_parameter_columns_state, reset_parameter_state
from crl.policies.layers import ACTIVATION_TYPES, ConcatenatedActivation, InjectedHead

if TYPE_CHECKING:
    from gymnasium import spaces
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.policies import BasePolicy

    from crl.policies.base import ContinualPolicyMixin

WEIGHT_LAYERS = (nn.Linear, nn.Conv2d)
WeightLayer = nn.Linear | nn.Conv2d


@dataclass(frozen=True)
class UnitLayer:
    """One hidden layer seen as units, with every parameter a unit owns.

    :param network: name of the (first) network the layer belongs to
    :param name: the layer's name in that network (``layer<k>``)
    :param activation: the activation module (its output is the layer's post-activation)
    :param incoming: the Linear/Conv2d layer computing the units
    :param norm: the LayerNorm next to the activation, if any
    :param outgoing: every Linear/Conv2d layer reading the layer's output
    :param offset: the first input of each outgoing layer that reads this layer: 0, or the layer's
        place in a ``CombinedExtractor``'s concatenation when it ends a branch
    """

    network: str
    name: str
    activation: nn.Module
    incoming: WeightLayer
    norm: nn.LayerNorm | None
    outgoing: tuple[WeightLayer, ...]
    offset: int = 0

    @property
    def n_units(self) -> int:
        return int(weight_of(self.incoming).shape[0])

    @property
    def halves(self) -> int:
        """How many output channels each unit feeds: 2 behind a concatenating activation (CReLU,
        Fourier), else 1."""
        return 2 if isinstance(self.activation, ConcatenatedActivation) else 1

    def _block(self, layer: WeightLayer) -> int:
        """How many of ``layer``'s input columns one output channel feeds.

        A linear layer's unit is one column even where the reader takes more inputs after it (SAC's
        critics append the actions); a conv channel flattened into a linear layer is one column per
        spatial position, and the flattened map is all that layer reads.
        """
        if isinstance(self.incoming, nn.Linear):
            return 1
        return int(weight_of(layer).shape[1]) // (self.n_units * self.halves)

    def columns(self, layer: WeightLayer, units: th.Tensor) -> th.Tensor:
        """Indices of ``layer``'s input dimension that read the given unit indices."""
        block = self._block(layer)
        channels = units[:, None] + self.n_units * th.arange(self.halves, device=units.device)[None, :]
        return self.offset + (channels[..., None] * block + th.arange(block, device=units.device)).flatten()

    def unit_view(self, per_channel: th.Tensor) -> th.Tensor:
        """``halves x n_units`` view of a per-output-channel quantity (CReLU, Fourier: both halves of
        each unit)."""
        return per_channel.reshape(self.halves, self.n_units)

    def outgoing_weights(self, layer: WeightLayer) -> th.Tensor:
        """The part of ``layer``'s weight that reads this layer, as ``out x halves x units x rest``."""
        width = self.n_units * self.halves * self._block(layer)
        weight = weight_of(layer).detach()[:, self.offset : self.offset + width]
        return weight.reshape(weight.shape[0], self.halves, self.n_units, -1)

    def outgoing_magnitude(self) -> th.Tensor:
        """Mean ``|W_out|`` of each unit over all its outgoing weights.

        For units that feed one plain linear layer, one column each (no CReLU or Fourier, no conv channel's
        block, no parametrization: the common MLP case), that layer's columns' mean over rows, read
        from its parameter dictionary: continual backprop asks at every gradient step, and this is the
        general path's reduction, bit for bit (``tests/test_interventions_reinit.py``), without its
        reshapes and lookups.
        """
        plain = self._plain_reader
        if plain is not None:
            parameters, start, stop = plain
            return parameters["weight"][:, start:stop].detach().abs().mean(dim=0)
        per_layer = [self.outgoing_weights(layer).abs().mean(dim=(0, 1, 3)) for layer in self.outgoing]
        return per_layer[0] if len(per_layer) == 1 else th.stack(per_layer).mean(dim=0)

    @cached_property
    def _plain_reader(self) -> tuple[dict[str, Any], int, int] | None:
        """The parameter dictionary of the one plain linear layer reading these units, and their columns."""
        (reader, *others) = self.outgoing
        plain = not others and type(reader) is nn.Linear and isinstance(self.incoming, nn.Linear) and self.halves == 1
        if not plain or parametrize.is_parametrized(reader, "weight"):
            return None
        return reader._parameters, self.offset, self.offset + self.n_units

    def mean_activity(self, post: th.Tensor) -> th.Tensor:
        """``mean |h|`` of each unit over the batch (and a conv channel's positions; both halves behind
        a CReLU or Fourier activation)."""
        per_channel = post.abs().mean(dim=[0, *range(2, post.dim())])
        return per_channel if self.halves == 1 else self.unit_view(per_channel).mean(dim=0)


def weight_of(layer: WeightLayer) -> th.Tensor:
    """The trained weight parameter of a layer: ``weight``, or the original one under a parametrization.

    A spectrally normalised layer's ``weight`` is computed from ``parametrizations.weight.original``
    (reading it in training mode even runs a power-iteration step): edits go to the original.
    """
    if parametrize.is_parametrized(layer, "weight"):
        return layer.parametrizations.weight.original  # type: ignore[union-attr,return-value]
    return layer.weight


def _leaf_layers(roots: Iterable[nn.Module], skip: set[nn.Module]) -> list[nn.Module]:
    """Weight layers, LayerNorms, activations, injected heads and ``CombinedExtractor``s under ``roots``,
    in forward order (an injected head's and a ``CombinedExtractor``'s insides are walked on their own)."""
    found: list[nn.Module] = []
    inside: set[nn.Module] = set()
    for root in roots:
        for module in root.modules():
            if module in inside or module in skip:
                inside.update(module.modules())
                continue
            if isinstance(module, (InjectedHead, CombinedExtractor)):
                inside.update(module.modules())
                found.append(module)
            elif isinstance(module, (*WEIGHT_LAYERS, nn.LayerNorm, *ACTIVATION_TYPES)):
                found.append(module)
    return found


def _first_weight_layers(module: nn.Module) -> list[WeightLayer]:
    """The layers that read a module's input: itself, each branch of an injected head, or its first layer."""
    if isinstance(module, WEIGHT_LAYERS):
        return [module]
    if isinstance(module, InjectedHead):
        return [layer for branch in module.branches() for layer in _first_weight_layers(branch)]
    for child in module.modules():
        if isinstance(child, WEIGHT_LAYERS):
            return [child]
    return []


@dataclass(frozen=True)
class _Units:
    """A hidden layer whose readers are not reached yet, while :class:`_UnitWiring` walks a network."""

    activation: nn.Module
    incoming: WeightLayer
    norm: nn.LayerNorm | None = None
    offset: int = 0


class _UnitWiring:
    """Walks a network's layers in forward order and records which layers read each hidden layer.

    :param names: activation -> its hidden layer's name in ``network``
    :param network: the network walked
    :param observation_space: the policy's (sizes the vector keys of a ``CombinedExtractor``)
    :param found: activation -> its :class:`UnitLayer`, shared by the walks of every network
    :param selected: whether the caller asked for ``network``'s layers (else the walk only adds readers)
    :param wanted: the activations of the selected networks, filled by the walk
    """

    def __init__(
        self,
        names: dict[nn.Module, str],
        network: str,
        observation_space: spaces.Space,
        found: dict[nn.Module, UnitLayer],
        selected: bool,
        wanted: set[nn.Module],
    ) -> None:
        self.names, self.network, self.observation_space = names, network, observation_space
        self.found, self.selected, self.wanted = found, selected, wanted

    def walk(self, items: Sequence[nn.Module | list[nn.Module]]) -> list[_Units]:
        """Wire every hidden layer in ``items`` to the next weight layer(s); the layers left unread at the end."""
        pending: list[_Units] = []
        incoming: WeightLayer | None = None
        norm: nn.LayerNorm | None = None
        for item in items:
            if isinstance(item, CombinedExtractor):
                pending, incoming, norm = self._branch_ends(item), None, None
            elif isinstance(item, (list, *WEIGHT_LAYERS, InjectedHead)):
                heads_or_layer = item if isinstance(item, list) else [item]
                readers = tuple(layer for head in heads_or_layer for layer in _first_weight_layers(head))
                for units in pending:
                    self._read_by(units, readers)
                pending, norm = [], None
                incoming = item if isinstance(item, WEIGHT_LAYERS) else None
            elif isinstance(item, nn.LayerNorm):
                if pending:  # after the activation ("post" placement)
                    pending[-1] = replace(pending[-1], norm=item)
                else:
                    norm = item
            elif incoming is not None:  # an activation
                pending.append(_Units(item, incoming, norm))
                norm = None
                if self.selected:
                    self.wanted.add(item)
        return pending

    def _branch_ends(self, extractor: CombinedExtractor) -> list[_Units]:
        """Walk each branch on its own; the last layer of each is read at its branch's offset."""
        ends: list[_Units] = []
        offset = 0
        for key, branch in extractor.extractors.items():
            ends += [replace(units, offset=offset) for units in self.walk(_leaf_layers([branch], set()))]
            if isinstance(branch, BaseFeaturesExtractor):
                offset += branch.features_dim
            else:  # SB3 flattens a vector key
                offset += get_flattened_obs_dim(self.observation_space[key])  # type: ignore[index]
        return ends

    def _read_by(self, units: _Units, readers: tuple[WeightLayer, ...]) -> None:
        known = self.found.get(units.activation)
        if known is None:
            name = self.names[units.activation]
            self.found[units.activation] = UnitLayer(
                self.network, name, units.activation, units.incoming, units.norm, readers, units.offset
            )
        else:
            extra = tuple(layer for layer in readers if layer not in known.outgoing)
            self.found[units.activation] = replace(known, norm=units.norm, outgoing=known.outgoing + extra)


def unit_layers(policy: ContinualPolicyMixin, networks: Sequence[str] | None = None) -> list[UnitLayer]:
    """Every hidden layer of the given (default: all) trained networks as a :class:`UnitLayer`.

    A layer shared by several networks (e.g. PPO's shared CNN extractor) appears once, named as in
    the first of ``networks`` that has it, with the outgoing layers of all networks, selected or not:
    a recycled unit's outgoing weights are zeroed in every layer that reads it.
    """
    prefixes = policy.network_prefixes()
    outputs = policy.output_layers()
    selected = list(prefixes) if networks is None else list(networks)
    found: dict[nn.Module, UnitLayer] = {}
    wanted: set[nn.Module] = set()
    for network in [*selected, *(other for other in prefixes if other not in selected)]:
        names = {layer.activation: layer.name for layer in policy.hidden_layers([network])[network]}
        heads = [policy.get_submodule(path) for path in outputs.get(network, [])]  # type: ignore[attr-defined]
        roots = [policy.get_submodule(prefix) for prefix in prefixes[network]]  # type: ignore[attr-defined]
        wiring = _UnitWiring(names, network, policy.observation_space, found, network in selected, wanted)  # type: ignore[attr-defined]
        wiring.walk([*_leaf_layers(roots, set(heads)), heads])
    return [layer for activation, layer in found.items() if activation in wanted]


def check_hidden_layers(name: str, policy: ContinualPolicyMixin, networks: Sequence[str], needs: str) -> None:
    """Refuse networks without a hidden layer (``net_arch=[]`` on vector observations).

    :param name: the intervention, for the message
    :param policy: the policy
    :param networks: the networks the intervention acts on
    :param needs: what the intervention needs a hidden layer for, for the message
    """
    layers = policy.hidden_layers(list(networks))
    empty = [network for network in networks if not layers.get(network)]
    if empty:
        raise InterventionError(
            f"intervention {name!r} needs {needs}, but network(s) {empty} have no hidden layer "
            "(net_arch=[]); give them at least one hidden layer (e.g. net_arch=[64]) or leave it out"
        )


def check_single_chain(name: str, policy: nn.Module, layers: Iterable[UnitLayer], hint: str = "") -> None:
    """Refuse a head that reaches into the parallel branches of SB3's ``CombinedExtractor``.

    With dict observations (``MultiInputPolicy``) each image key has its own NatureCNN branch. "The
    last k layers" of such a network is one layer per branch at some depths, and the head a reset or
    an injection replaces must be one chain of layers. Vector keys are only flattened, so a dict of
    vectors has no layers there and passes. (ReDo and continual backprop edit single units and are
    wired through the branches: :class:`UnitLayer`'s ``offset``.)

    :param name: the intervention, for the message
    :param policy: the policy whose layers are used
    :param layers: the unit layers the head would take in
    :param hint: another way to the intervention's end, appended to the advice
    """
    branched = {m for module in policy.modules() if isinstance(module, CombinedExtractor) for m in module.modules()}
    inside = [f"{layer.network}/{layer.name}" for layer in layers if layer.incoming in branched]
    if inside:
        raise InterventionError(
            f"intervention {name!r}: its head would take in hidden layers {inside}, which sit in the parallel "
            "branches of a CombinedExtractor (dict observations with image keys), so the head would not be "
            f"one chain of layers: use a smaller head_layers{hint}"
        )


def fresh_policy(policy: BasePolicy) -> BasePolicy:
    """A newly initialised policy of the same class and constructor arguments (draws from torch's RNG).

    This is exactly the algorithm's own initialisation scheme (e.g. PPO's orthogonal init with its
    per-layer gains), so re-initialised parts match what the run started from in distribution. Where a
    plasticity injection replaced a head, the fresh policy has an :class:`InjectedHead` there too,
    whose three branches all start from the fresh head (so its output is the fresh head's): every
    parameter of ``policy`` has a fresh value under the same name.
    """
    fresh = type(policy)(**policy._get_constructor_parameters()).to(policy.device)
    for path, head in [(path, m) for path, m in policy.named_modules() if isinstance(m, InjectedHead)]:
        length = len(head.old) if isinstance(head.old, nn.Sequential) else 1
        fresh_head = take_head(fresh, path, length)
        put_head(fresh, path, length, InjectedHead(fresh_head, copy.deepcopy(fresh_head)))
    return fresh


def take_head(policy: nn.Module, path: str, length: int) -> nn.Module:
    """The module at ``path``, or the ``length`` Sequential items starting there as one Sequential."""
    if length == 1:
        return policy.get_submodule(path)
    parent_path, _, index = path.rpartition(".")
    parent = cast("nn.Sequential", policy.get_submodule(parent_path))
    return nn.Sequential(*list(parent)[int(index) : int(index) + length])


def put_head(policy: nn.Module, path: str, length: int, module: nn.Module) -> None:
    """Put ``module`` at ``path`` in place of the module there, or of the Sequential's items from there on."""
    parent_path, _, name = path.rpartition(".")
    parent = policy.get_submodule(parent_path) if parent_path else policy
    if length == 1:
        setattr(parent, name, module)
        return
    # Replace the tail of the Sequential in place, so references to it (SAC's q_networks) stay valid.
    for key in list(parent._modules)[int(name) :]:
        del parent._modules[key]
    parent.add_module(name, module)


RUNNING_STATISTICS_LAYERS: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._NormBase, BatchRenorm)
"""Layers that keep running statistics in buffers: torch's batch and instance norms, sb3-contrib's BatchRenorm."""


def check_unit_recycling(name: str, policy: nn.Module) -> None:
    """Refuse an intervention that recycles units on a policy where that would change its outputs."""
    problem = getattr(policy, "unit_recycling_problem", lambda: None)()
    if problem is not None:
        raise InterventionError(f"intervention {name!r} cannot recycle units of {type(policy).__name__}: {problem}")


def target_networks(policy: nn.Module) -> dict[str, str]:
    """Attribute of a trained network -> attribute of its target copy, as the policy declares them.

    A crl policy names its own (``q_net_target``, ``critic_target``, sb3-contrib's
    ``quantile_net_target``); another policy gets SB3's two names where it has them.
    """
    declared = getattr(policy, "target_networks", None)
    if callable(declared):
        return cast("dict[str, str]", declared())
    return {"q_net": "q_net_target", "critic": "critic_target"}


def target_parameters(algo: BaseAlgorithm) -> dict[th.Tensor, th.Tensor]:
    """Online parameter -> the target network's parameter at the same place (DQN, SAC, QR-DQN, TQC)."""
    policy = algo.policy
    mapping: dict[th.Tensor, th.Tensor] = {}
    for online_name, target_name in target_networks(policy).items():
        online, target = getattr(policy, online_name, None), getattr(policy, target_name, None)
        if isinstance(online, nn.Module) and isinstance(target, nn.Module):
            targets = dict(target.named_parameters())
            for name, param in online.named_parameters():
                if name in targets:
                    mapping[param] = targets[name]
    return mapping


class Reinitializer:
    """Edits parameters of an algorithm's networks and keeps its optimizers and target networks consistent.

    Create one per intervention event; it builds a fresh policy (for fresh initial values) only if
    asked for one.

    :param algo: the algorithm whose networks are edited
    """

    def __init__(self, algo: BaseAlgorithm) -> None:
        self.policy = algo.policy
        self.optimizers = algorithm_optimizers(algo)
        self.targets = target_parameters(algo)
        self._names: dict[th.Tensor, str] = {param: name for name, param in self.policy.named_parameters()}
        self._fresh_policy: nn.Module | None = None
        self._fresh: dict[str, th.Tensor] | None = None

    def owns(self, parameter: th.Tensor) -> bool:
        """Whether ``parameter`` belongs to the policy (and so has a fresh value)."""
        return parameter in self._names

    def fresh(self, parameter: th.Tensor) -> th.Tensor:
        """A fresh initial value for ``parameter`` (one fresh policy per :class:`Reinitializer`)."""
        if self._fresh is None:
            self._fresh = dict(self._fresh_network().named_parameters())
        return self._fresh[self._names[parameter]].detach()

    def _fresh_network(self) -> nn.Module:
        if self._fresh_policy is None:
            self._fresh_policy = fresh_policy(self.policy)
        return self._fresh_policy

    @th.no_grad()
    def reset_running_statistics(self) -> int:
        """Give every normalisation layer's running statistics (BatchNorm's, BatchRenorm's) their fresh values.

        They are buffers, not parameters: a full reset must reset them too, or the fresh weights would be
        normalised with the old network's statistics (and a BatchRenorm's warm-up count kept).

        :return: the number of layers reset
        """
        fresh = dict(self._fresh_network().named_modules())
        layers = [
            (name, module)
            for name, module in self.policy.named_modules()
            if isinstance(module, RUNNING_STATISTICS_LAYERS) and name in fresh
        ]
        for name, module in layers:
            for buffer_name, buffer in module.named_buffers(recurse=False):
                buffer.copy_(fresh[name].get_buffer(buffer_name))
        return len(layers)

    @th.no_grad()
    def set_rows(self, parameter: th.Tensor, rows: th.Tensor, values: th.Tensor | float) -> None:
        """``parameter[rows] = values``; the rows' optimizer moments are zeroed; targets follow."""
        parameter[rows] = values if isinstance(values, float) else values.to(parameter.dtype)
        for optimizer in self.optimizers:
            reset_parameter_state(optimizer, parameter, rows)
        self._sync(parameter, (rows,))

    @th.no_grad()
    def set_columns(self, parameter: th.Tensor, columns: th.Tensor, value: float) -> None:
        """``parameter[:, columns] = value``; the columns' optimizer moments are zeroed; targets follow."""
        parameter[:, columns] = value
        for optimizer in self.optimizers:
            reset_parameter_columns_state(optimizer, parameter, columns)
        self._sync(parameter, (slice(None), columns))

    @th.no_grad()
    def set_tensor(self, parameter: th.Tensor, values: th.Tensor, reset_state: bool = True) -> None:
        """Overwrite a whole tensor; its optimizer state is dropped (``reset_state``); targets follow."""
        parameter.copy_(values)
        if reset_state:
            for optimizer in self.optimizers:
                reset_parameter_state(optimizer, parameter)
        self._sync(parameter, (slice(None),))

    def recycle(self, layer: UnitLayer, units: th.Tensor) -> None:
        """Fresh incoming weights, zero bias, fresh LayerNorm affine and zero outgoing weights for ``units``.

        With zero outgoing weights the network's output is unchanged (when no LayerNorm mixes units).

        :param units: indices of the units to recycle
        """
        if units.numel() == 0:
            return
        weight = weight_of(layer.incoming)
        self.set_rows(weight, units, self.fresh(weight)[units])
        if layer.incoming.bias is not None:
            self.set_rows(layer.incoming.bias, units, 0.0)
        if layer.norm is not None and layer.norm.elementwise_affine:
            # Before a CReLU or Fourier the norm has one entry per unit, after it one per half; conv norms
            # are (C, H, W) and a unit is a row of the first dimension.
            halves = layer.norm.normalized_shape[0] // layer.n_units
            rows = (units[:, None] + layer.n_units * th.arange(halves, device=units.device)).flatten()
            for param in (layer.norm.weight, layer.norm.bias):
                if param is not None:
                    self.set_rows(param, rows, self.fresh(param)[rows])
        for reader in layer.outgoing:
            self.set_columns(weight_of(reader), layer.columns(reader, units), 0.0)

    def _sync(self, parameter: th.Tensor, index: tuple[Any, ...]) -> None:
        target = self.targets.get(parameter)
        if target is not None:
            with th.no_grad():
                target[index] = parameter[index]


def parameters_of(modules: Iterable[nn.Module]) -> list[th.Tensor]:
    """The distinct parameters of some modules, in order."""
    seen: dict[th.Tensor, None] = {}
    for module in modules:
        for param in module.parameters():
            seen.setdefault(param, None)
    return list(seen)


def probe_samples(algo: BaseAlgorithm, size: int) -> tuple[Any, int]:
    """``size`` samples of the algorithm's data (SB3 buffer samples) and the seed that drew them.

    The same draw as the metrics monitor's probe batch (replay buffer, or the rollout ``train()`` just
    used), but its seed comes from numpy's global generator: an intervention is part of training, so
    its draws follow the algorithm's seed and the same seed gives the same run. A computation on the
    batch that samples (SAC's actions in its losses) can seed itself with the returned seed.
    """
    seed = int(np.random.randint(2**31))
    return draw_probe_batch(algo, size, seed), seed


def probe_batch(algo: BaseAlgorithm, size: int) -> tuple[th.Tensor, th.Tensor | None]:
    """``size`` observations (and their actions, for off-policy critics) of :func:`probe_samples`."""
    batch, _ = probe_samples(algo, size)
    actions = batch.actions if isinstance(batch, ReplayBufferSamples) else None
    return batch.observations, actions
