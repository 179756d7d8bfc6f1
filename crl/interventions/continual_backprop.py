"""Continual backpropagation (Dohare et al. 2024, "Loss of plasticity in deep continual learning")."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch as th
from pydantic import Field, PrivateAttr
from torch import nn
from torch.nn.utils import parametrize

from crl.hooks import GradientStep
from crl.interventions.base import Intervention
from crl.interventions.network import Reinitializer, UnitLayer, check_unit_recycling, unit_layers
from crl.interventions.redo import check_networks
from crl.policies.module_tree import SubmoduleRegistrations

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm


def loss_networks(algo: BaseAlgorithm, loss_name: str) -> list[str]:
    """The trained networks whose parameters the loss ``loss_name`` updates."""
    networks = list(algo.policy.network_prefixes())  # type: ignore[operator]
    if loss_name == "critic":
        return [name for name in networks if name.startswith("qf")]
    if loss_name == "actor":
        return ["actor"]
    return networks


class ContinualBackprop(Intervention):
    """Continually replace a small fraction of low-utility mature units with fresh ones.

    Per hidden unit a running utility ``u <- eta * u + (1 - eta) * mean_batch|h| * mean|W_out|`` is
    updated after every optimizer step from that step's training batch (``h`` the unit's
    post-activation, ``W_out`` its outgoing weights). Units older than ``maturity`` updates are
    eligible; each update, ``replacement_rate * #eligible`` units are due per layer, accumulated
    fractionally, and the due number of lowest-utility eligible units get fresh incoming weights, zero
    bias and zero outgoing weights (so the output is unchanged, unless a LayerNorm mixes the fresh
    unit with the others), their moments zeroed, utility and age
    reset. Logs ``interventions/continual_backprop/replaced`` (units replaced in the last ``train()``)
    and ``.../replaced_total``.

    :param replacement_rate: rho, fraction of eligible units replaced per update (RL: 1e-4)
    :param maturity: m, updates a unit must survive before it can be replaced (RL: 10_000)
    :param decay: eta, the utility's running-average decay
    :param networks: the trained networks to treat (default: all)
    """

    name = "continual_backprop"
    needs_features: ClassVar[bool] = True
    transient: ClassVar[tuple[str, ...]] = ("_layers", "_tracks")

    replacement_rate: float = Field(default=1e-4, ge=0.0, le=1.0)
    maturity: int = Field(default=10_000, ge=0)
    decay: float = Field(default=0.99, ge=0.0, lt=1.0)
    networks: list[str] | None = None

    _utility: dict[str, th.Tensor] = PrivateAttr(default_factory=dict)
    _age: dict[str, th.Tensor] = PrivateAttr(default_factory=dict)
    _due: dict[str, float] = PrivateAttr(default_factory=dict)
    _updates: dict[str, int] = PrivateAttr(default_factory=dict)
    _replaced: int = PrivateAttr(default=0)
    _replaced_total: int = PrivateAttr(default=0)
    _layers: list[UnitLayer] | None = PrivateAttr(default=None)
    _tracks: dict[str, list[_UnitTrack]] = PrivateAttr(default_factory=dict)
    _structure: int = PrivateAttr(default=0)

    def on_setup(self, algo: BaseAlgorithm) -> None:
        check_networks(self.name, self.networks, algo)
        check_unit_recycling(self.name, algo.policy)
        self._layers = None

    def on_train_start(self, algo: BaseAlgorithm) -> None:
        # Another intervention (plasticity injection) may have changed the networks' structure; any
        # change registers a submodule, and reading that count costs nothing where walking the
        # policy's modules took 8 us per train() (DQN's is one 0.66 ms gradient step).
        structure = SubmoduleRegistrations.count
        if structure != self._structure:
            self._layers, self._structure = None, structure

    def _unit_layers(self, algo: BaseAlgorithm) -> list[UnitLayer]:
        if self._layers is None:
            self._layers = unit_layers(algo.policy, self.networks)  # type: ignore[arg-type]
            self._tracks = {}
            for layer in self._layers:
                key = _key(layer)
                device = layer.incoming.weight.device
                self._utility.setdefault(key, th.zeros(layer.n_units, device=device))
                self._age.setdefault(key, th.zeros(layer.n_units, dtype=th.long, device=device))
                self._due.setdefault(key, 0.0)
        return self._layers

    def _loss_tracks(self, algo: BaseAlgorithm, loss_name: str) -> list[_UnitTrack]:
        """The layers the loss ``loss_name`` trains, with what their utility update reads, kept per loss
        (about 60 us of Python per DQN gradient step went into finding them again)."""
        layers = self._unit_layers(algo)
        if loss_name not in self._tracks:
            networks = loss_networks(algo, loss_name)
            self._tracks[loss_name] = [_UnitTrack(layer) for layer in layers if layer.network in networks]
        return self._tracks[loss_name]

    @th.no_grad()
    def after_optimizer_step(self, algo: BaseAlgorithm, step: GradientStep) -> None:
        # The private attributes from pydantic's dictionary at once: each ``self._name`` goes through
        # BaseModel.__getattr__ (about 1.5 us), and this runs at every gradient step.
        private = self.__pydantic_private__
        assert private is not None
        tracks = private["_tracks"].get(step.loss_name) if private["_layers"] is not None else None
        if tracks is None:
            tracks = self._loss_tracks(algo, step.loss_name)
        reinit: Reinitializer | None = None
        decay, maturity = self.decay, self.maturity
        utilities, ages, updates, features = private["_utility"], private["_age"], private["_updates"], step.features
        for track in tracks:
            recorded = features.get(track.network, {}).get(track.name)
            if recorded is None:
                continue
            key, layer = track.key, track.layer
            utility, age = utilities[key], ages[key]
            mean_abs_h = track.mean_activity(recorded.post.detach())
            utility.mul_(decay).add_(mean_abs_h * track.outgoing_magnitude(), alpha=1.0 - decay)
            age += 1
            updates[key] = updates.get(key, 0) + 1
            if updates[key] <= maturity:  # no unit can be mature yet: skip the bookkeeping
                continue
            eligible = age > maturity
            self._due[key] += self.replacement_rate * int(eligible.sum())
            n_replace = math.floor(self._due[key])
            if n_replace == 0:
                continue
            self._due[key] -= n_replace
            n_replace = min(n_replace, int(eligible.sum()))
            candidates = th.where(eligible, utility, th.full_like(utility, math.inf))
            units = th.topk(candidates, n_replace, largest=False).indices
            reinit = reinit or Reinitializer(algo)
            reinit.recycle(layer, units)
            utility[units] = 0.0
            age[units] = 0
            self._replaced += n_replace
            self._replaced_total += n_replace

    def on_train_end(self, algo: BaseAlgorithm) -> None:
        self.record(algo, "replaced", self._replaced)
        self.record(algo, "replaced_total", self._replaced_total)
        self._replaced = 0


def _key(layer: UnitLayer) -> str:
    return f"{layer.network}/{layer.name}"


class _UnitTrack:
    """What the utility update reads of one hidden layer, found once per structure of the networks.

    ``mean_activity(h)`` is ``mean_batch |h|`` per unit and ``outgoing_magnitude()`` the mean ``|W_out|``
    of :meth:`UnitLayer.outgoing_magnitude`. For a unit feeding one plain linear layer (no CReLU, no
    parametrization, the common MLP case) the latter is that layer's columns' mean, ``|W[:, units]|``
    averaged over rows, read from the layer's parameter dictionary at each call: the same reduction
    without the general path's reshapes and lookups, bit for bit (``tests/test_interventions_reinit.py``).
    """

    __slots__ = ("halves", "key", "layer", "name", "network", "outgoing_magnitude")

    def __init__(self, layer: UnitLayer) -> None:
        self.layer, self.key, self.network, self.name = layer, _key(layer), layer.network, layer.name
        self.halves = layer.halves
        (reader, *others) = layer.outgoing
        # one column per unit: a linear layer's units (a conv channel feeds a block of columns), no CReLU
        plain = not others and type(reader) is nn.Linear and isinstance(layer.incoming, nn.Linear) and self.halves == 1
        if plain and not parametrize.is_parametrized(reader, "weight"):
            parameters, start, stop = reader._parameters, layer.offset, layer.offset + layer.n_units
            self.outgoing_magnitude = lambda: parameters["weight"][:, start:stop].abs().mean(dim=0)  # type: ignore[index]
        else:
            self.outgoing_magnitude = layer.outgoing_magnitude

    def mean_activity(self, h: th.Tensor) -> th.Tensor:
        """``mean |h|`` of each unit over the batch (and a conv channel's positions; both CReLU halves)."""
        per_channel = h.abs().mean(dim=[0, *range(2, h.dim())])
        return per_channel if self.halves == 1 else self.layer.unit_view(per_channel).mean(dim=0)
