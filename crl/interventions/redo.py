"""ReDo: recycling dormant neurons (Sokar et al. 2023, "The Dormant Neuron Phenomenon in Deep RL")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch as th
from pydantic import Field, PrivateAttr

from crl.interventions.base import Intervention, InterventionError
from crl.interventions.network import Reinitializer, UnitLayer, check_unit_recycling, probe_batch, unit_layers
from crl.metrics.functions import unit_scores

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm


def check_networks(name: str, networks: list[str] | None, algo: BaseAlgorithm) -> None:
    """Raise if ``networks`` names a network the algorithm's policy does not train."""
    known = list(algo.policy.network_prefixes())  # type: ignore[operator]
    unknown = sorted(set(networks or []) - set(known))
    if unknown:
        raise InterventionError(
            f"intervention {name!r}: networks={networks!r} has {unknown}; this policy trains {known}"
        )


class ReDo(Intervention):
    """Every ``every`` environment steps, recycle the dormant units of every hidden layer.

    A unit is dormant when its normalised score ``a_i / mean_k a_k`` (``a_i = mean_batch |h_i|``, see
    :func:`crl.metrics.functions.unit_scores`) on a probe batch is ``<= tau``. Recycling gives it fresh
    incoming weights (the algorithm's initialisation), zero bias, fresh LayerNorm affine entries and
    zero outgoing weights, so the network's output is unchanged (exactly, when no LayerNorm mixes the
    units); the Adam moments of all these entries are zeroed and target networks receive the same
    entries. Behind a CReLU or Fourier activation a unit is recycled when both its halves are dormant
    (a Fourier unit's halves are ``sin`` and ``cos`` of one pre-activation, so one of them has mean
    ``|h| >= 1/2`` while the layer's mean is at most 1: below ``tau = 0.5`` no Fourier unit is
    dormant). Units inside an
    injected head (plasticity injection) are not recycled. The check runs after each ``train()``
    call, so its cadence is rounded up to the training frequency.

    Logs ``interventions/redo/recycled`` (units recycled at the last check) and
    ``interventions/redo/recycled_fraction``.

    :param tau: dormancy threshold (0.1 in ReDo; the dormant-ratio metric uses 0.025)
    :param every: F, environment steps between checks (of the whole training, over every ``learn()`` call)
    :param probe_size: probe samples (replay buffer or last rollout)
    :param networks: the trained networks to treat (default: all)
    """

    name = "redo"
    needs_crl_policy: ClassVar[bool] = True

    tau: float = Field(default=0.1, ge=0.0)
    every: int = Field(default=1000, gt=0)
    probe_size: int = Field(default=256, gt=0)
    networks: list[str] | None = None

    _checks_done: int = PrivateAttr(default=0)
    _total: int = PrivateAttr(default=0)

    def on_setup(self, algo: BaseAlgorithm) -> None:
        check_networks(self.name, self.networks, algo)
        check_unit_recycling(self.name, algo.policy)

    @classmethod
    def _upgraded(cls, private: dict[str, Any], parameters: dict[str, Any]) -> dict[str, Any]:
        if "_last_check" not in private:
            return private
        # Saved before checks counted multiples of `every`: the step of the last check then.
        upgraded = {key: value for key, value in private.items() if key != "_last_check"}
        return {**upgraded, "_checks_done": private["_last_check"] // parameters["every"]}

    def on_train_end(self, algo: BaseAlgorithm) -> None:
        # At the first check at or after each multiple of `every`: a check due at 1002 does not move
        # the next one to 2004 (the training frequency rarely divides `every`).
        now = algo.lifetime_timesteps  # type: ignore[attr-defined]
        if now // self.every > self._checks_done:
            self._checks_done = now // self.every
            self.recycle(algo)

    def recycle(self, algo: BaseAlgorithm) -> int:
        """Recycle the dormant units now; return how many."""
        layers = unit_layers(algo.policy, self.networks)  # type: ignore[arg-type]
        reinit = Reinitializer(algo)
        recycled = units = 0
        for layer, dormant in zip(layers, self.dormant_units(algo, layers), strict=True):
            reinit.recycle(layer, dormant.nonzero().flatten())
            recycled += int(dormant.sum())
            units += layer.n_units
        self._total += recycled
        self.record(algo, "recycled", recycled)
        self.record(algo, "recycled_fraction", recycled / max(units, 1))
        self.record(algo, "recycled_total", self._total)
        return recycled

    def dormant_units(self, algo: BaseAlgorithm, layers: list[UnitLayer]) -> list[th.Tensor]:
        """A mask of each layer's units to recycle: ReDo's score ``<= tau`` on a probe batch (both halves
        behind a CReLU or Fourier activation)."""
        observations, actions = probe_batch(algo, self.probe_size)
        features = algo.policy.hidden_features(observations, actions)  # type: ignore[operator]
        masks = []
        for layer in layers:
            h = features[layer.network][layer.name].post
            masks.append((layer.unit_view(unit_scores(h)) <= self.tau).all(dim=0))
        return masks
