"""Resets: re-initialise parts of the agent, shrink & perturb, and reset the optimizer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch as th
from pydantic import Field, PrivateAttr, model_validator
from torch import nn

from crl.hooks import GradientStep
from crl.interventions.base import InterventionError, crl_policy_problem
from crl.interventions.network import (
    Reinitializer,
    check_hidden_layers,
    check_single_chain,
    parameters_of,
    target_parameters,
    unit_layers,
)
from crl.interventions.schedule import ScheduledIntervention
from crl.optim import algorithm_optimizers, clear_optimizer_state, reset_parameter_state

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm


def trained_parameters(algo: BaseAlgorithm) -> list[th.Tensor]:
    """Every parameter of the policy except the target networks' (which follow the online ones)."""
    targets = set(target_parameters(algo).values())
    return [param for param in algo.policy.parameters() if param not in targets]


class Reset(ScheduledIntervention):
    """Re-initialise parts of the agent on a schedule (Nikishin et al. 2022, "The Primacy Bias in Deep RL").

    Fresh values come from a newly built policy of the same class and arguments, so every layer gets
    the algorithm's own initialisation. The replay buffer is kept. Reset tensors lose their optimizer
    state (moments and step); a ``"full"`` reset clears every optimizer, gives the normalisation layers'
    running statistics (BatchNorm's, CrossQ's BatchRenorm's) their fresh values and, for SAC with a
    learned temperature, restores the initial entropy coefficient. Target networks are re-synchronised
    with the reset parameters.

    :param parts: ``"full"`` (the whole agent), ``"head"`` (the last ``head_layers`` layers of every
        trained network, output layer included) or a list of module paths in the policy
        (e.g. ``["q_net.q_net.4"]``)
    :param head_layers: k for ``parts="head"``: a hidden layer counts as its incoming weights plus
        its LayerNorm; the output layers count as one
    :param every: see :class:`~crl.interventions.schedule.ScheduledIntervention` (SAC in the paper:
        200_000 with the buffer kept; SPR resets the head every 20_000)
    :param at_steps: see :class:`~crl.interventions.schedule.ScheduledIntervention`
    :param at_task_boundaries: see :class:`~crl.interventions.schedule.ScheduledIntervention`
    """

    name = "reset"

    parts: Literal["full", "head"] | list[str] = "full"
    head_layers: int = Field(default=1, gt=0)

    _initial_log_ent_coef: th.Tensor | None = PrivateAttr(default=None)

    def check(self, algo: BaseAlgorithm) -> None:
        super().check(algo)
        problem = crl_policy_problem(algo)
        if self.parts == "head" and problem is not None:  # "full" and module paths take any policy
            raise InterventionError(
                f"intervention 'reset' with parts='head' reads the networks of a crl policy, but {problem}"
            )

    def on_setup(self, algo: BaseAlgorithm) -> None:
        log_ent_coef = getattr(algo, "log_ent_coef", None)
        if isinstance(log_ent_coef, th.Tensor):
            # on_setup runs before load() restores parameters: this is always the initial value.
            self._initial_log_ent_coef = log_ent_coef.detach().clone()
        self._parameters(algo)  # unknown module paths fail at construction

    def _parameters(self, algo: BaseAlgorithm) -> list[th.Tensor]:
        policy = algo.policy
        if self.parts == "full":
            return trained_parameters(algo)
        if self.parts == "head":
            check_hidden_layers(self.name, policy, list(policy.network_prefixes()), "parts='head' to find a head")  # type: ignore[arg-type,operator]
            modules: list[nn.Module] = []
            for network in policy.network_prefixes():  # type: ignore[operator]
                layers = unit_layers(policy, [network])  # type: ignore[arg-type]
                taken = layers[max(len(layers) - self.head_layers + 1, 0) :]
                check_single_chain(self.name, policy, taken, hint=", or name the modules to reset with parts=[...]")
                groups = [[layer.incoming, *([layer.norm] if layer.norm else [])] for layer in layers]
                groups.append(list(layers[-1].outgoing) if layers else [])
                for group in groups[-self.head_layers :]:
                    modules.extend(group)
            return parameters_of(modules)
        missing = [path for path in self.parts if not _has_module(policy, path)]
        if missing:
            raise InterventionError(
                f"intervention 'reset': parts={self.parts!r} names no module {missing} of the policy; "
                f"its top-level modules are {[name for name, _ in policy.named_children()]}"
            )
        return parameters_of(policy.get_submodule(path) for path in self.parts)

    def apply(self, algo: BaseAlgorithm, reason: str) -> None:
        reinit = Reinitializer(algo)
        parameters = self._parameters(algo)
        for param in parameters:
            reinit.set_tensor(param, reinit.fresh(param))
        if self.parts == "full":
            reinit.reset_running_statistics()
            for optimizer in reinit.optimizers:
                clear_optimizer_state(optimizer)
            log_ent_coef = getattr(algo, "log_ent_coef", None)
            if isinstance(log_ent_coef, th.Tensor) and self._initial_log_ent_coef is not None:
                with th.no_grad():
                    log_ent_coef.copy_(self._initial_log_ent_coef)
        self.record(algo, "parameters_reset", sum(param.numel() for param in parameters))


def _has_module(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


class ShrinkPerturb(ScheduledIntervention):
    """Shrink & perturb (Ash & Adams 2020): ``theta <- shrink * theta + perturb * theta_fresh``.

    ``theta_fresh`` is a new random initialisation at every call (a newly built policy). Applied to
    every trained parameter. Scheduled calls (default: at task boundaries, ``shrink = perturb = 0.5``)
    drop the optimizer state of every parameter and re-synchronise the target networks with the
    result, as after any re-initialisation (SPEC.md §2). ``after_every_update`` (the soft variant,
    e.g. ``shrink=0.999999, perturb=1e-6``) keeps the optimizer state, as the change per update is
    tiny, and gives the target networks the same map with the same ``theta_fresh``: a sync after every
    update would remove their lag behind the online networks.

    Running statistics (BatchNorm's, CrossQ's BatchRenorm's) are buffers, not parameters: they are left
    as they are, as the method's map of the parameters leaves them, and training goes on updating them
    from the new activations (a full :class:`Reset` gives them their fresh values instead).

    Cost: building a fresh policy takes about 1 ms (DQN MLP) to 25 ms (SAC 256x256 with its critics):
    negligible at task boundaries, large for the soft variant with big networks.

    :param shrink: lambda, the factor on the current parameters
    :param perturb: sigma, the factor on the fresh initialisation
    :param after_every_update: also apply after every optimizer step, to that optimizer's parameters;
        then ``at_task_boundaries`` defaults to ``False`` (a scheduled call would drop the optimizer
        state and the targets' lag that the soft variant keeps; give it ``True`` for both)
    """

    name = "shrink_perturb"

    shrink: float = Field(default=0.5, ge=0.0, le=1.0)
    perturb: float = Field(default=0.5, ge=0.0)
    after_every_update: bool = False

    @model_validator(mode="before")
    @classmethod
    def _soft_variant_is_not_scheduled(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("after_every_update") and "at_task_boundaries" not in data:
            return {**data, "at_task_boundaries": False}
        return data

    def apply(self, algo: BaseAlgorithm, reason: str) -> None:
        self._shrink_perturb(algo, trained_parameters(algo), scheduled=True)

    def after_optimizer_step(self, algo: BaseAlgorithm, step: GradientStep) -> None:
        if self.after_every_update:
            optimizer = step.optimizer
            assert optimizer is not None
            parameters = [p for group in optimizer.param_groups for p in group["params"]]
            self._shrink_perturb(algo, parameters, scheduled=False)

    @th.no_grad()
    def _shrink_perturb(self, algo: BaseAlgorithm, parameters: list[th.Tensor], scheduled: bool) -> None:
        reinit = Reinitializer(algo)
        parameters = [param for param in parameters if reinit.owns(param)]
        fresh = [reinit.fresh(param) for param in parameters]
        pairs = [
            (param, reinit.targets[param], value)
            for param, value in zip(parameters, fresh, strict=True)
            if param in reinit.targets
        ]
        self._mix(parameters, fresh)
        if scheduled:
            for param, target, _ in pairs:
                target.copy_(param)
            for optimizer in reinit.optimizers:
                for param in parameters:
                    reset_parameter_state(optimizer, param)
        else:
            self._mix([target for _, target, _ in pairs], [value for _, _, value in pairs])
        self.record(algo, "parameters", sum(param.numel() for param in parameters))

    def _mix(self, parameters: list[th.Tensor], fresh: list[th.Tensor]) -> None:
        """``theta <- shrink * theta + perturb * theta_fresh`` on every tensor of ``parameters``."""
        if parameters:
            th._foreach_mul_(parameters, self.shrink)
            th._foreach_add_(parameters, fresh, alpha=self.perturb)


class ResetOptimizer(ScheduledIntervention):
    """Clear every optimizer's state (moments and step counts), by default at task boundaries.

    Adam's moments carry the previous task's gradient statistics into the next one (Asadi et al. 2023,
    "Resetting the Optimizer in Deep RL"); learning rates are kept.
    """

    name = "reset_optimizer"

    def apply(self, algo: BaseAlgorithm, reason: str) -> None:
        for optimizer in algorithm_optimizers(algo):
            clear_optimizer_state(optimizer)
        self.record(algo, "resets", self._events + 1)
