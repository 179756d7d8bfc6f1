"""Continual backpropagation (Dohare et al. 2024, "Loss of plasticity in deep continual learning")."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch as th
from pydantic import Field, PrivateAttr

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
    _tracks: dict[str, list[tuple[str, UnitLayer]]] = PrivateAttr(default_factory=dict)
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

    def _loss_layers(self, algo: BaseAlgorithm, loss_name: str) -> list[tuple[str, UnitLayer]]:
        """The layers the loss ``loss_name`` trains, with their keys, kept per loss (about 60 us of
        Python per DQN gradient step went into finding them again)."""
        layers = self._unit_layers(algo)
        if loss_name not in self._tracks:
            networks = loss_networks(algo, loss_name)
            self._tracks[loss_name] = [(_key(layer), layer) for layer in layers if layer.network in networks]
        return self._tracks[loss_name]

    @th.no_grad()
    def after_optimizer_step(self, algo: BaseAlgorithm, step: GradientStep) -> None:
        # The private attributes from pydantic's dictionary at once: each ``self._name`` goes through
        # BaseModel.__getattr__ (about 1.5 us), and this runs at every gradient step.
        private = self.__pydantic_private__
        assert private is not None
        layers = private["_tracks"].get(step.loss_name) if private["_layers"] is not None else None
        if layers is None:
            layers = self._loss_layers(algo, step.loss_name)
        reinit: Reinitializer | None = None
        decay, maturity = self.decay, self.maturity
        utilities, ages, updates, features = private["_utility"], private["_age"], private["_updates"], step.features
        for key, layer in layers:
            recorded = features.get(layer.network, {}).get(layer.name)
            if recorded is None:
                continue
            utility, age = utilities[key], ages[key]
            mean_abs_h = layer.mean_activity(recorded.post.detach())
            utility.mul_(decay).add_(mean_abs_h * layer.outgoing_magnitude(), alpha=1.0 - decay)
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
