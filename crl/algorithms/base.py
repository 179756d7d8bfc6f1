"""What ``crl.DQN``, ``crl.PPO`` and ``crl.SAC`` add to their SB3 parents.

:class:`ContinualAlgorithm` is mixed in before the SB3 class. It takes the two extra constructor
arguments (``interventions``, ``metrics``), lets interventions shape the policy before it is built,
dispatches hooks (see :mod:`crl.hooks`; the metrics monitor is the last hook) and exposes task
boundaries. The subclasses' ``train()`` methods keep SB3's math line for line and call the
gradient-step hooks.
"""

from __future__ import annotations

import contextlib
import inspect
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar, cast

import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, ConvertCallback
from stable_baselines3.common.env_util import is_wrapped
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.patch_gym import _patch_env

from crl.hooks import GradientStep, HookDispatcher
from crl.interventions.base import Intervention, InterventionError, crl_policy_problem, make_interventions
from crl.metrics.config import MetricsConfig, MetricsError
from crl.metrics.monitor import MetricsMonitor
from crl.optim import algorithm_optimizers, clip_grad_norm_, compute_gradients, optimizer_step, use_multi_tensor_updates
from crl.policies.layers import InjectedHead
from crl.policies.two_hot import TwoHot
from crl.wrappers.vec_env import DummyVecEnv

InterventionSpec = Intervention | str | Mapping[str, Any]


def _metrics_monitor(metrics: MetricsConfig | Mapping[str, Any] | None) -> MetricsMonitor | None:
    return None if metrics is None else MetricsMonitor(MetricsConfig.make(metrics))


class ContinualAlgorithm:
    """Mixin adding interventions, hooks and task boundaries to an SB3 algorithm.

    :param interventions: interventions to apply, composed in the given order: instances (e.g.
        ``[LayerNorm(), ReDo(tau=0.1)]``), names, or mappings ``{"name": ..., **parameters}``
    :param metrics: plasticity monitoring: ``None`` (off), a :class:`~crl.metrics.MetricsConfig` or a
        mapping of its settings (e.g. ``{"every": 5000, "hessian_every": 50_000}``); an unknown key or
        a bad value raises :class:`~crl.metrics.MetricsError` here. The monitor is kept in
        ``metrics_monitor`` (its last values in ``metrics_monitor.latest``).
    """

    algorithm_family: ClassVar[str]
    """``"DQN"``, ``"PPO"``, ``"SAC"``, ``"QRDQN"``, ``"TQC"`` or ``"CrossQ"``: what interventions check their
    applicability against."""
    loss_names: ClassVar[tuple[str, ...]]
    """The losses ``train()`` optimises, as :attr:`crl.hooks.GradientStep.loss_name` names them."""

    interventions: list[Intervention]
    current_task: int | None
    metrics_monitor: MetricsMonitor | None
    policy_kwargs: dict[str, Any]
    _hooks: HookDispatcher
    _earlier_timesteps: int = 0
    _earlier_episodes: int = 0

    def __init__(
        self,
        policy: Any,
        env: Any,
        *args: Any,
        interventions: Iterable[InterventionSpec] | None = None,
        metrics: MetricsConfig | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.interventions = make_interventions(interventions)
        self.metrics_monitor = _metrics_monitor(metrics)
        self.current_task = None
        self._intervention_owner = uuid.uuid4().hex  # not saved: a loaded model is a model of its own
        self._hooks = HookDispatcher(())
        super().__init__(policy, env, *args, **kwargs)  # type: ignore[call-arg]

    @property
    def _algo(self) -> BaseAlgorithm:
        """``self`` as the SB3 algorithm it is mixed into."""
        return cast("BaseAlgorithm", self)

    @property
    def two_hot(self) -> TwoHot | None:
        """The support of the policy's categorical value head (policy option ``two_hot``), or ``None``."""
        return getattr(self._algo.policy, "two_hot", None)

    def _setup_model(self) -> None:
        self._take_load_arguments()
        for intervention in self.interventions:
            intervention.check(self._algo)
        problem = crl_policy_problem(self._algo)
        if self.metrics_monitor is not None and problem is not None:
            raise MetricsError(f"metrics are measured on the networks of a crl policy, but {problem}")
        # A copy: interventions write policy options into it, and the user's dict must stay as given.
        self.policy_kwargs = dict(self.policy_kwargs)
        for intervention in self.interventions:
            intervention.configure_policy(self._algo, self.policy_kwargs)
        bound: list[Intervention] = []
        try:
            for intervention in self.interventions:
                intervention.bind(self._intervention_owner)
                bound.append(intervention)
            super()._setup_model()  # type: ignore[misc]
            self._use_multi_tensor_updates()
            monitors = [] if self.metrics_monitor is None else [self.metrics_monitor]
            self._hooks = HookDispatcher([*self.interventions, *monitors])
            self._hooks("on_setup", self._algo)
        except BaseException:
            for intervention in bound:  # a model that failed to build owns nothing (another model's stay its)
                intervention.release()
            raise

    def _take_load_arguments(self) -> None:
        """Read ``interventions`` and ``metrics`` given to ``load()`` as the constructor reads them.

        SB3's ``load(path, **kwargs)`` (and ``custom_objects``) sets each keyword as an attribute of
        the model as given: names and mappings of interventions, and ``metrics`` under its own name,
        which no code would read.
        """
        self.interventions = make_interventions(self.interventions)
        attributes = vars(self)
        if "metrics" in attributes:
            self.metrics_monitor = _metrics_monitor(attributes.pop("metrics"))

    def _use_multi_tensor_updates(self) -> None:
        # Bitwise SB3's updates, with fewer Python dispatches: about 5 % of PPO's time on CartPole.
        for optimizer in algorithm_optimizers(self._algo):
            use_multi_tensor_updates(optimizer)

    def set_parameters(self, load_path_or_dict: Any, exact_match: bool = True, device: Any = "auto") -> None:
        self._check_injected_heads(load_path_or_dict)
        # Loaded optimizer state brings its saved settings, e.g. those of a model saved by plain SB3.
        super().set_parameters(load_path_or_dict, exact_match, device)  # type: ignore[misc]
        self._use_multi_tensor_updates()

    def _check_injected_heads(self, parameters: Any) -> None:
        """Refuse saved parameters of injected heads that this model's policy has not got.

        A plasticity injection rebuilds its heads on ``load`` from its saved state; a new instance given
        to ``load(..., interventions=[...])`` has none, and torch would list the mismatched keys.
        """
        saved = parameters.get("policy", {}) if isinstance(parameters, dict) else {}
        injected = any(".new_frozen." in key for key in saved)
        if injected and not any(isinstance(module, InjectedHead) for module in self._algo.policy.modules()):
            raise InterventionError(
                "the saved parameters hold heads that plasticity_injection injected, but this model's "
                "interventions have not injected them (interventions given to load() start without state); "
                "load without interventions=, or give the saved model's own PlasticityInjection"
            )

    @staticmethod
    def _wrap_env(env: GymEnv, verbose: int = 0, monitor_wrapper: bool = True) -> VecEnv:
        # SB3's wrapping, with crl's DummyVecEnv for a single environment (same values, cheaper copies).
        if not isinstance(env, VecEnv):
            env = _patch_env(env)
            if not is_wrapped(env, Monitor) and monitor_wrapper:
                if verbose >= 1:
                    print("Wrapping the env with a `Monitor` wrapper")
                env = Monitor(env)
            if verbose >= 1:
                print("Wrapping the env in a DummyVecEnv.")
            env = DummyVecEnv([lambda: env])
        return BaseAlgorithm._wrap_env(env, verbose, monitor_wrapper)

    def _init_callback(self, callback: MaybeCallback, progress_bar: bool = False) -> BaseCallback:
        if self._hooks.uses_callback:
            relay = _HookCallback(self._hooks)
            if callback is None:
                # Alone rather than in a list beside SB3's empty ConvertCallback(None): one callback per step
                callback = relay
            else:
                given = callback if isinstance(callback, list) else [callback]
                callback = [*(c if isinstance(c, BaseCallback) else ConvertCallback(c) for c in given), relay]
        elif callback is None:
            callback = _NoCallback()
        return super()._init_callback(callback, progress_bar)  # type: ignore[misc]

    @property
    def lifetime_timesteps(self) -> int:
        """Environment steps over every ``learn()`` call of this model: the clock of interventions' schedules.

        ``num_timesteps`` restarts at 0 with each ``learn(reset_num_timesteps=True)``, as the continual
        loop calls it at every task; a step-based schedule (``at_steps``, ``every``) counts the whole
        training, as its docs say.
        """
        return self._earlier_timesteps + self._algo.num_timesteps

    @property
    def lifetime_episodes(self) -> int:
        """Episodes over every ``learn()`` call of this model (``_episode_num`` restarts with ``num_timesteps``)."""
        return self._earlier_episodes + self._algo._episode_num

    def _setup_learn(self, total_timesteps: int, callback: MaybeCallback = None, reset_num_timesteps: bool = True,
                     *args: Any, **kwargs: Any) -> tuple[int, BaseCallback]:  # fmt: skip
        if reset_num_timesteps:  # SB3 sets num_timesteps and _episode_num to 0 next
            self._earlier_timesteps += self._algo.num_timesteps
            self._earlier_episodes += self._algo._episode_num
        return super()._setup_learn(total_timesteps, callback, reset_num_timesteps, *args, **kwargs)  # type: ignore[misc]

    def _excluded_save_params(self) -> list[str]:
        # The dispatcher is rebuilt from `interventions` by `_setup_model` on load; the owner token is new.
        return [*super()._excluded_save_params(), "_hooks", "_intervention_owner"]  # type: ignore[misc]

    def _optimize(
        self,
        step: GradientStep | None,
        loss_name: str,
        loss: th.Tensor,
        optimizer: th.optim.Optimizer,
        clip: tuple[Iterable[th.nn.Parameter], float] | None = None,
        recompute: Callable[[], th.Tensor] | None = None,
    ) -> None:
        """One optimizer step on ``loss`` plus the hooks' auxiliary terms, with the gradient-step hooks.

        :param clip: ``(parameters, max_grad_norm)`` when the algorithm clips the gradient norm
        :param recompute: ``loss`` computed again at the current parameters (same batch, targets and random
            draws, features recorded as for ``loss``), for ``step.recompute_gradients``
        """
        full_loss = self._hooks.add_auxiliary_losses(self._algo, step, loss_name, loss)
        compute_gradients(optimizer, full_loss)
        grad_norm = clip_grad_norm_(*clip) if clip is not None else None
        if step is not None:
            step.recompute_gradients = None
            if recompute is not None and self._hooks.replaces_gradients:
                step.recompute_gradients = lambda: self._gradients_again(step, loss_name, optimizer, clip, recompute)
        self._hooks.after_backward(self._algo, step, optimizer, grad_norm)
        optimizer_step(optimizer)
        self._hooks.after_optimizer_step(self._algo, step)

    def _gradients_again(
        self,
        step: GradientStep,
        loss_name: str,
        optimizer: th.optim.Optimizer,
        clip: tuple[Iterable[th.nn.Parameter], float] | None,
        recompute: Callable[[], th.Tensor],
    ) -> th.Tensor:
        """What ``step.recompute_gradients`` does (see :class:`~crl.hooks.GradientStep`)."""
        first_loss, first_features = step.loss, dict(step.features)
        step.recomputing = True
        try:
            loss = recompute()
            compute_gradients(optimizer, self._hooks.add_auxiliary_losses(self._algo, step, loss_name, loss))
        finally:
            step.recomputing = False
            step.loss, step.features = first_loss, first_features
        if clip is not None:
            step.clipped_grad_norm = clip_grad_norm_(*clip)
        return loss

    def start_task(self, task_id: int) -> None:
        """Tell the interventions that task ``task_id`` of a sequence starts."""
        self.current_task = task_id
        self._hooks("on_task_start", self._algo, task_id)

    def end_task(self, task_id: int | None = None) -> None:
        """Tell the interventions that the current task (or ``task_id``) ends."""
        task = self.current_task if task_id is None else task_id
        if task is None:
            raise ValueError("end_task() needs a task_id when no task was started with start_task()")
        self._hooks("on_task_end", self._algo, task)

    @contextlib.contextmanager
    def evaluating(self, task_id: int) -> Iterator[None]:
        """Inside the block the policy is evaluated on task ``task_id`` of a sequence (PackNet shows that
        task's parameters); the interventions restore training's state after it, also on error."""
        self._hooks("on_evaluation_start", self._algo, task_id)
        try:
            yield
        finally:
            self._hooks("on_evaluation_end", self._algo, task_id)


class _NoCallback(BaseCallback):
    """What runs when ``learn()`` gets no callback: SB3's empty ``ConvertCallback(None)``, without copying locals.

    SB3 hands the collection loop's local variables to the callback at every step; a callback that
    does not read them need not copy them into its ``locals`` (a dict update per environment step).
    """

    def update_locals(self, locals_: dict[str, Any]) -> None:
        pass

    def _on_step(self) -> bool:
        return True


class _HookCallback(_NoCallback):
    """Relays SB3's callback events to the hooks: SB3 exposes the env step only to callbacks.

    Hooks see the algorithm, not the collection loop's local variables, which it does not copy.
    """

    def __init__(self, hooks: HookDispatcher) -> None:
        super().__init__()
        self.hooks = hooks

    def _on_training_start(self) -> None:
        self.hooks("on_training_start", self.model)

    def _on_step(self) -> bool:
        self.hooks("on_step", self.model)
        return True

    def _on_rollout_end(self) -> None:
        self.hooks("on_rollout_end", self.model)

    def _on_training_end(self) -> None:
        self.hooks("on_training_end", self.model)


def logged_mean(values: list[float]) -> np.floating:
    """``np.mean(values)``, the value SB3 logs per ``train()`` call; for one value, without NumPy's reduction.

    DQN and SAC take one gradient step per ``train()`` call by default, and ``np.mean`` of one float
    (a new array, a reduction, a division by 1) costs about 7 us; ``np.float64`` of it is the same
    value of the same type.
    """
    return np.float64(values[0]) if len(values) == 1 else np.mean(values)


def with_sb3_signature(cls: type, sb3_class: type) -> type:
    """Give ``cls`` the signature of ``sb3_class`` plus ``interventions`` and ``metrics``.

    The mixin's constructor forwards every SB3 argument, so help() and IDEs should show them all.
    """
    sb3_params = list(inspect.signature(sb3_class).parameters.values())
    extra = [
        param.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        for name, param in inspect.signature(ContinualAlgorithm.__init__).parameters.items()
        if name in ("interventions", "metrics")
    ]
    positional = [p for p in sb3_params if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    keyword_only = [p for p in sb3_params if p.kind is inspect.Parameter.KEYWORD_ONLY]
    cls.__signature__ = inspect.Signature([*positional, *keyword_only, *extra])  # type: ignore[attr-defined]
    return cls
