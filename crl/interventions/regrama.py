"""ReGraMa: recycling the hidden units that no longer learn, found by their gradients (Liu et al. 2025)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch as th
from pydantic import Field

from crl.interventions.network import probe_samples
from crl.interventions.redo import ReDo
from crl.metrics.functions import GRAMA_TAU
from crl.metrics.grama import unit_gradient_scores

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

    from crl.interventions.network import UnitLayer


class ReGraMa(ReDo):
    """Every ``every`` environment steps, recycle the units whose GraMa score is ``<= tau``.

    ReDo with the gradient score in place of the activation score ("Measure gradients, not
    activations!", Liu et al. 2025): a unit's score is the mean ``|dL/dW|`` of its incoming weights
    under the training loss whose optimizer trains the layer, on a probe batch, divided by the layer's
    mean (:func:`crl.metrics.grama.unit_gradient_scores`). It also catches units that are active but
    receive no gradient, which ReDo's score cannot see. The recycling is ReDo's (fresh incoming
    weights, zero bias, fresh LayerNorm affine entries, zero outgoing weights, Adam moments zeroed,
    targets synchronised), as are the cadence and the logs (under ``interventions/regrama/``). Behind a
    CReLU or Fourier activation a unit is one row of the incoming weight, so both halves are judged
    together.

    The default ``tau`` is that of a public ReGraMa implementation; the paper's own value and code
    were not available to check it against (see :mod:`crl.metrics.grama`).

    :param tau: threshold on the normalised gradient score
    :param every: F, environment steps between checks (of the whole training, over every ``learn()`` call)
    :param probe_size: probe samples (replay buffer or last rollout) the training losses are computed on
    :param networks: the trained networks to treat (default: all)
    """

    name = "regrama"

    tau: float = Field(default=GRAMA_TAU, ge=0.0)

    def dormant_units(self, algo: BaseAlgorithm, layers: list[UnitLayer]) -> list[th.Tensor]:
        """A mask of each layer's units to recycle: GraMa score ``<= tau`` on a fresh probe batch."""
        batch, seed = probe_samples(algo, self.probe_size)
        return [score <= self.tau for score in unit_gradient_scores(algo, batch, layers, seed)]
