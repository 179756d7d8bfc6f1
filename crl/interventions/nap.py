"""Normalize-and-Project (Lyle et al. 2024, "Normalization and effective learning rates in reinforcement
learning")."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import torch as th
from pydantic import Field, PrivateAttr
from torch.nn.utils import parametrize

from crl.hooks import GradientStep
from crl.interventions.base import Intervention, InterventionError
from crl.interventions.layer_norm import LayerNorm
from crl.interventions.network import unit_layers, weight_of
from crl.metrics.losses import optimizer_parameters
from crl.optim import OptimizerCache

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

    from crl.policies.base import ContinualPolicyMixin

ParameterGroup = tuple[th.Tensor, ...]
"""Parameters projected together onto one sphere."""


class ProjectedGroups:
    """The parameter groups one optimizer trains that are projected, flattened for multi-tensor operations.

    :param groups: the groups
    :param radii: each group's radius (its norm at construction)
    """

    def __init__(self, groups: list[ParameterGroup], radii: list[float]) -> None:
        self.parameters = [parameter for group in groups for parameter in group]
        self.group_of = [index for index, group in enumerate(groups) for _ in group]
        self.radii = radii


def projected_groups(policy: ContinualPolicyMixin, affine: bool) -> list[ParameterGroup]:
    """The parameter groups NaP projects, in module order (a layer shared by networks once).

    Each hidden Linear/Conv2d layer followed by a LayerNorm gives ``(weight, bias)``; with ``affine``,
    that LayerNorm gives ``(gain, offset)``. Layers without a LayerNorm (inside a features extractor
    of your own) are not scale-invariant and are left out.
    """
    groups: list[ParameterGroup] = []
    for layer in unit_layers(policy):
        if layer.norm is None:
            continue
        groups.append(_present(weight_of(layer.incoming), layer.incoming.bias))
        if affine and layer.norm.weight is not None:
            groups.append(_present(layer.norm.weight, layer.norm.bias))
    return groups


def _present(*parameters: th.Tensor | None) -> ParameterGroup:
    return tuple(parameter for parameter in parameters if parameter is not None)


def group_norm(group: ParameterGroup) -> float:
    """The L2 norm of a group's parameters taken together."""
    return float(th.linalg.vector_norm(th.stack([th.linalg.vector_norm(p.detach()) for p in group])))


@th.no_grad()
def project(groups: ProjectedGroups) -> list[float]:
    """``theta_g <- theta_g * r_g / ||theta_g||`` for every group ``g``, in place.

    The handful of group norms is combined in Python from one multi-tensor norm: half the time of
    the same arithmetic in tensors (56 against 103 us on DQN's CartPole network).

    :return: each group's norm before the projection
    """
    squares = [0.0] * len(groups.radii)
    for group, norm in zip(groups.group_of, th.stack(th._foreach_norm(groups.parameters)).tolist(), strict=True):
        squares[group] += norm * norm
    norms = [math.sqrt(square) for square in squares]
    # A group at zero has no direction to keep: it stays at zero.
    factors = [radius / norm if norm > 0 else 1.0 for radius, norm in zip(groups.radii, norms, strict=True)]
    th._foreach_mul_(groups.parameters, [factors[group] for group in groups.group_of])
    return norms


class NormalizeAndProject(Intervention):
    """NaP: LayerNorm before every hidden activation, and each hidden layer's parameters projected back
    to their initial norm after the optimizer steps.

    A layer followed by a LayerNorm is scale-invariant, ``LN(c (W x + b)) = LN(W x + b)`` for ``c > 0``:
    the norm of ``(W, b)`` changes no output, only the effective learning rate, which falls as
    ``lr / ||(W, b)||^2``. Training grows the norm, so a normalised network's effective learning rate
    decays on a schedule nobody chose, which in a non-stationary problem leaves the network learning
    ever more slowly. NaP fixes the norm, so the effective learning rate is the configured one
    throughout (a decay, where wanted, is then an explicit learning-rate schedule).

    After every ``every``-th step of the optimizer that trains them (counted per loss), projected onto
    the sphere of their norm at construction:

    - each hidden Linear/Conv2d layer's weight and bias together,
      ``(W, b) <- (W, b) r / ||(W, b)||``: the bias goes with its weight because only their joint
      scaling leaves the LayerNorm's output unchanged, so this projection changes the network's outputs
      only through LayerNorm's ``eps``;
    - with ``affine=True``, each hidden LayerNorm's gain and offset together (initial norm ``sqrt(d)``:
      gain 1, offset 0). They scale the features the next layer reads, so this projection changes the
      outputs: it keeps the next layer's effective learning rate from decaying through them.

    Left free: the output layers, whose scale is that of the outputs (Q-values, logits, the value), PPO's
    ``log_std``, SAC's entropy coefficient, and layers without a LayerNorm (a features extractor of
    your own). A hidden layer that a plasticity injection takes into the head (``head_layers > 1``) is
    head from then on. Target networks copy or average projected parameters and are not
    projected themselves. Optimizer state is kept: the projection reparameterises, it does not reset.

    Logs ``interventions/normalize_and_project/growth``, the mean over the projected groups of
    ``||theta|| / r`` before the latest projection (how far one interval of steps moved the norms),
    every ``log_every`` environment steps.

    Deviation: the paper's code was not available to check against. Its description fixes the LayerNorm
    placement and the projection to the initial norm; the grouping of a bias with its weight, the
    LayerNorm affine group and leaving the output layers free are crl's reading of it. The public
    Plasticine implementation projects every weight on its own, the output layers' too, and leaves the
    hidden biases free.

    :param affine: also project each hidden LayerNorm's gain and offset (together)
    :param every: steps of an optimizer between two projections of the parameters it trains (1: after
        each step, as in the paper)
    :param log_every: environment steps between two logs of ``growth``
    """

    name = "normalize_and_project"
    needs_crl_policy: ClassVar[bool] = True

    affine: bool = True
    every: int = Field(default=1, gt=0)
    log_every: int = Field(default=1000, gt=0)

    _radii: dict[str, float] = PrivateAttr(default_factory=dict)
    """Each projected group's radius, under the name of the group's first parameter in the policy."""
    _steps: dict[str, int] = PrivateAttr(default_factory=dict)
    """Optimizer steps taken per loss, for ``every``."""
    _groups: OptimizerCache[ProjectedGroups] = PrivateAttr(default_factory=OptimizerCache)
    _growth: dict[str, tuple[list[float], list[float]]] = PrivateAttr(default_factory=dict)
    """Each loss's group norms before its latest projection, with the groups' radii (divided when logged)."""
    _logs_done: int = PrivateAttr(default=0)

    transient = ("_groups", "_growth")

    def configure_policy(self, algo: BaseAlgorithm, policy_kwargs: dict[str, Any]) -> None:
        if policy_kwargs.get("layer_norm") == "post":
            raise InterventionError(
                f"intervention {self.name!r} needs LayerNorm before each hidden activation (placement 'pre'), "
                "which makes the layer before it scale-invariant; got policy_kwargs['layer_norm']='post' "
                "(or intervention layer_norm with placement='post'): leave the placement at 'pre'"
            )
        LayerNorm(placement="pre").configure_policy(algo, policy_kwargs)

    def on_setup(self, algo: BaseAlgorithm) -> None:
        groups = projected_groups(algo.policy, self.affine)  # type: ignore[arg-type]
        projected = {id(group[0]) for group in groups}
        parametrized = [
            name
            for name, module in algo.policy.named_modules()
            if parametrize.is_parametrized(module, "weight") and id(weight_of(module)) in projected  # type: ignore[arg-type]
        ]
        if parametrized:
            raise InterventionError(
                f"intervention {self.name!r} projects the weights of hidden layers {parametrized}, which the policy "
                "option spectral_norm reparameterises: their scale is fixed twice; use one of them, or "
                "spectral_norm='head'"
            )
        self._radii_of(algo, groups)  # after load() the saved radii are kept

    def _radii_of(self, algo: BaseAlgorithm, groups: list[ParameterGroup]) -> list[float]:
        """Each group's radius: its norm when first seen (at construction), saved with the model."""
        names: dict[th.Tensor, str] = {parameter: name for name, parameter in algo.policy.named_parameters()}
        for group in groups:
            if names[group[0]] not in self._radii:
                self._radii[names[group[0]]] = group_norm(group)
        return [self._radii[names[group[0]]] for group in groups]

    def _projected(self, algo: BaseAlgorithm, optimizer: th.optim.Optimizer) -> ProjectedGroups:
        trained = set(optimizer_parameters(optimizer))
        groups = [g for g in projected_groups(algo.policy, self.affine) if all(p in trained for p in g)]  # type: ignore[arg-type]
        return ProjectedGroups(groups, self._radii_of(algo, groups))

    def after_optimizer_step(self, algo: BaseAlgorithm, step: GradientStep) -> None:
        assert step.optimizer is not None
        steps = self._steps[step.loss_name] = self._steps.get(step.loss_name, 0) + 1
        if steps % self.every:
            return
        groups = self._groups.get(step.optimizer, lambda o: self._projected(algo, o))
        if groups.parameters:
            self._growth[step.loss_name] = (project(groups), groups.radii)

    def on_train_end(self, algo: BaseAlgorithm) -> None:
        # At the first train() end past each multiple of log_every, as weight clipping logs.
        now = algo.lifetime_timesteps  # type: ignore[attr-defined]
        if now // self.log_every <= self._logs_done or not self._growth:
            return
        self._logs_done = now // self.log_every
        growth = [
            norm / radius for norms, radii in self._growth.values() for norm, radius in zip(norms, radii, strict=True)
        ]
        self.record(algo, "growth", sum(growth) / len(growth))
        self._growth = {}
