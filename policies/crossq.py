"""CrossQ policies: sb3-contrib's, with architecture options and access to hidden features.

sb3-contrib's CrossQ networks put a ``BatchRenorm1d`` before every ``Linear`` layer (the actor also
after its last hidden layer): ``BRN -> Linear -> ReLU -> BRN -> Linear -> ReLU -> ... -> BRN -> Linear``.
A hidden layer's pre-activation is therefore its ``Linear``'s output and its post-activation the
activation's output, which the next ``BatchRenorm1d`` normalises: :func:`~crl.policies.features.hidden_layers`
finds them through the activation modules as for SAC.

The running statistics of those layers are state a forward pass in training mode changes. crl's own
passes (hidden features, the Hessian's losses) keep them (:func:`kept_batch_norm_state`), and
:meth:`CrossQPolicyMixin.set_training_mode` notices the layers CrossQ's ``train()`` switched on its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch as th
from sb3_contrib.common.torch_layers import BatchRenorm
from sb3_contrib.crossq import policies as sb3_contrib
from torch import nn

from crl.policies.layers import ArchitectureOptions
from crl.policies.module_tree import SubmoduleRegistrations
from crl.policies.sac import SoftActorCriticPolicyMixin


def batch_renorm_layers(module: nn.Module) -> list[BatchRenorm]:
    """Every ``BatchRenorm`` layer under ``module`` (itself included), in ``modules()`` order."""
    return [layer for layer in module.modules() if isinstance(layer, BatchRenorm)]


@contextmanager
def kept_batch_norm_state(module: nn.Module) -> Iterator[list[BatchRenorm]]:
    """Inside the block, forward passes may change ``module``'s ``BatchRenorm`` layers; at exit they are restored.

    Restored are each layer's mode (``training``) and its buffers: the running mean and variance and
    the step count that ends the warm-up. A forward pass in training mode updates them in place, and a
    measurement must not. The affine ``scale`` and ``bias`` are parameters that only optimizers change.

    :param module: the module whose layers are kept (e.g. a policy)
    :return: the layers, for the block to switch
    """
    layers = batch_renorm_layers(module)
    modes = [layer.training for layer in layers]
    buffers = [[buffer.clone() for buffer in layer.buffers(recurse=False)] for layer in layers]
    try:
        yield layers
    finally:
        with th.no_grad():
            for layer, mode, saved in zip(layers, modes, buffers, strict=True):
                layer.train(mode)
                for buffer, value in zip(layer.buffers(recurse=False), saved, strict=True):
                    buffer.copy_(value)


class CrossQPolicyMixin(SoftActorCriticPolicyMixin):
    """CrossQ's networks: the ``actor`` and each critic ``qf0``, ``qf1``, ... (no target critic).

    Of the architecture options, ``activation`` works as for SAC; with ``batch_norm=True`` (CrossQ's
    default) ``layer_norm`` and CReLU or Fourier without ``crelu_halve_width`` are refused (see
    :meth:`_validate_architecture`), and ``two_hot`` is always refused. The critics' layers are called
    directly where that is exact (:meth:`critic_outputs`), each ``BatchRenorm1d`` through its own
    ``forward``, so that its running statistics move as in the module call.
    """

    algorithm_name = "CrossQ"
    critic_class = sb3_contrib.CrossQCritic
    actor: sb3_contrib.Actor
    critic: sb3_contrib.CrossQCritic
    _batch_renorms: list[BatchRenorm] | None = None
    """:meth:`batch_renorms` at the last change of the module tree (``None``: not listed yet)."""
    _batch_renorms_at: int = -1
    """:class:`SubmoduleRegistrations` count when :attr:`_batch_renorms` was listed."""

    def _validate_architecture(self, architecture: ArchitectureOptions, kwargs: dict[str, Any]) -> None:
        if self.two_hot is not None:
            raise ValueError(
                f"policy option two_hot={self.two_hot.options()!r} is not supported by CrossQ: its critic loss "
                "is the squared TD error of a joint forward pass of (s, a) and (s', a'), which crl has no "
                "categorical version of; leave two_hot out"
            )
        if kwargs.get("batch_norm", True):
            if architecture.layer_norm is not None:
                # The rewrite sizes LayerNorm by a dry run, which would step the BatchRenorm layers'
                # statistics, and a LayerNorm after a BatchRenorm'd input normalises twice.
                raise ValueError(
                    f"policy option layer_norm={architecture.layer_norm!r} is not supported by CrossQ with "
                    "batch_norm=True: its BatchRenorm layers already normalise the input of every Linear "
                    "layer; pass batch_norm=False to use LayerNorm instead"
                )
            if architecture.concatenated and not architecture.crelu_halve_width:
                raise ValueError(
                    f"policy option activation={architecture.activation!r} is not supported by CrossQ with "
                    "batch_norm=True unless crelu_halve_width=True: the BatchRenorm layer after each activation "
                    "normalises the net_arch width, which this activation doubles; pass crelu_halve_width=True "
                    "or batch_norm=False"
                )
        super()._validate_architecture(architecture, kwargs)

    def target_networks(self) -> dict[str, str]:
        # CrossQ trains without a target critic: the TD target comes from the same joint forward pass.
        return {}

    def unit_recycling_problem(self) -> str | None:
        if not self.batch_renorms():
            return None
        return (
            "the BatchRenorm layer after each hidden layer turns a dead unit's zero output into a constant "
            "(its bias minus its scaled running mean) that the next layer reads, so zeroing the unit's "
            "outgoing weights would change the Q-values and the actions; use batch_norm=False"
        )

    def batch_renorms(self) -> list[BatchRenorm]:
        """The policy's ``BatchRenorm`` layers, listed again only when the module tree may have changed."""
        if self._batch_renorms is None or self._batch_renorms_at != SubmoduleRegistrations.count:
            self._batch_renorms = batch_renorm_layers(self)  # type: ignore[arg-type]
            self._batch_renorms_at = SubmoduleRegistrations.count
        return self._batch_renorms

    def set_training_mode(self, mode: bool) -> None:
        """crl's mode switch (:meth:`ContinualPolicyMixin.set_training_mode`), aware of CrossQ's own switches.

        CrossQ's ``train()`` switches the ``BatchRenorm`` layers by themselves
        (``set_bn_training_mode``) and leaves them in eval mode; crl's switch, skipped when the policy
        is already in ``mode``, would not see that. A layer not in ``mode`` makes the switch happen,
        as sb3-contrib's always does.
        """
        if any(layer.training != mode for layer in self.batch_renorms()):
            self._training_mode = None
        super().set_training_mode(mode)

    def run_networks(self, observations: th.Tensor, actions: th.Tensor | None) -> None:
        # The networks as they act: BatchRenorm normalises with its running statistics, which stay as they were.
        with kept_batch_norm_state(self) as layers:  # type: ignore[arg-type]
            for layer in layers:
                layer.train(False)
            super().run_networks(observations, actions)


class CrossQPolicy(CrossQPolicyMixin, sb3_contrib.CrossQPolicy):
    """sb3-contrib's ``MlpPolicy`` for CrossQ plus the ``activation`` option (and ``layer_norm`` or
    ``crelu``/``fourier`` without batch norm, see :class:`CrossQPolicyMixin`)."""


MlpPolicy = CrossQPolicy
