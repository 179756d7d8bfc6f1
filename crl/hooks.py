"""The hook protocol through which interventions (and monitors) take part in training.

A :class:`TrainingHook` overrides only the hooks it needs; :class:`HookDispatcher` calls each hook
on just the objects that override it, so an unused hook costs one empty-tuple loop. The order in
which hooks fire within one training step is drawn in ``docs/architecture.md``.

Rule for implementers: never keep a reference to the algorithm (it is passed to every hook). Hook
objects are pickled with the model by ``save``, and their state must survive ``load``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch as th

from crl.policies.features import Features

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm


@dataclass
class GradientStep:
    """What the hooks of one gradient step see.

    One object lives through a gradient step; ``loss_name`` and the fields after it are updated for
    each loss optimised in that step (SAC and TQC optimise ``"critic"`` then ``"actor"``).

    :param index: index of the gradient step within the current ``train()`` call
    :param batch: the replay-buffer or rollout minibatch
    :param loss_name: the loss being optimised: ``"q_net"`` (DQN), ``"quantile_net"`` (QR-DQN),
        ``"policy"`` (PPO's joint actor-critic loss), ``"critic"`` or ``"actor"`` (SAC, TQC)
    :param features: hidden features recorded during this step's forward passes, per network (only
        when a hook asked for them through ``needs_features``)
    :param loss: the algorithm's loss for ``loss_name``, before auxiliary terms
    :param optimizer: the optimizer about to step (or that just stepped)
    :param clipped_grad_norm: the gradient norm returned by the algorithm's gradient clipping, if any
    :param recompute_gradients: from ``replace_gradients`` on, when the algorithm can compute the loss
        ``loss_name`` again: computes it once more on the same batch, with the same targets and the same
        random draws, at the parameters as they are now, puts the gradients of it plus the auxiliary
        terms into ``.grad`` (clipped where the algorithm clips, ``clipped_grad_norm`` updated) and
        returns the loss (before auxiliary terms). ``features`` and ``loss`` are left as the first pass
        made them. ``None`` when no hook replaces gradients.
    :param recomputing: whether the auxiliary terms being asked for are those of ``recompute_gradients``
        (a penalty logs only the first pass's)
    """

    index: int
    batch: Any
    loss_name: str = ""
    features: Features = field(default_factory=dict)
    loss: th.Tensor | None = None
    optimizer: th.optim.Optimizer | None = None
    clipped_grad_norm: th.Tensor | None = None
    recompute_gradients: Callable[[], th.Tensor] | None = None
    recomputing: bool = False

    @property
    def grad_norm(self) -> float:
        """Total L2 norm of the gradient before clipping (the clip's own value when there is one)."""
        if self.clipped_grad_norm is not None:
            return float(self.clipped_grad_norm)
        assert self.optimizer is not None, "the gradient norm is known from after_backward on"
        params = (p for group in self.optimizer.param_groups for p in group["params"])
        grads = [p.grad for p in params if p.grad is not None]
        return float(th.nn.utils.get_total_norm(grads)) if grads else 0.0


class TrainingHook:
    """Base class of everything that hooks into training. Every hook is a no-op here.

    Hooks that modify the networks must leave the optimizer consistent (see SPEC.md §2).
    """

    needs_features: ClassVar[bool] = False
    """Whether :meth:`auxiliary_loss` and later gradient-step hooks read ``step.features``."""

    def configure_policy(self, algo: BaseAlgorithm, policy_kwargs: dict[str, Any]) -> None:
        """Before the networks are built: adjust the policy's keyword arguments in place."""

    def on_setup(self, algo: BaseAlgorithm) -> None:
        """The networks and optimizers exist (also after ``load``: do not overwrite loaded state)."""

    def on_training_start(self, algo: BaseAlgorithm) -> None:
        """``learn()`` starts."""

    def on_step(self, algo: BaseAlgorithm) -> None:
        """After every step of the vectorised environment (``algo.num_timesteps`` is up to date)."""

    def warmup_actions(self, algo: BaseAlgorithm, observations: Any) -> np.ndarray | None:
        """An off-policy algorithm warms up (SB3's uniformly random actions before ``learning_starts``):
        the actions to take instead, one row per environment in the environment's action space (as
        ``predict`` returns them), or ``None`` to leave them random. The first hook that answers acts."""
        return None

    def on_transition(self, algo: BaseAlgorithm, rewards: np.ndarray, dones: np.ndarray, infos: list[dict]) -> None:
        """An off-policy algorithm stores an environment step: its rewards, episode ends and infos, one per
        environment, as the vectorised environment returned them."""

    def on_rollout_end(self, algo: BaseAlgorithm) -> None:
        """Collection ends, before ``train()``."""

    def on_train_start(self, algo: BaseAlgorithm) -> None:
        """A ``train()`` call starts (learning rates are already updated)."""

    def transform_batch(self, algo: BaseAlgorithm, batch: Any) -> Any:
        """A minibatch is drawn: return it, or a changed copy (e.g. augmented observations) to train on.

        Hooks transform in turn, before ``before_gradient_step``, so every later hook sees the result.
        """
        return batch

    def before_gradient_step(self, algo: BaseAlgorithm, step: GradientStep) -> None:
        """A minibatch is drawn, before any forward pass."""

    def auxiliary_loss(self, algo: BaseAlgorithm, step: GradientStep) -> th.Tensor | None:
        """A term added to the loss ``step.loss_name``, or ``None``."""
        return None

    def replace_gradients(self, algo: BaseAlgorithm, step: GradientStep) -> None:
        """Gradients of the full loss are in ``.grad``, clipped where the algorithm clips: replace them, e.g. by
        the gradients at other parameters through ``step.recompute_gradients`` (sharpness-aware minimisation).

        Runs before every hook's ``after_backward``, which then sees the replaced gradients.
        """

    def after_backward(self, algo: BaseAlgorithm, step: GradientStep) -> None:
        """Gradients of the full loss are in ``.grad``, clipped where the algorithm clips, before the optimizer step."""

    def after_optimizer_step(self, algo: BaseAlgorithm, step: GradientStep) -> None:
        """The optimizer of ``step.loss_name`` has stepped."""

    def on_train_end(self, algo: BaseAlgorithm) -> None:
        """A ``train()`` call ends."""

    def on_training_end(self, algo: BaseAlgorithm) -> None:
        """``learn()`` ends."""

    def on_task_start(self, algo: BaseAlgorithm, task_id: int) -> None:
        """A task of a sequence starts (called by the continual training loop)."""

    def on_task_end(self, algo: BaseAlgorithm, task_id: int) -> None:
        """A task of a sequence ends."""

    def on_evaluation_start(self, algo: BaseAlgorithm, task_id: int) -> None:
        """The policy is about to be evaluated on task ``task_id`` of a sequence (by the continual loop)."""

    def on_evaluation_end(self, algo: BaseAlgorithm, task_id: int) -> None:
        """The evaluation on task ``task_id`` is over (also when it failed): training resumes after it."""


HOOK_NAMES: tuple[str, ...] = tuple(
    name for name, value in vars(TrainingHook).items() if callable(value) and not name.startswith("_")
)
GRADIENT_STEP_HOOKS = (
    "before_gradient_step",
    "auxiliary_loss",
    "replace_gradients",
    "after_backward",
    "after_optimizer_step",
)
# Hooks that must be reached through an SB3 callback, because SB3 exposes those moments only there.
CALLBACK_HOOKS = ("on_training_start", "on_step", "on_rollout_end", "on_training_end")


def _overrides(hook: TrainingHook, name: str) -> bool:
    return getattr(type(hook), name) is not getattr(TrainingHook, name)


class HookDispatcher:
    """Calls each hook on the objects that override it, in the order they were given.

    :param hooks: interventions and monitors, in the order they should act
    """

    def __init__(self, hooks: Iterable[TrainingHook]) -> None:
        self.hooks = tuple(hooks)
        self._by_name = {name: tuple(h for h in self.hooks if _overrides(h, name)) for name in HOOK_NAMES}
        self.records_features = any(h.needs_features for h in self.hooks)
        self.per_gradient_step = any(self._by_name[name] for name in GRADIENT_STEP_HOOKS)
        self.uses_callback = any(self._by_name[name] for name in CALLBACK_HOOKS)
        # Read at every environment step of an off-policy algorithm: a flag, not a tuple lookup.
        self.replaces_warmup = bool(self._by_name["warmup_actions"])
        # Read at every gradient step: whether the algorithm must prepare step.recompute_gradients.
        self.replaces_gradients = bool(self._by_name["replace_gradients"])
        self.observes_transitions = bool(self._by_name["on_transition"])

    def __call__(self, name: str, algo: BaseAlgorithm, *args: Any) -> None:
        for hook in self._by_name[name]:
            getattr(hook, name)(algo, *args)

    def transform_batch(self, algo: BaseAlgorithm, batch: Any) -> Any:
        """``batch`` passed through every hook's ``transform_batch`` (the same object when none acts)."""
        for hook in self._by_name["transform_batch"]:
            batch = hook.transform_batch(algo, batch)
        return batch

    def warmup_actions(self, algo: BaseAlgorithm, observations: Any) -> np.ndarray | None:
        """The first hook's warm-up actions (see :meth:`TrainingHook.warmup_actions`), or ``None``."""
        for hook in self._by_name["warmup_actions"]:
            actions = hook.warmup_actions(algo, observations)
            if actions is not None:
                return actions
        return None

    def begin_gradient_step(self, algo: BaseAlgorithm, index: int, batch: Any) -> GradientStep | None:
        """The step object for this gradient step, or ``None`` when no hook acts per gradient step."""
        if not self.per_gradient_step:
            return None
        step = GradientStep(index=index, batch=batch)
        self("before_gradient_step", algo, step)
        return step

    def recording(
        self, policy: Any, step: GradientStep | None, networks: list[str]
    ) -> contextlib.AbstractContextManager[Any]:
        """Record the hidden features of ``networks`` into ``step.features`` during the ``with`` block."""
        if step is None or not self.records_features:
            return contextlib.nullcontext()
        return _RecordInto(policy, step, networks)

    def add_auxiliary_losses(
        self, algo: BaseAlgorithm, step: GradientStep | None, loss_name: str, loss: th.Tensor
    ) -> th.Tensor:
        """``loss`` plus every hook's auxiliary term for it (the same tensor when there is none)."""
        if step is None:
            return loss
        step.loss_name, step.loss = loss_name, loss
        for hook in self._by_name["auxiliary_loss"]:
            term = hook.auxiliary_loss(algo, step)
            if term is not None:
                loss = loss + term
        return loss

    def after_backward(
        self,
        algo: BaseAlgorithm,
        step: GradientStep | None,
        optimizer: th.optim.Optimizer,
        clipped_grad_norm: th.Tensor | None = None,
    ) -> None:
        if step is None:
            return
        step.optimizer, step.clipped_grad_norm = optimizer, clipped_grad_norm
        self("replace_gradients", algo, step)
        self("after_backward", algo, step)

    def after_optimizer_step(self, algo: BaseAlgorithm, step: GradientStep | None) -> None:
        if step is not None:
            self("after_optimizer_step", algo, step)


class _RecordInto:
    """Records features of some networks and merges them into ``step.features`` on exit."""

    def __init__(self, policy: Any, step: GradientStep, networks: list[str]) -> None:
        self.recorder = policy.record_features(networks)
        self.step = step

    def __enter__(self) -> None:
        self.recorder.__enter__()

    def __exit__(self, *exc_info: Any) -> None:
        self.recorder.__exit__(*exc_info)
        self.step.features.update(self.recorder.features())
