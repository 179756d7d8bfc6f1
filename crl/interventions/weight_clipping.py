"""Weight clipping (Elsayed, Lan, Lyle & Mahmood 2024, "Weight Clipping for Deep Continual and
Reinforcement Learning")."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch as th
from pydantic import Field, PrivateAttr

from crl.hooks import GradientStep
from crl.interventions.base import Intervention, InterventionError, crl_policy_problem
from crl.interventions.layer_groups import LayerGroup, trained_weight_layers
from crl.interventions.network import WeightLayer, weight_of
from crl.optim import OptimizerCache

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

ClippedParameters = tuple[list[th.Tensor], list[float], list[float]]
"""The parameters one optimizer updates that are clipped, each one's bound ``kappa * s_l`` and its negative."""


def init_bound(layer: WeightLayer) -> float:
    """``s_l = 1 / sqrt(fan_in)``: the bound of torch's default (Kaiming-uniform) initialisation of a
    Linear/Conv2d layer's weight and bias, fan-in counting a conv kernel's receptive field."""
    fan_in = weight_of(layer)[0].numel()
    return 1.0 / math.sqrt(fan_in)


def fraction_at_bound(parameters: list[th.Tensor], bounds: list[float]) -> float:
    """The fraction of the entries of clipped ``parameters`` that sit at their bound.

    The clamp writes ``float32(bound)`` itself, so ``|theta| - bound`` is exactly 0 there and negative
    inside; the entries inside are counted as the L1 norm of its signs, in a few multi-tensor operations
    (one comparison and sum per tensor cost 1 ms per ``train()`` of SAC's networks, more than the clips).
    """
    distances = th._foreach_sub(th._foreach_abs(parameters), bounds)
    inside = th.stack(th._foreach_norm(th._foreach_sign(distances), 1)).sum()
    total = sum(p.numel() for p in parameters)
    return (total - float(inside)) / total


class WeightClipping(Intervention):
    """Clip every weight and bias to ``[-kappa * s_l, kappa * s_l]`` after each optimizer step.

    ``s_l = 1 / sqrt(fan_in)`` is the bound of the uniform distribution torch initialises layer ``l``
    from (:func:`init_bound`); a weight can then move at most ``kappa`` times as far from zero as its
    initialisation allowed, which keeps weight magnitudes, and so the network's trainability, from
    growing without bound. As in the authors' code, the bound is that of torch's default
    initialisation whatever initialised the layer (SB3's PPO initialises orthogonally), and biases
    share their layer's bound. The clip follows the step of the optimizer that trained the layer, so
    target networks, which copy or average clipped weights, stay inside the bounds too.

    Deviation from the authors' code, which walks the parameter list and gives a 1-D tensor the bound
    of the weight before it: only Linear/Conv2d layers' weights and biases are clipped, so LayerNorm's
    affine parameters, PPO's ``log_std`` and SAC's entropy coefficient are not (none of the paper's
    networks has them). Logs ``interventions/weight_clipping/at_bound``, the fraction of the clipped
    entries at their bound, every ``log_every`` environment steps.

    :param kappa: the clipping factor (the authors' RL scripts use 3; their minimal example 1)
    :param layers: ``"all"`` (the authors' default, ``clip_last_layer=True``) or ``"hidden"`` (the
        output layers are left unclipped; needs a crl policy)
    :param log_every: environment steps between two logs of ``at_bound`` (of the whole training)
    """

    name = "weight_clipping"

    kappa: float = Field(default=3.0, gt=0.0)
    layers: LayerGroup = "all"
    log_every: int = Field(default=1000, gt=0)

    _clipped: OptimizerCache[ClippedParameters] = PrivateAttr(default_factory=OptimizerCache)
    _stepped: dict[int, ClippedParameters] = PrivateAttr(default_factory=dict)
    """The clipped parameters of each optimizer that stepped since the last log."""
    _logs_done: int = PrivateAttr(default=0)

    transient = ("_clipped", "_stepped")

    def check(self, algo: BaseAlgorithm) -> None:
        super().check(algo)
        problem = crl_policy_problem(algo)
        if self.layers == "hidden" and problem is not None:
            raise InterventionError(
                f"intervention {self.name!r} with layers='hidden' finds the output layers of a crl policy, "
                f"but {problem}"
            )

    def _clipped_parameters(self, algo: BaseAlgorithm, optimizer: th.optim.Optimizer) -> ClippedParameters:
        trained = {p for group in optimizer.param_groups for p in group["params"] if p.requires_grad}
        parameters, bounds = [], []
        for layer in trained_weight_layers(algo.policy, optimizer, self.layers):
            bound = self.kappa * init_bound(layer)
            for parameter in (weight_of(layer), layer.bias):
                if parameter is not None and parameter in trained:
                    parameters.append(parameter)
                    bounds.append(bound)
        return parameters, bounds, [-bound for bound in bounds]

    @th.no_grad()
    def after_optimizer_step(self, algo: BaseAlgorithm, step: GradientStep) -> None:
        assert step.optimizer is not None
        clipped = self._clipped.get(step.optimizer, lambda o: self._clipped_parameters(algo, o))
        parameters, upper, lower = clipped
        if parameters:
            th._foreach_clamp_max_(parameters, upper)
            th._foreach_clamp_min_(parameters, lower)
            self._stepped[id(step.optimizer)] = clipped

    @th.no_grad()
    def on_train_end(self, algo: BaseAlgorithm) -> None:
        # At the first train() end past each multiple of log_every, as ReDo's checks: measuring after
        # every train() cost DQN's CartPole run 4 %, more than the clips themselves.
        now = algo.lifetime_timesteps  # type: ignore[attr-defined]
        if now // self.log_every <= self._logs_done or not self._stepped:
            return
        self._logs_done = now // self.log_every
        parameters = [p for stepped, _, _ in self._stepped.values() for p in stepped]
        bounds = [bound for _, stepped, _ in self._stepped.values() for bound in stepped]
        self._stepped = {}
        self.record(algo, "at_bound", fraction_at_bound(parameters, bounds))
