"""Offline analysis: the metric suite of a saved (or live) model on a batch of observations."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch as th
from gymnasium import spaces

from crl.metrics.config import MetricsConfig
from crl.metrics.monitor import plasticity_probes
from crl.metrics.probe import ACTION_VALUE_FAMILIES, first_array
from crl.metrics.suite import feature_metrics, network_parameters, weight_metrics

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

    from crl.policies.base import ContinualPolicyMixin


def evaluate(
    model: BaseAlgorithm,
    observations: np.ndarray | th.Tensor,
    actions: np.ndarray | th.Tensor | None = None,
    *,
    config: MetricsConfig | Mapping[str, Any] | None = None,
    plasticity_probe: bool = False,
) -> dict[str, float]:
    """The metric suite of ``model`` on a batch of observations, named as the monitor logs it.

    Computes, for every trained network, the feature metrics of every hidden layer and pooled
    (``plasticity/<network>/<layer-or-all>/<metric>``, see :mod:`crl.metrics.suite`) and
    ``weight_magnitude``; with ``plasticity_probe=True`` also each network's ``plasticity_probe``.
    What needs training history or a training batch (``weight_change``, ``grad_norm``,
    ``hessian_top_eig``, ``grama_ratio``) is only logged during training. The model is left as it was.

    >>> model = crl.DQN.load("checkpoint.zip")
    >>> values = crl.metrics.evaluate(model, observations)
    >>> values["plasticity/q_net/all/dormant_ratio"]

    :param model: a ``crl.DQN``, ``crl.PPO``, ``crl.SAC``, ``crl.QRDQN`` or ``crl.TQC`` (trained, or loaded
        from a checkpoint)
    :param observations: a batch of observations, shaped like the observation space with a batch axis
        in front (images as stored, e.g. uint8)
    :param actions: actions for SAC's and TQC's critics (in the buffer's scaled form, cast to float32); by
        default the actor's deterministic actions
    :param config: metric settings (``dormant_tau``, the plasticity probe's budget and ``seed``; as in
        training, the model's seed when ``seed`` is not given)
    :param plasticity_probe: also run the (expensive) plasticity probe
    :raises ValueError: a batch that is empty or not shaped like its space with a batch axis in front
    """
    settings = MetricsConfig.make(config) if config is not None else MetricsConfig()
    _check_batch("observations", observations, model.observation_space)
    if actions is not None:
        _check_batch("actions", actions, model.action_space, len(first_array(observations)))
    policy: ContinualPolicyMixin = model.policy  # type: ignore[assignment]
    obs = policy._to_tensor(observations)
    was_training = policy.training  # type: ignore[attr-defined]
    policy.set_training_mode(False)  # type: ignore[attr-defined]
    try:
        act = None if actions is None else policy._to_tensor(actions)
        if act is not None and act.is_floating_point():
            # The networks compute in float32; numpy gives float64, which SAC's critics cannot
            # concatenate with their float32 features (observations are cast by preprocess_obs).
            act = act.float()
        if act is None and model.algorithm_family in ACTION_VALUE_FAMILIES:  # type: ignore[attr-defined]
            with th.no_grad():
                act = policy.actor(obs, deterministic=True)  # type: ignore[attr-defined]
        values = feature_metrics(policy, obs, act, settings.dormant_tau)
        values.update(weight_metrics(network_parameters(policy)))
        if plasticity_probe:
            seed = settings.seed if settings.seed is not None else (model.seed if model.seed is not None else 0)
            batch_size = settings.plasticity_probe_batch_size or model.batch_size  # type: ignore[attr-defined]
            family = model.algorithm_family  # type: ignore[attr-defined]
            values.update(
                plasticity_probes(policy, family, obs, act, settings.plasticity_probe_epochs, batch_size, seed)
            )
    finally:
        policy.set_training_mode(was_training)  # type: ignore[attr-defined]
    return values


def _check_batch(name: str, batch: Any, space: spaces.Space, size: int | None = None) -> None:
    """Refuse a batch that is empty or not shaped ``(N, *space.shape)`` (each key of a ``Dict`` space).

    Without this, an unbatched observation or a wrong width ends deep in torch with a message about
    dimensions or matrix shapes.
    """
    if isinstance(space, spaces.Dict):
        if not isinstance(batch, Mapping) or set(batch) != set(space.spaces):
            raise ValueError(f"{name} must be a mapping with the keys {sorted(space.spaces)} of the observation space")
        for key, subspace in space.spaces.items():
            _check_batch(f"{name}[{key!r}]", batch[key], subspace, size)
        return
    shape = tuple(np.shape(batch))
    expected = "(N, " + ", ".join(map(str, space.shape)) + ")" if space.shape else "(N,)"
    if shape[1:] != space.shape or not shape or shape[0] == 0 or (size is not None and shape[0] != size):
        count = "N >= 1" if size is None else f"N = {size}, the number of observations"
        space_text = f"its {type(space).__name__} space has the shape {space.shape}"
        raise ValueError(f"{name} must have the shape {expected} with {count} ({space_text}), got {shape}")
