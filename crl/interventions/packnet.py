"""PackNet: each task owns a share of the weights, pruned free for the next tasks (Mallya & Lazebnik 2018).

Continual World's PackNet baseline (Wolczyk et al. 2021; its CW20 row in SPEC.md §4 is the best of
the baselines: average performance 0.80, no forgetting). Every weight matrix entry has an owner,
a task id. Task ``t`` trains only the entries it owns; at its end, of those entries the
``1 / (tasks left + 1)`` largest in magnitude stay with it, the others are set to 0 and handed to
task ``t + 1``, and the kept ones are retrained for ``retrain_steps`` gradient steps. Biases and
normalisation parameters train during the first task only. Evaluated on task ``k``, the network
computes with the entries owned by tasks ``<= k`` and zeros elsewhere, which is the network that
solved task ``k``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch as th
from pydantic import Field, PrivateAttr

from crl.hooks import GradientStep
from crl.interventions.base import Intervention, InterventionError
from crl.interventions.importance import check_protected_networks, regularised_parameters
from crl.interventions.network import target_parameters
from crl.metrics.probe_batch import draw_probe_batch
from crl.optim import algorithm_optimizers, clear_optimizer_state
from crl.policies.crossq import batch_renorm_layers

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

GradientMasks = tuple[list[th.Tensor], list[th.Tensor]]
"""Parameters and the 0/1 factor of each one's gradient."""

PROBE_SIZE = 64
"""Samples on which the protected networks' outputs show which parameters they depend on."""


def prune_task_weights(weight: th.Tensor, owner: th.Tensor, task: int, prune_fraction: float) -> th.Tensor:
    """PackNet's pruning of the entries of ``weight`` that ``task`` owns, in place (``weight`` and ``owner``).

    Of the ``n`` entries owned by ``task``, those whose magnitude is at most the ``floor(n *
    prune_fraction)``-th smallest magnitude (counting from 0) are set to 0 and given to ``task + 1``;
    the others stay with ``task``, as do the entries other tasks own. (Continual World's threshold.)

    :return: the freed entries (a boolean mask shaped like ``weight``)
    """
    owned = owner == task
    magnitudes = weight[owned].abs().sort().values
    if len(magnitudes) == 0:
        return th.zeros_like(owned)
    threshold = magnitudes[int(len(magnitudes) * prune_fraction)]
    freed = owned & (weight.abs() <= threshold)
    weight.masked_fill_(freed, 0.0)
    owner.masked_fill_(freed, task + 1)
    return freed


class PackNet(Intervention):
    """PackNet (Mallya & Lazebnik 2018) as Continual World's baseline runs it.

    Protected are the parameters of the network that acts (SAC's, TQC's and CrossQ's actor, PPO's
    action distribution, DQN's Q-network, QR-DQN's quantile network) and, with ``critic=True``, the
    critics', except the task heads of a multi-head policy, which each task trains on its own (as
    Continual World's "common variables"). Weight matrices and convolution kernels (parameters of 2
    or more dimensions) are shared out between the tasks; the other protected parameters (biases,
    LayerNorm's gains) train during the first task only.

    - While task ``t`` trains (``algo.current_task``, set by ``start_task()``), the gradient of every
      shared entry that task ``t`` does not own is zeroed before the optimizer steps, and so is the
      gradient of the frozen parameters from the second task on.
    - At the end of task ``t < n_tasks - 1``: :func:`prune_task_weights` with the fraction ``(n_tasks
      - t - 1) / (n_tasks - t)``, then every optimizer's state is cleared, ``retrain_steps`` gradient
      steps are taken on the task's replay buffer (the algorithm's ``train()``, masked as above), and
      the optimizers' state is cleared again. The last task keeps all it owns.
    - Evaluated on task ``k`` (:meth:`crl.ContinualAlgorithm.evaluating`, which the continual loop
      calls), the shared entries owned by tasks after ``k`` read 0, and batch norms (CrossQ's
      ``BatchRenorm``) hold the running statistics they had at task ``k``'s end, which the later tasks'
      training goes on updating; training's values come back after.

    The owners are set at the first task's end (every entry belongs to task 0 until then, so the
    first task trains as without PackNet) and are saved with the model. Logs, at a task's end,
    ``interventions/packnet/owned`` (the fraction of the shared entries that tasks up to the ended
    one own).

    The pruned entries are zeroed in the target networks too (DQN's, QR-DQN's; SAC's and TQC's critics
    with ``critic=True``), as SPEC.md §2 asks of every intervention that edits parameters; Continual
    World's polyak averaging lets its target critics follow on their own.

    Differences from Continual World: its CW20 runs also clip every gradient's global norm at 2e-5
    (``clipnorm``), which SB3's SAC has no option for; PPO cannot retrain (it keeps only the last
    rollout), so it needs ``retrain_steps=0``.

    :param n_tasks: tasks in the sequence (the share each task keeps depends on the tasks left);
        ``None``: the length of the sequence :func:`crl.learn_continual` trains on
    :param retrain_steps: gradient steps after each pruning (Continual World's CW20 runs: 100,000)
    :param critic: also share out the critics (Continual World's ``regularize_critic``)
    """

    name = "packnet"

    n_tasks: int | None = Field(default=None, ge=1)
    retrain_steps: int = Field(default=100_000, ge=0)
    critic: bool = False

    _owners: dict[str, th.Tensor] | None = PrivateAttr(default=None)
    _frozen: list[str] = PrivateAttr(default_factory=list)
    _masks: dict[tuple[int, int], GradientMasks] = PrivateAttr(default_factory=dict)
    _training_values: dict[str, th.Tensor] = PrivateAttr(default_factory=dict)
    _statistics: dict[int, list[th.Tensor]] = PrivateAttr(default_factory=dict)
    _training_statistics: list[th.Tensor] = PrivateAttr(default_factory=list)

    transient = ("_masks", "_training_values", "_training_statistics")

    def check(self, algo: BaseAlgorithm) -> None:
        super().check(algo)
        check_protected_networks(self.name, algo, self.critic)
        if algo.algorithm_family == "PPO" and self.retrain_steps > 0:  # type: ignore[attr-defined]
            raise InterventionError(
                f"intervention {self.name!r}: retrain_steps={self.retrain_steps}, but PPO keeps only its last "
                "rollout to retrain on; set retrain_steps=0"
            )

    def check_sequence(self, n_tasks: int) -> None:
        if self.n_tasks is None:
            self.n_tasks = n_tasks
        elif n_tasks != self.n_tasks:
            raise InterventionError(
                f"intervention {self.name!r}: n_tasks={self.n_tasks}, but the sequence has {n_tasks} tasks; set "
                f"n_tasks: {n_tasks}, or leave it out to take the sequence's"
            )

    def on_task_start(self, algo: BaseAlgorithm, task_id: int) -> None:
        if self.n_tasks is not None and task_id >= self.n_tasks:
            raise InterventionError(
                f"intervention {self.name!r}: task {task_id} starts, but n_tasks={self.n_tasks}; set n_tasks to "
                "the number of tasks in the sequence"
            )
        self._masks.clear()

    def on_task_end(self, algo: BaseAlgorithm, task_id: int) -> None:
        if self.n_tasks is None:
            raise InterventionError(
                f"intervention {self.name!r}: task {task_id} ends, but n_tasks is not known; give n_tasks (the "
                "number of tasks in the sequence), or train with crl.learn_continual, which takes the sequence's"
            )
        if task_id >= self.n_tasks - 1:
            return
        if self._owners is None:
            self._share_out(algo)
        assert self._owners is not None
        parameters, targets = dict(algo.policy.named_parameters()), target_parameters(algo)
        tasks_left = self.n_tasks - task_id - 1
        with th.no_grad():
            for name, owner in self._owners.items():
                freed = prune_task_weights(parameters[name], owner, task_id, tasks_left / (tasks_left + 1))
                target = targets.get(parameters[name])
                if target is not None:  # the target network gets the same edit (SPEC.md §2)
                    target.masked_fill_(freed, 0.0)
        self._masks.clear()
        self._retrain(algo)
        statistics = _batch_norm_statistics(algo.policy)
        if statistics:
            self._statistics[task_id] = [value.detach().clone() for value in statistics]
        owned = th.cat([(owner <= task_id).flatten() for owner in self._owners.values()])
        self.record(algo, "owned", float(owned.float().mean()))

    @th.no_grad()
    def after_backward(self, algo: BaseAlgorithm, step: GradientStep) -> None:
        if self._owners is None:
            return
        assert step.optimizer is not None
        parameters, masks = self._gradient_masks(algo, step.optimizer)
        present = [(p, m) for p, m in zip(parameters, masks, strict=True) if p.grad is not None]
        if present:
            th._foreach_mul_([p.grad for p, _ in present], [m for _, m in present])  # type: ignore[misc]

    def on_evaluation_start(self, algo: BaseAlgorithm, task_id: int) -> None:
        if self._owners is None:
            return
        parameters = dict(algo.policy.named_parameters())
        with th.no_grad():
            for name, owner in self._owners.items():
                self._training_values[name] = parameters[name].detach().clone()
                parameters[name].masked_fill_(owner > task_id, 0.0)
            if task_id in self._statistics:
                statistics = _batch_norm_statistics(algo.policy)
                self._training_statistics = [value.clone() for value in statistics]
                th._foreach_copy_(statistics, self._statistics[task_id])

    def on_evaluation_end(self, algo: BaseAlgorithm, task_id: int) -> None:
        parameters = dict(algo.policy.named_parameters())
        with th.no_grad():
            for name, value in self._training_values.items():
                parameters[name].copy_(value)
            if self._training_statistics:
                th._foreach_copy_(_batch_norm_statistics(algo.policy), self._training_statistics)
        self._training_values, self._training_statistics = {}, []

    def _share_out(self, algo: BaseAlgorithm) -> None:
        """Give every entry of the protected weight matrices to task 0, and list the frozen parameters."""
        probe = draw_probe_batch(algo, PROBE_SIZE, seed=0)
        protected, _ = regularised_parameters(algo, self.critic, probe.observations, probe.actions)
        self._owners = {
            name: th.zeros_like(p, dtype=th.int64, requires_grad=False) for name, p in protected.items() if p.dim() >= 2
        }
        self._frozen = [name for name, p in protected.items() if p.dim() < 2]

    def _gradient_masks(self, algo: BaseAlgorithm, optimizer: th.optim.Optimizer) -> GradientMasks:
        """The protected parameters ``optimizer`` updates and the 0/1 factor of each one's gradient."""
        task = getattr(algo, "current_task", None) or 0
        key = (id(optimizer), task)
        if key not in self._masks:
            assert self._owners is not None
            updated = {id(p) for group in optimizer.param_groups for p in group["params"]}
            frozen = set(self._frozen)
            parameters: list[th.Tensor] = []
            masks: list[th.Tensor] = []
            for name, parameter in algo.policy.named_parameters():
                if id(parameter) not in updated:
                    continue
                if name in self._owners:
                    parameters.append(parameter)
                    masks.append((self._owners[name] == task).to(parameter.dtype))
                elif name in frozen:
                    parameters.append(parameter)
                    masks.append(th.zeros_like(parameter))
            self._masks[key] = (parameters, masks)
        return self._masks[key]

    def _retrain(self, algo: BaseAlgorithm) -> None:
        """Clear the optimizers, retrain the kept entries on the task's data, clear them again (as CW)."""
        for optimizer in algorithm_optimizers(algo):
            clear_optimizer_state(optimizer)
        if self.retrain_steps > 0:
            algo.train(gradient_steps=self.retrain_steps, batch_size=algo.batch_size)  # type: ignore[attr-defined]
            for optimizer in algorithm_optimizers(algo):
                clear_optimizer_state(optimizer)


def _batch_norm_statistics(policy: th.nn.Module) -> list[th.Tensor]:
    """The buffers of every ``BatchRenorm`` layer of the policy (running mean and variance, step count)."""
    return [buffer for layer in batch_renorm_layers(policy) for buffer in layer.buffers(recurse=False)]
