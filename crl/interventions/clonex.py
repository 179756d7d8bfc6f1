"""ClonEx: behavioural cloning of the earlier tasks' policies, and exploration by their heads.

ClonEx-SAC (Wolczyk et al. 2022, "Disentangling Transfer in Continual Reinforcement Learning"; 0.87
average performance on CW10 in SPEC.md §4) is Continual World's SAC with two additions, read from the
authors' code (``Episodic_SAC`` and ``ExplorationHelper`` of their Continual World fork):

- **Cloning.** At the end of every task, ``episodic_mem_per_task`` samples of its replay buffer are
  kept with the actor's Gaussian on them, ``N(mu*, sigma*)`` (and, with ``critic=True``, the critics'
  values ``Q*``). On the next tasks, each gradient step also takes the gradient of

      L_BC = coef * mean_memory KL(N(mu*, sigma*) || N(mu, sigma))        (+ coef * sum_i mean (Q_i - Q*_i)^2)

  on ``episodic_batch_size`` memory samples, and steps along the average of the two gradients,
  ``(g_SAC + g_BC) / 2``. Each sample keeps its task id, so a multi-head actor clones each task
  through that task's head.
- **Exploration** (:mod:`crl.interventions.head_exploration`): the warm-up episodes of every task
  after the first are played by an earlier task's head instead of random actions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch as th
from pydantic import Field, PrivateAttr

from crl.hooks import GradientStep
from crl.interventions.agem import EpisodicMemory
from crl.interventions.base import Intervention, InterventionError
from crl.interventions.head_exploration import ExplorationEpisodes, ExplorationKind, HeadExploration
from crl.interventions.importance import observation_rows, squashed_gaussian
from crl.metrics.losses import optimizer_parameters
from crl.metrics.probe_batch import draw_probe_batch
from crl.policies.crossq import kept_batch_norm_state
from crl.policies.multihead import TaskHeadsPolicyMixin, task_index, with_task_heads

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

KL_STD_EPSILON = 1e-6
"""Added to each standard deviation in the cloning KL (the authors' ``eps``)."""
TARGET_CHUNK = 1024
"""Memory samples per forward pass when the targets are recorded."""


class ClonedSamples(NamedTuple):
    """Memory samples with what the networks computed on them at their task's end.

    :param observations: the observations (a tensor, or a dict of tensors)
    :param actions: the stored actions, scaled to [-1, 1]
    :param mean: ``mu*``: the actor Gaussian's tanh-squashed mean, as Continual World's actor returns it
    :param log_std: ``log sigma*``: the actor Gaussian's (clamped) log standard deviation
    :param q_values: ``Q*``: ``(batch, critics, values per critic)`` (TQC: quantiles), or ``None``
    """

    observations: Any
    actions: th.Tensor
    mean: th.Tensor
    log_std: th.Tensor
    q_values: th.Tensor | None


def gaussian_kl(target_mean: th.Tensor, target_log_std: th.Tensor, mean: th.Tensor, log_std: th.Tensor) -> th.Tensor:
    """``KL(N(target) || N(current))`` of diagonal Gaussians, summed over the action dimensions, per sample.

    ``log(sigma / sigma*) + (sigma*^2 + (mu* - mu)^2) / (2 sigma^2) - 1/2`` with each ``sigma`` taken as
    ``exp(log_std) + 1e-6``, as the authors' code computes it (the log terms without the ``1e-6``).
    """
    target_variance = (target_log_std.exp() + KL_STD_EPSILON).square()
    variance = (log_std.exp() + KL_STD_EPSILON).square()
    log_ratio = log_std - target_log_std
    spread = (target_variance + (target_mean - mean).square()) / (2.0 * variance)
    return (log_ratio + spread - 0.5).sum(dim=-1)


def critic_values(policy: Any, observations: Any, actions: th.Tensor) -> th.Tensor:
    """Every critic's values as ``(batch, critics, values per critic)``: SAC's and CrossQ's tuple of
    Q-values, TQC's quantiles."""
    values = policy.critic(observations, actions)
    if isinstance(values, tuple):
        return th.stack([value.flatten(1) for value in values], dim=1)
    return values


class ClonEx(Intervention):
    """ClonEx-SAC (Wolczyk et al. 2022): cloning of the earlier tasks' policies and exploration by their heads.

    **Cloning** (``coef > 0``). At every task's end (``end_task()``, which :func:`crl.learn_continual`
    calls), up to ``episodic_mem_per_task`` distinct samples of the replay buffer join a memory that
    keeps every task's samples, each with the actor's ``tanh(mu*)`` and ``log sigma*`` on it (and the
    critics' ``Q*`` on its stored action with ``critic=True``), computed with batch norms (CrossQ) on
    their running statistics. From then on, every gradient step draws ``episodic_batch_size`` distinct
    memory samples; after the actor's backward pass its gradient becomes ``(g + g_BC) / 2``, ``g_BC``
    the gradient of ``coef * mean KL(N(tanh mu*, sigma*) || N(tanh mu, sigma))`` (:func:`gaussian_kl`),
    and with ``critic=True`` the critics' gradient ``(g + g_Q) / 2``, ``g_Q`` that of
    ``coef * sum_i mean (Q_i - Q*_i)^2``. Logs ``interventions/clonex/kl`` (the mean KL of the last
    ``train()``) and, at a task's end, ``interventions/clonex/memory`` (the samples kept).

    **Exploration** (``exploration``, see :data:`~crl.interventions.head_exploration.ExplorationKind`).
    While an off-policy algorithm warms up (its random actions before ``learning_starts``; Continual
    World's reference SAC: its ``random_steps``) on any task after the first, each episode is played by
    one task head of the multi-head policy, chosen at the episode's start: with ``best_return``, each
    earlier task's head plays one episode, then the head with the best mean return so far plays. Its
    actions are sampled from that head's Gaussian. Logs ``interventions/clonex/exploration_head``.

    Differences from the authors' code:

    - The gradients are averaged after SB3 computed them, SAC's critic step before the actor's (their
      SAC computes both first); the actor's parameters do not change in between, so ``g_BC`` is the same.
    - The memory's samples are distinct (theirs are drawn with replacement), and it is filled at a
      task's end from that task's buffer (theirs at the next task's start, from the same buffer).

    Defaults: ``coef=100``, ``episodic_mem_per_task=10000``, ``episodic_batch_size=128`` and
    ``best_return`` are the ClonEx run in the COOM benchmark's scripts (Tomilin et al. 2023); the
    ClonEx paper tunes the cloning strength per benchmark. ``coef=0`` keeps no memory
    (exploration only); ``exploration="uniform"`` is cloning alone (the paper's "BC").

    :param coef: the cloning strength (the authors' ``cl_reg_coef``); 0 turns cloning off
    :param critic: also clone the critics' values (the authors' ``regularize_critic``)
    :param episodic_mem_per_task: samples kept from each task
    :param episodic_batch_size: memory samples per gradient step
    :param exploration: which head plays the warm-up episodes of a new task
    """

    name = "clonex"
    algorithms = frozenset({"SAC", "TQC", "CrossQ"})

    coef: float = Field(default=100.0, ge=0.0)
    critic: bool = False
    episodic_mem_per_task: int = Field(default=10_000, gt=0)
    episodic_batch_size: int = Field(default=128, gt=0)
    exploration: ExplorationKind = "best_return"

    _memory: EpisodicMemory = PrivateAttr(default_factory=EpisodicMemory)
    _batch: ClonedSamples | None = PrivateAttr(default=None)
    _kl: list[float] = PrivateAttr(default_factory=list)
    _task_heads: list[int] = PrivateAttr(default_factory=list)
    _episodes: ExplorationEpisodes | None = PrivateAttr(default=None)
    _explored: bool = PrivateAttr(default=False)

    transient = ("_batch",)

    def check(self, algo: BaseAlgorithm) -> None:
        super().check(algo)
        policy_class = algo.policy_class  # type: ignore[attr-defined]
        if self.exploration != "uniform" and not issubclass(policy_class, TaskHeadsPolicyMixin):
            raise InterventionError(
                f"intervention {self.name!r}: exploration={self.exploration!r} lets earlier tasks' heads play, but "
                f"{policy_class.__name__} has one head; use policy='MultiHeadPolicy' (a sequence with "
                "task_id_in_obs=True), or exploration='uniform'"
            )

    # --- cloning ---------------------------------------------------------------------------------

    def on_task_end(self, algo: BaseAlgorithm, task_id: int) -> None:
        policy = algo.policy
        if isinstance(policy, TaskHeadsPolicyMixin) and algo._last_obs is not None:  # type: ignore[attr-defined]
            head = int(task_index(algo._last_obs, policy.n_heads)[0])  # type: ignore[attr-defined]
            if head not in self._task_heads:
                self._task_heads.append(head)
        if self.coef == 0.0:
            return
        # Seeded from numpy's global generator: the memory is part of training, like its minibatches.
        samples = draw_probe_batch(algo, self.episodic_mem_per_task, seed=int(np.random.randint(2**31)))
        self._memory.add(self._cloned(algo, samples.observations, samples.actions))
        self.record(algo, "memory", len(self._memory))

    def _cloned(self, algo: BaseAlgorithm, observations: Any, actions: th.Tensor) -> ClonedSamples:
        """The samples with the networks' present outputs on them, a chunk at a time."""
        cloned = EpisodicMemory()  # joins the chunks field by field
        with th.no_grad(), _batch_norms_on_running_statistics(algo.policy):
            for start in range(0, len(actions), TARGET_CHUNK):
                rows = slice(start, start + TARGET_CHUNK)
                chunk = observation_rows(observations, rows)
                mean, log_std = squashed_gaussian(algo.policy.actor, chunk)  # type: ignore[attr-defined]
                q_values = critic_values(algo.policy, chunk, actions[rows]) if self.critic else None
                cloned.add(ClonedSamples(chunk, actions[rows], mean, log_std, q_values))
        return cloned.samples

    def before_gradient_step(self, algo: BaseAlgorithm, step: GradientStep) -> None:
        self._batch = self._memory.sample(self.episodic_batch_size) if len(self._memory) else None

    def after_backward(self, algo: BaseAlgorithm, step: GradientStep) -> None:
        batch = self._batch
        if batch is None or step.optimizer is None:
            return
        if step.loss_name == "actor":
            with th.enable_grad(), _batch_norms_on_running_statistics(algo.policy):
                mean, log_std = squashed_gaussian(algo.policy.actor, batch.observations)  # type: ignore[attr-defined]
                kl = gaussian_kl(batch.mean, batch.log_std, mean, log_std).mean()
            self._kl.append(float(kl.detach()))
            _average_with_gradient(self.coef * kl, step.optimizer)
        elif step.loss_name == "critic" and self.critic:
            assert batch.q_values is not None
            with th.enable_grad(), _batch_norms_on_running_statistics(algo.policy):
                q_values = critic_values(algo.policy, batch.observations, batch.actions)
                squared_error = (q_values - batch.q_values).square().mean(dim=(0, 2)).sum()
            _average_with_gradient(self.coef * squared_error, step.optimizer)

    def on_train_end(self, algo: BaseAlgorithm) -> None:
        if self._kl:
            self.record(algo, "kl", float(np.mean(self._kl)))
            self._kl = []

    # --- exploration -----------------------------------------------------------------------------

    def on_task_start(self, algo: BaseAlgorithm, task_id: int) -> None:
        self._episodes = None

    def on_setup(self, algo: BaseAlgorithm) -> None:
        # After load the environments start new episodes: the heads' scores so far stay, the episodes
        # that were being played are dropped.
        if self._episodes is not None:
            self._episodes = ExplorationEpisodes(self._episodes.exploration, algo.n_envs)

    def warmup_actions(self, algo: BaseAlgorithm, observations: Any) -> np.ndarray | None:
        if self.exploration == "uniform" or not self._task_heads:
            return None
        policy = algo.policy
        assert isinstance(policy, TaskHeadsPolicyMixin)
        if self._episodes is None:
            current = int(task_index(observations, policy.n_heads)[0])
            earlier = [head for head in self._task_heads if head != current] or self._task_heads
            self._episodes = ExplorationEpisodes(HeadExploration(self.exploration, earlier, current), algo.n_envs)
        heads = self._episodes.heads_for_step()
        self._explored = True
        self.record(algo, "exploration_head", int(heads[0]))
        actions, _ = algo.predict(with_task_heads(observations, heads, policy.n_heads), deterministic=False)
        return actions

    def on_transition(self, algo: BaseAlgorithm, rewards: np.ndarray, dones: np.ndarray, infos: list[dict]) -> None:
        if self._episodes is None:
            return
        if not self._explored:  # the policy chose this step's actions: the warm-up is over
            self._episodes = None
            return
        self._explored = False
        self._episodes.observe(rewards, dones, infos)


@contextlib.contextmanager
def _batch_norms_on_running_statistics(policy: th.nn.Module) -> Iterator[None]:
    """A block in which CrossQ's batch norms normalise with, and do not update, their running statistics."""
    with kept_batch_norm_state(policy) as layers:
        for layer in layers:
            layer.train(False)
        yield


def _average_with_gradient(loss: th.Tensor, optimizer: th.optim.Optimizer) -> None:
    """``.grad <- (.grad + d loss / d theta) / 2`` over the parameters ``optimizer`` updates (a missing
    gradient counts as zero): the authors' ``merge_gradients``."""
    parameters = optimizer_parameters(optimizer)
    gradients = th.autograd.grad(loss, parameters, allow_unused=True)
    with th.no_grad():
        for parameter, gradient in zip(parameters, gradients, strict=True):
            if parameter.grad is None:
                parameter.grad = th.zeros_like(parameter)
            if gradient is not None:
                parameter.grad.add_(gradient)
            parameter.grad.mul_(0.5)
