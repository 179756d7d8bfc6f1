"""TRAC, a parameter-free scale on the optimizer's updates (Muppidi, Zhang & Yang 2024, "Fast TRAC: A
Parameter-Free Optimizer for Lifelong Reinforcement Learning")."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch as th
from pydantic import Field, PrivateAttr, field_validator
from scipy.special import erfi

from crl.hooks import GradientStep
from crl.interventions.base import Intervention, InterventionError
from crl.optim import OptimizerCache

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

DEFAULT_BETAS = (0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999)
SIGMA_START = 1e-8
"""Each ``sigma_beta`` starts here, as in the authors' code (it makes the first scale ``s_init``-sized)."""
ERFI_AT_ONE_OVER_SQRT2 = float(erfi(1 / math.sqrt(2)))


def _conflict(other: Intervention) -> str | None:
    """Why ``other`` cannot be combined with TRAC, or ``None``."""
    if other.name in ("normalize_and_project", "weight_clipping"):
        return "both rewrite the parameters after every optimizer step, and the result would depend on which acts last"
    if other.name == "shrink_perturb" and getattr(other, "after_every_update", False):
        return (
            "with after_every_update=True it rewrites every parameter after every optimizer step, which would "
            "restart all of TRAC's sums at every step; scheduled shrink-and-perturb composes"
        )
    if other.name == "packnet":
        return "TRAC's rescaling of the accumulated updates would move the entries PackNet freezes"
    return None


WRITE_AFTER_STEPS = ("continual_backprop",)
"""Interventions that rewrite some entries after optimizer steps: TRAC's hook must come first, to find
their rewrites at the next step instead of taking them for the optimizer's update."""


@dataclass(eq=False)
class ScaleTuner:
    """TRAC's tuner of the scale ``S`` of one optimizer's accumulated updates: discounted 1-D online
    learners, one per ``beta``, betting on the direction of ``h``, the gradient of the loss along ``S``.

    With ``h_t = <g_t, x_t>`` (the gradient at ``theta_t`` and the base optimizer's accumulated update),
    for every ``beta``: ``v <- beta^2 v + h^2``, ``sigma <- beta sigma - h`` and
    ``s_beta = s_init / erfi(1/sqrt 2) * erfi(sigma / (sqrt(2 v) + eps))``; ``S = sum_beta s_beta``.
    """

    betas: np.ndarray
    s_init: float
    eps: float
    variance: np.ndarray = field(init=False)
    sigma: np.ndarray = field(init=False)
    scale: float = 0.0
    """``S``: the sum of the learners' bets (0 before the first update)."""

    def __post_init__(self) -> None:
        self.variance = np.zeros_like(self.betas)
        self.sigma = np.full_like(self.betas, SIGMA_START)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ScaleTuner):
            return NotImplemented
        arrays = all(np.array_equal(getattr(self, k), getattr(other, k)) for k in ("betas", "variance", "sigma"))
        return arrays and (self.s_init, self.eps, self.scale) == (other.s_init, other.eps, other.scale)

    __hash__ = None  # type: ignore[assignment]

    def update(self, h: float) -> float:
        """Take ``h_t`` and return the scale to apply, ``max(S, 0)``."""
        self.variance = self.betas**2 * self.variance + h * h
        self.sigma = self.betas * self.sigma - h
        bets = self.s_init / ERFI_AT_ONE_OVER_SQRT2 * erfi(self.sigma / (np.sqrt(2 * self.variance) + self.eps))
        self.scale = float(bets.sum())
        if math.isnan(self.scale) or self.scale == math.inf:  # -inf is a bet of nothing: S is applied as 0
            raise FloatingPointError(
                f"TRAC's scale is {self.scale} after h = {h}: the gradients have agreed with the accumulated update "
                "for long enough that erfi overflows float64; the loss is diverging"
            )
        return max(self.scale, 0.0)


class TracParameters:
    """The parameters one optimizer trains, with TRAC's tensors for them, each one flat buffer.

    Flat, each line of the step's arithmetic is one operation over all parameters, not one per tensor
    (tensor by tensor, the dot products alone cost DQN's CartPole network more than the whole flat step);
    the per-name tensors the intervention saves are views into the buffers.

    :param names: each parameter's name in the policy
    :param parameters: the parameters (those that require gradients)
    :param references: ``theta_ref`` of each, copied into one buffer
    :param iterates: ``x`` of each (the base optimizer's accumulated update), copied into one buffer
    """

    def __init__(
        self, names: list[str], parameters: list[th.Tensor], references: list[th.Tensor], iterates: list[th.Tensor]
    ) -> None:
        self.names = names
        self.parameters = parameters
        self.flat_parameters = [p.view(-1) for p in parameters]
        self.reference = th.cat([r.reshape(-1) for r in references])
        self.iterate = th.cat([x.reshape(-1) for x in iterates])
        self.before = th.empty_like(self.reference)
        """``theta_t``, copied before the base optimizer steps."""
        self.work = th.empty_like(self.reference)
        self.next_values = self.views(self.work)
        """``theta_{t+1}``, as ``_step`` leaves it in ``work``, shaped as the parameters."""
        self.versions: list[int] | None = None
        """Each parameter's version counter after TRAC last wrote it (``None``: not known, so values are compared)."""

    def views(self, flat: th.Tensor) -> list[th.Tensor]:
        """``flat`` cut into tensors shaped as the parameters."""
        pieces = flat.split([p.numel() for p in self.parameters])
        return [piece.view(p.shape) for piece, p in zip(pieces, self.parameters, strict=True)]

    def current_versions(self) -> list[int]:
        return [p._version for p in self.parameters]

    def gather(self, out: th.Tensor) -> th.Tensor:
        """The parameters' current values, into ``out``."""
        return th.cat(self.flat_parameters, out=out)


class TRAC(Intervention):
    """TRAC: the parameters are ``theta_t = theta_ref + S_t x_t``, where ``x_t`` sums the updates the
    algorithm's own optimizer (Adam, by default) made and the scale ``S_t >= 0`` is tuned online, with no
    hyperparameter to set, by how the gradients agree with ``x_t``.

    After every step of an optimizer, for the parameters it trains (that got a gradient):

    - the base optimizer's update ``u_t`` is what its step moved ``theta_t`` by, and ``x_{t+1} = x_t + u_t``;
    - ``h_t = <g_t, x_t>``, the derivative of the loss along ``S`` at ``theta_t`` (``g_t`` the gradient the
      step used, after clipping), feeds :class:`ScaleTuner`, one per loss (SAC's critic and actor separately);
    - ``theta_{t+1} = theta_ref + max(S_{t+1}, 0) x_{t+1}``.

    ``theta_ref`` is a parameter's value when TRAC first steps it (the initialisation, or a plasticity
    injection's new head). While gradients keep agreeing with the accumulated update, ``S`` grows
    (geometrically, through ``erfi``) and the network moves away from ``theta_ref``; when a task switch
    makes them disagree, ``S`` falls and pulls it back towards ``theta_ref``, a tuned L2-init. ``S`` starts
    at 0: the first updates are scaled by ``~s_init``, and training starts slowly.

    Composition: an entry another intervention changed between two steps (a reset, ReDo, continual
    backprop, shrink-and-perturb, a sharpness-aware perturbation not undone bitwise) restarts at its new
    value, ``theta_ref`` set to it and ``x`` to 0; which entries changed is found from the parameters'
    version counters, so nothing is compared while nothing else writes. ``continual_backprop``, which
    replaces units after optimizer steps, must be listed after ``trac``. Refused with
    normalize_and_project, weight_clipping and shrink_perturb with ``after_every_update=True`` (which
    rewrite the parameters after each step) and with packnet (rescaling ``x`` would move the entries it
    freezes). Optimizer state is the base optimizer's, untouched.

    Logs ``interventions/trac/scale/<loss>`` (``S``) every ``log_every`` environment steps.

    Deviations from the authors' code (``trac_optimizer``), which computes the same arithmetic in float32:
    it recovers ``x_t`` as ``(theta_t - theta_ref) / (S_t + eps)``, which rounds ``x_t`` away while ``S_t`` is
    small (``S_t x_t`` below the parameters' float32 resolution) and zeroes it whenever ``S_t <= 0``; crl
    keeps ``x`` as its own tensor, as the paper's Algorithm 1 writes it. The tuner's scalars are float64
    here (``scipy.special.erfi``), where the authors approximate ``erfi`` in float32.

    :param betas: discount factors of the learners whose bets sum to ``S``
    :param s_init: the learners' initial wealth (the authors' ``s_prev``)
    :param eps: added to the tuner's denominator
    :param log_every: environment steps between two logs of the scales
    """

    name = "trac"

    betas: tuple[float, ...] = DEFAULT_BETAS
    s_init: float = Field(default=1e-8, gt=0)
    eps: float = Field(default=1e-8, gt=0)
    log_every: int = Field(default=1000, gt=0)

    _references: dict[str, th.Tensor] = PrivateAttr(default_factory=dict)
    """``theta_ref`` per parameter name."""
    _iterates: dict[str, th.Tensor] = PrivateAttr(default_factory=dict)
    """``x`` per parameter name."""
    _tuners: dict[str, ScaleTuner] = PrivateAttr(default_factory=dict)
    """The scale tuner of each loss."""
    _applied: dict[str, float] = PrivateAttr(default_factory=dict)
    """The scale each parameter was last written with (a parameter without a gradient keeps its older one)."""
    _tracked: OptimizerCache[TracParameters] = PrivateAttr(default_factory=OptimizerCache)
    _logs_done: int = PrivateAttr(default=0)

    transient = ("_tracked",)

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        private = state.get("__pydantic_private__")
        if private:  # views into the flat buffers: each saved as a tensor of its own, not with the whole buffer
            for key in ("_references", "_iterates"):
                private[key] = {name: tensor.clone() for name, tensor in private[key].items()}
        return state

    @field_validator("betas")
    @classmethod
    def _discounts(cls, betas: tuple[float, ...]) -> tuple[float, ...]:
        if not betas or any(not 0 < beta <= 1 for beta in betas):
            raise ValueError(f"needs one or more discount factors in (0, 1], got {list(betas)}")
        return betas

    def check(self, algo: BaseAlgorithm) -> None:
        super().check(algo)
        interventions: list[Intervention] = getattr(algo, "interventions", [])
        for position, other in enumerate(interventions):
            problem = _conflict(other)
            if problem is not None:
                raise InterventionError(f"intervention {self.name!r} cannot be combined with {other.name!r}: {problem}")
            if other.name in WRITE_AFTER_STEPS and position < interventions.index(self):
                raise InterventionError(
                    f"list {self.name!r} before {other.name!r} in interventions: {other.name!r} replaces units after "
                    f"optimizer steps, and {self.name!r} must write the parameters first so that it finds the "
                    "replaced entries and restarts them, instead of taking the replacement for the optimizer's update"
                )

    def _track(self, algo: BaseAlgorithm, optimizer: th.optim.Optimizer) -> TracParameters:
        names = {parameter: name for name, parameter in algo.policy.named_parameters()}
        trained = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        found = [names[p] for p in trained]
        for name, parameter in zip(found, trained, strict=True):
            if name not in self._references or self._references[name].shape != parameter.shape:
                self._references[name] = parameter.detach().clone()
                self._iterates[name] = th.zeros_like(parameter)
        tracked = TracParameters(
            found, trained, [self._references[n] for n in found], [self._iterates[n] for n in found]
        )
        self._references.update(zip(found, tracked.views(tracked.reference), strict=True))
        self._iterates.update(zip(found, tracked.views(tracked.iterate), strict=True))
        return tracked

    def _tuner(self, loss_name: str) -> ScaleTuner:
        if loss_name not in self._tuners:
            self._tuners[loss_name] = ScaleTuner(np.array(self.betas, dtype=np.float64), self.s_init, self.eps)
        return self._tuners[loss_name]

    @th.no_grad()
    def after_backward(self, algo: BaseAlgorithm, step: GradientStep) -> None:
        assert step.optimizer is not None
        tracked = self._tracked.get(step.optimizer, lambda o: self._track(algo, o))
        current = tracked.gather(out=tracked.before)
        if tracked.versions != tracked.current_versions():
            self._restart_changed_entries(tracked, current)

    def _restart_changed_entries(self, tracked: TracParameters, current: th.Tensor) -> None:
        """Entries of ``current`` (the parameters, flat) that differ from what TRAC last wrote,
        ``theta_ref + max(S, 0) x`` (someone else wrote them), restart at their value."""
        scales = [self._applied.get(name, 0.0) for name in tracked.names]
        expected = tracked.work
        if len(set(scales)) == 1:
            th.add(tracked.reference, tracked.iterate, alpha=scales[0], out=expected)
        else:  # a parameter without a gradient at the last step keeps an older scale
            for piece, reference, iterate, scale in zip(
                *(tracked.views(flat) for flat in (expected, tracked.reference, tracked.iterate)), scales, strict=True
            ):
                th.add(reference, iterate, alpha=scale, out=piece)
        # th.add computes each entry as the write did, whatever the layout: the same bits where nothing changed
        changed = current != expected
        tracked.reference.copy_(th.where(changed, current, tracked.reference))
        tracked.iterate.masked_fill_(changed, 0.0)

    @th.no_grad()
    def after_optimizer_step(self, algo: BaseAlgorithm, step: GradientStep) -> None:
        assert step.optimizer is not None
        tracked = self._tracked.get(step.optimizer, lambda o: self._track(algo, o))
        gradients = [p.grad for p in tracked.parameters]
        stepped = [i for i, g in enumerate(gradients) if g is not None]
        if not stepped:
            return
        partial = len(stepped) < len(gradients)
        if partial:  # no gradient, no update: the zeros add nothing to h
            zeros = (th.zeros_like(p) for p in tracked.parameters)
            gradients = [g if g is not None else zero for g, zero in zip(gradients, zeros, strict=True)]
        scale = self._step(tracked, th.cat([g.reshape(-1) for g in gradients]), self._tuner(step.loss_name))  # type: ignore[union-attr]
        theta_next = tracked.next_values
        if partial:  # as the authors' code: parameters without a gradient stay as they are
            th._foreach_copy_([tracked.parameters[i] for i in stepped], [theta_next[i] for i in stepped])
            self._applied.update((tracked.names[i], scale) for i in stepped)
        else:
            th._foreach_copy_(tracked.parameters, theta_next)
            self._applied.update(dict.fromkeys(tracked.names, scale))
        tracked.versions = tracked.current_versions()

    @staticmethod
    def _step(tracked: TracParameters, g: th.Tensor, tuner: ScaleTuner) -> float:
        """Algorithm 1's step on the flat buffers; leaves ``theta_{t+1}`` in ``tracked.work`` and returns
        the scale applied. ``g``: the gradients the base optimizer just stepped with."""
        theta_t, theta_ref, x = tracked.before, tracked.reference, tracked.iterate
        u = tracked.gather(out=tracked.work).sub_(theta_t)  # what the base optimizer's step moved theta_t by
        h_t = float(th.dot(x, g))  # dL/dS at theta_t = theta_ref + S_t x_t
        x.add_(u)  # x_{t+1} = x_t + u_t
        scale = tuner.update(h_t)
        th.add(theta_ref, x, alpha=scale, out=tracked.work)  # theta_{t+1} = theta_ref + max(S_{t+1}, 0) x_{t+1}
        return scale

    def on_train_end(self, algo: BaseAlgorithm) -> None:
        # At the first train() end past each multiple of log_every, as weight clipping logs.
        now = algo.lifetime_timesteps  # type: ignore[attr-defined]
        if now // self.log_every <= self._logs_done or not self._tuners:
            return
        self._logs_done = now // self.log_every
        for loss_name, tuner in self._tuners.items():
            self.record(algo, f"scale/{loss_name}", tuner.scale)
