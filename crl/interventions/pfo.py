"""Proximal Feature Optimization (Moalla et al. 2024, "No Representation, No Trust")."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch as th
from pydantic import Field, PrivateAttr
from torch.nn import functional as F

from crl.hooks import GradientStep
from crl.interventions.base import Intervention
from crl.interventions.network import check_hidden_layers
from crl.policies.features import FeatureRecorder

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm


def pfo_penalty(phi_new: th.Tensor, phi_old: th.Tensor) -> th.Tensor:
    """``mean_batch mean_dims (phi_new - phi_old)^2``, the PFO regulariser before its coefficient."""
    return F.mse_loss(phi_new, phi_old.detach())


class PFO(Intervention):
    """Keep the policy's representation close to the one that collected the rollout.

    ``loss += coef * mean_batch mean_dims (phi_new - phi_old)^2`` with ``phi`` the actor's penultimate
    pre-activation (the input of its last hidden activation). ``phi_old`` comes from a frozen copy of
    the policy taken at the start of each update, i.e. the network that collected the rollout. PPO
    only, as in the paper (its trust region is what PFO extends to the features). Logs
    ``interventions/pfo/loss`` (the mean added term of the last update, before ``coef``).

    :param coef: the coefficient (1 for the last layer on Atari in the paper)
    :param critic: also regularise the critic's penultimate pre-activation (the paper's option)
    """

    name = "pfo"
    algorithms: ClassVar[frozenset[str] | None] = frozenset({"PPO"})
    needs_features: ClassVar[bool] = True

    coef: float = Field(default=1.0, gt=0.0)
    critic: bool = False

    _frozen: th.nn.Module | None = PrivateAttr(default=None)
    _recorder: FeatureRecorder | None = PrivateAttr(default=None)
    _penalties: list[th.Tensor] = PrivateAttr(default_factory=list)

    @property
    def networks(self) -> list[str]:
        return ["actor", "critic"] if self.critic else ["actor"]

    def on_setup(self, algo: BaseAlgorithm) -> None:
        check_hidden_layers(self.name, algo.policy, self.networks, "a penultimate pre-activation to regularise")  # type: ignore[arg-type]

    def on_train_start(self, algo: BaseAlgorithm) -> None:
        # Dropped at on_train_end, so it is never saved with the model.
        frozen = algo.policy.network_copy().requires_grad_(False)  # type: ignore[operator]
        layers = frozen.hidden_layers(self.networks)  # type: ignore[operator]
        self._recorder = FeatureRecorder({network: layers[network][-1:] for network in self.networks})
        self._frozen = frozen

    def auxiliary_loss(self, algo: BaseAlgorithm, step: GradientStep) -> th.Tensor:
        assert self._frozen is not None and self._recorder is not None
        observations = step.batch.observations
        with th.no_grad(), self._recorder:
            if self.critic:  # both paths, through a shared features extractor once
                self._frozen.run_networks(observations, None)  # type: ignore[operator]
            else:
                self._frozen.get_distribution(observations)  # type: ignore[operator]
        old = self._recorder.features()
        terms = []
        for network in self.networks:
            phi_new = list(step.features[network].values())[-1].pre
            phi_old = list(old[network].values())[-1].pre
            terms.append(pfo_penalty(phi_new, phi_old))
        penalty = th.stack(terms).sum()
        if not step.recomputing:  # the log holds the first pass's penalty, not one at perturbed parameters
            self._penalties.append(penalty.detach())
        return self.coef * penalty

    def on_train_end(self, algo: BaseAlgorithm) -> None:
        self._frozen, self._recorder = None, None
        if self._penalties:
            self.record(algo, "loss", float(th.stack(self._penalties).mean()))
            self._penalties = []
