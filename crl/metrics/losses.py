"""The training losses of an algorithm evaluated for a measurement, away from training's state.

The Hessian's top eigenvalue and GraMa differentiate the loss ``train()`` minimises on a fixed
batch. Both need it computed the same way: the networks in eval mode, the sampling inside the losses
(SAC's actions) on a forked, seeded generator, and every mode and stream restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch as th

from crl.random_draws import forked_devices

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

TrainingLosses = dict[str, tuple[th.Tensor, th.optim.Optimizer]]
"""Loss name -> (the loss with its autograd graph, the optimizer that minimises it)."""


def optimizer_parameters(optimizer: th.optim.Optimizer) -> list[th.Tensor]:
    """The trainable parameters an optimizer updates."""
    return [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]


@contextmanager
def measured_training_losses(algo: BaseAlgorithm, batch: object, seed: int) -> Iterator[TrainingLosses]:
    """The algorithm's ``training_losses(batch)``, computed for a measurement.

    The networks run in eval mode, whatever the policy's mode (restored on leaving, also on error):
    in training mode a spectral-normalised layer would step its power iteration at every forward
    pass, and measuring must not change the model. Sampling inside the losses happens on a forked
    torch generator seeded with ``seed``, so training's random stream is untouched.

    :param algo: a crl algorithm (it has ``training_losses``)
    :param batch: a batch as ``algo.training_losses`` takes it (e.g. the monitor's probe batch)
    :param seed: seed of the sampling inside the losses
    """
    policy = algo.policy
    was_training = policy.training
    policy.set_training_mode(False)
    try:
        with th.random.fork_rng(**forked_devices(algo.device)):
            th.manual_seed(seed)
            yield algo.training_losses(batch)  # type: ignore[attr-defined]
    finally:
        policy.set_training_mode(was_training)
