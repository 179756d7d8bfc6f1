"""A-GEM: gradient steps that do not increase the loss on an episodic memory of earlier tasks.

Averaged gradient episodic memory (Chaudhry et al. 2019), Continual World's A-GEM baseline (Wolczyk
et al. 2021; its CW20 row in SPEC.md §4). At the end of every task, ``episodic_mem_per_task`` samples
of the task's data are kept. From then on, every gradient step also computes the reference gradient
``g_ref`` of the same loss on ``episodic_batch_size`` samples of that memory, and when the step's
gradient ``g`` points against it, ``g`` is projected onto the half-space where the memory's loss does
not increase (to first order):

    g <- g - (g . g_ref) / (g_ref . g_ref) * g_ref      if g . g_ref < 0
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch as th
from pydantic import Field, PrivateAttr
from torch.utils._pytree import tree_map

from crl.hooks import GradientStep
from crl.interventions.base import Intervention, InterventionError
from crl.metrics.losses import optimizer_parameters
from crl.metrics.probe_batch import draw_probe_batch

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm


class ReferenceGradient(NamedTuple):
    """The memory's gradient of one loss, over the parameters its optimizer updates."""

    parameters: list[th.Tensor]
    gradients: list[th.Tensor]
    squared_norm: float


def project_onto_reference(reference: ReferenceGradient) -> bool:
    """A-GEM's projection of the gradients in ``.grad`` of ``reference.parameters``, in place.

    ``g <- g - (g . g_ref) / ||g_ref||^2 g_ref`` when ``g . g_ref < 0``, which makes ``g . g_ref = 0``;
    otherwise ``g`` is left alone. The dot product and the norm run over all the tensors at once; a
    parameter without a gradient counts as a zero gradient (and gets one if ``g`` is projected).

    :return: whether ``g`` pointed against ``g_ref`` (Continual World's "violation") and was projected
    """
    pairs = zip(reference.parameters, reference.gradients, strict=True)
    g_dot_g_ref = float(sum(th.vdot(p.grad.flatten(), r.flatten()) for p, r in pairs if p.grad is not None))
    if g_dot_g_ref >= 0.0:
        return False
    for parameter in reference.parameters:
        if parameter.grad is None:
            parameter.grad = th.zeros_like(parameter)
    gradients = [parameter.grad for parameter in reference.parameters]
    th._foreach_add_(gradients, reference.gradients, alpha=-g_dot_g_ref / reference.squared_norm)  # type: ignore[arg-type]
    return True


class EpisodicMemory:
    """Samples of the tasks learned so far, as the buffer's own sample type (SB3's ``*BufferSamples``).

    Never overwritten: each task's samples are appended after those of the earlier tasks.
    """

    def __init__(self) -> None:
        self.samples: Any = None

    def __len__(self) -> int:
        return 0 if self.samples is None else len(self.samples.actions)

    def add(self, samples: Any) -> None:
        """Append ``samples`` (of the same buffer type as the samples already kept)."""
        if self.samples is None:
            self.samples = samples
        else:  # field by field, dict observations key by key; a field SB3 leaves None stays None
            joined = tree_map(lambda kept, new: kept if kept is None else th.cat([kept, new]), self.samples, samples)
            self.samples = joined

    def sample(self, batch_size: int) -> Any:
        """``batch_size`` distinct samples (all if fewer are kept), drawn from numpy's global generator
        like SB3's minibatches (the memory is part of training)."""
        indices = th.as_tensor(_distinct_indices(len(self), batch_size))
        return tree_map(lambda kept: kept if kept is None else kept[indices.to(kept.device)], self.samples)


def _distinct_indices(n: int, k: int) -> np.ndarray:
    """``min(k, n)`` distinct indices below ``n``, uniformly.

    Continual World uses ``np.random.choice(n, k, replace=False)``, which permutes all ``n`` (1.8 ms
    for CW20's 190,000 samples, at every gradient step); redrawing the repeats of ``k`` uniform
    draws gives the same distribution of sets at the cost of ``k``.
    """
    if k >= n:
        return np.arange(n)
    if 2 * k > n:
        return np.sort(np.random.permutation(n)[:k])
    chosen = np.unique(np.random.randint(0, n, size=k))
    while len(chosen) < k:
        chosen = np.unique(np.concatenate([chosen, np.random.randint(0, n, size=k - len(chosen))]))
    return chosen


class AGEM(Intervention):
    """A-GEM (Chaudhry et al. 2019) as Continual World's baseline runs it.

    At every task's end (``end_task()``, which :func:`crl.learn_continual` calls), up to
    ``episodic_mem_per_task`` distinct samples of the task's data (the replay buffer, or PPO's last
    rollout) join the episodic memory, which keeps every task's samples. From then on, each gradient
    step draws ``episodic_batch_size`` distinct samples of the memory, computes the reference
    gradient of each of the algorithm's losses on them (``training_losses``, the loss ``train()``
    minimises; PPO's at ratio 1), and projects the step's gradient of that loss with
    :func:`project_onto_reference` before the optimizer steps. Samples keep their task id, so a
    multi-head policy computes each sample's loss with its own task's head. Logs
    ``interventions/agem/violation`` (the fraction of the last ``train()``'s gradients that were
    projected, Continual World's ``agem_violation``) and, at a task's end,
    ``interventions/agem/memory`` (the samples kept). The memory is saved with the model.

    Differences from Continual World's code, which optimises SAC's actor and critics in one step:

    - Each loss is projected on its own (SAC's, TQC's and CrossQ's critic loss with the critics'
      reference gradient, then the actor loss with the actor's), since SB3 steps the critics before
      computing the actor's loss; Continual World takes one dot product over actor and critics. Both
      reference gradients are computed at the start of the gradient step, as Continual World does.
    - The projection acts on the gradient as the algorithm leaves it, after SB3's gradient clipping
      (DQN, QR-DQN and PPO clip; SAC does not). The projected gradient has the same direction as
      Continual World's (a projection commutes with scaling) and a norm no larger.
    - The memory's samples are distinct (Continual World draws them with replacement), and the
      memory also takes the last task's samples (Continual World fills it at the next task's start).

    The reference gradient costs one more forward and backward pass of each loss per gradient step,
    on ``episodic_batch_size`` samples.

    :param episodic_mem_per_task: samples kept from each task (Continual World: 10,000)
    :param episodic_batch_size: memory samples per reference gradient (Continual World: 128)
    """

    name = "agem"

    episodic_mem_per_task: int = Field(default=10_000, gt=0)
    episodic_batch_size: int = Field(default=128, gt=0)

    _memory: EpisodicMemory = PrivateAttr(default_factory=EpisodicMemory)
    _references: dict[str, ReferenceGradient] = PrivateAttr(default_factory=dict)
    _violations: list[bool] = PrivateAttr(default_factory=list)

    transient = ("_references",)

    def check(self, algo: BaseAlgorithm) -> None:
        super().check(algo)
        if not hasattr(algo, "training_losses"):
            raise InterventionError(
                f"intervention {self.name!r} needs the algorithm's losses on any batch (training_losses()), "
                f"which {type(algo).__name__} does not have; use crl's DQN, QRDQN, PPO, SAC, TQC or CrossQ"
            )

    def on_task_end(self, algo: BaseAlgorithm, task_id: int) -> None:
        # Seeded from numpy's global generator: the memory is part of training, like its minibatches.
        self._memory.add(draw_probe_batch(algo, self.episodic_mem_per_task, seed=int(np.random.randint(2**31))))
        self.record(algo, "memory", len(self._memory))

    def before_gradient_step(self, algo: BaseAlgorithm, step: GradientStep) -> None:
        if len(self._memory) == 0:
            return
        batch = self._memory.sample(self.episodic_batch_size)
        losses = algo.training_losses(batch)  # type: ignore[attr-defined]
        self._references = {name: _reference_gradient(loss, optimizer) for name, (loss, optimizer) in losses.items()}

    @th.no_grad()
    def after_backward(self, algo: BaseAlgorithm, step: GradientStep) -> None:
        reference = self._references.pop(step.loss_name, None)
        if reference is None:
            return
        self._violations.append(project_onto_reference(reference))

    def on_train_end(self, algo: BaseAlgorithm) -> None:
        if self._violations:
            self.record(algo, "violation", float(np.mean(self._violations)))
            self._violations = []


def _reference_gradient(loss: th.Tensor, optimizer: th.optim.Optimizer) -> ReferenceGradient:
    """``d loss / d theta`` over the parameters ``optimizer`` updates (0 where the loss does not reach)."""
    parameters = optimizer_parameters(optimizer)
    gradients = th.autograd.grad(loss, parameters, allow_unused=True)
    reference = [th.zeros_like(p) if g is None else g for p, g in zip(parameters, gradients, strict=True)]
    squared_norm = float(sum(th.vdot(r.flatten(), r.flatten()) for r in reference))
    return ReferenceGradient(parameters, reference, squared_norm)
