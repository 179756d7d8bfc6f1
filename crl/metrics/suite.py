"""The metric suite of a policy's networks on a batch, under the names it is logged with.

Names are ``plasticity/<network>/<layer>/<metric>``:

- ``<network>`` is a network the algorithm trains (``policy.network_prefixes()``: DQN ``q_net``; PPO
  ``actor``, ``critic``; SAC, TQC and CrossQ ``actor``, ``qf0``, ``qf1``, ...; QR-DQN ``quantile_net``), or,
  for the metrics of a loss (``grad_norm``, ``hessian_top_eig``), the loss's name (DQN ``q_net``,
  PPO ``policy``, SAC and TQC ``critic``, ``actor``, QR-DQN ``quantile_net``);
- ``<layer>`` is a hidden layer ``layer<k>`` (k from the input), ``penultimate`` (the last hidden
  layer's pre-activation) or ``all`` (the whole network);
- ``<metric>`` is a name of SPEC.md §1.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch as th
from stable_baselines3.common.policies import ActorCriticPolicy

from crl.metrics.functions import (
    DORMANT_TAU,
    ActivationKind,
    activation_kind,
    dead_mask_of_activity,
    dormant_mask_of_activity,
    fau_from_counts,
    feature_norm,
    gram_singular_values,
    inactive_count,
    layer_fraction,
    pooled_fraction,
    rank_metrics_from_singular_values,
    unit_activity,
    weight_change,
    weight_magnitude,
)
from crl.policies.base import ContinualPolicyMixin
from crl.policies.features import LayerFeatures

PREFIX = "plasticity"
WHOLE = "all"
"""Layer key of metrics of a whole network (pooled unit metrics, weights, gradients, probe, Hessian)."""
PENULTIMATE = "penultimate"
"""Layer key of the last hidden layer's pre-activation (PFO's representation: its ranks and feature norm)."""
RANKS = ("srank", "effective_rank", "pca_rank", "feature_rank")


def metric_name(network: str, layer: str, metric: str) -> str:
    """The logged name ``plasticity/<network>/<layer>/<metric>``."""
    return f"{PREFIX}/{network}/{layer}/{metric}"


def feature_metrics(
    policy: ContinualPolicyMixin,
    observations: th.Tensor,
    actions: th.Tensor | None = None,
    dormant_tau: float | None = None,
) -> dict[str, float]:
    """Ranks, unit metrics and feature norms of every hidden layer of every trained network.

    Per hidden layer (post-activation): the four ranks, ``dormant_ratio``, ``dead_units``, ``fau``,
    ``feature_norm``; per network: ``dormant_ratio``, ``dead_units`` and ``fau`` pooled over its hidden
    layers (``all``); the four ranks and ``feature_norm`` of the last hidden layer's pre-activation
    (``penultimate``, SPEC.md §1's "penultimate pre-activation": PFO plots its rank and norm).
    The ranks use :func:`gram_singular_values`. A layer shared by two networks (PPO's shared CNN) is
    measured once, and a network's pooled metrics sum its layers' counts. A layer whose features are
    not all finite (a diverged network) gets NaN for each of its metrics and its network's pooled
    ones, with a ``RuntimeWarning`` naming it, rather than ending the training run.

    :param policy: a crl policy (runs under ``no_grad``; its train/eval mode is left as it is)
    :param observations: the probe batch's observations, as stored in the buffer
    :param actions: actions for networks that take them (SAC's critics); by default the actor's
    :param dormant_tau: threshold of ``dormant_ratio`` (default: SPEC's 0.025)
    """
    tau = DORMANT_TAU if dormant_tau is None else dormant_tau
    features = policy.hidden_features(observations, actions)
    hidden = policy.hidden_layers(list(features))
    by_path: dict[str, _LayerUnits] = {}
    penultimate: dict[str, dict[str, float]] = {}
    values: dict[str, float] = {}
    for network, by_layer in features.items():
        layers = [layer for layer in hidden[network] if layer.name in by_layer]
        if not layers:
            continue
        units = []
        for layer in layers:
            record = by_layer[layer.name]
            if record.path not in by_path:
                by_path[record.path] = _LayerUnits.measure(record, activation_kind(layer.activation), tau)
                if not by_path[record.path].finite:
                    warnings.warn(
                        f"plasticity metrics: the features of {network}/{layer.name} ({record.path}) are not all "
                        "finite; its metrics and its network's pooled ones are logged as NaN",
                        RuntimeWarning,
                        stacklevel=2,
                    )
            units.append(by_path[record.path])
            values.update({metric_name(network, layer.name, key): value for key, value in units[-1].values.items()})
        whole = {
            "dormant_ratio": pooled_fraction([unit.dormant for unit in units]),
            "dead_units": pooled_fraction([unit.dead for unit in units]),
            "fau": fau_from_counts(sum(unit.inactive for unit in units), sum(unit.entries for unit in units)),
        }
        if not all(unit.finite for unit in units):
            whole = dict.fromkeys(whole, math.nan)
        values.update({metric_name(network, WHOLE, key): value for key, value in whole.items()})
        last = by_layer[layers[-1].name]
        if last.path not in penultimate:
            penultimate[last.path] = _representation_metrics(last.pre)
        values.update({metric_name(network, PENULTIMATE, key): value for key, value in penultimate[last.path].items()})
    return values


def _representation_metrics(pre: th.Tensor) -> dict[str, float]:
    """The four ranks and ``feature_norm`` of the last hidden layer's pre-activation (PFO's representation)."""
    if not bool(th.isfinite(pre).all()):  # its post-activation's warning names the layer
        return {**dict.fromkeys(RANKS, math.nan), "feature_norm": feature_norm(pre)}
    ranks = rank_metrics_from_singular_values(gram_singular_values(pre), pre.shape[0])
    return {**ranks, "feature_norm": feature_norm(pre)}


@dataclass(frozen=True)
class _LayerUnits:
    """One hidden layer's metrics, and the masks and counts its network's pooled metrics sum."""

    values: dict[str, float]
    dormant: th.Tensor
    dead: th.Tensor
    inactive: int
    entries: int
    finite: bool = True

    @classmethod
    def measure(cls, features: LayerFeatures, kind: ActivationKind, tau: float) -> _LayerUnits:
        """The layer's ranks, unit metrics and feature norm, judging its units as ``kind`` with threshold ``tau``."""
        post = features.post
        if not bool(th.isfinite(post).all()):
            # NaN would count as active and make the Gram matrix's eigendecomposition fail.
            names = [*RANKS, "dormant_ratio", "dead_units", "fau"]
            values = {**dict.fromkeys(names, math.nan), "feature_norm": feature_norm(post)}
            nothing = th.zeros(0, dtype=th.bool)
            return cls(values, nothing, nothing, 0, 0, finite=False)
        activity = unit_activity(post)  # both masks judge it: one pass over the layer's entries, not two
        dormant, dead = dormant_mask_of_activity(activity, tau), dead_mask_of_activity(activity)
        inactive = inactive_count(post, kind)
        values = {
            **rank_metrics_from_singular_values(gram_singular_values(post), post.shape[0]),
            "dormant_ratio": layer_fraction(dormant),
            "dead_units": pooled_fraction([dead]),
            "fau": fau_from_counts(inactive, post.numel()),
            "feature_norm": feature_norm(post),
        }
        return cls(values, dormant, dead, inactive, post.numel())


def network_parameters(policy: ContinualPolicyMixin) -> dict[str, list[th.nn.Parameter]]:
    """All parameters of each trained network, heads included (a shared extractor counts for each)."""
    modules = dict(policy.named_modules())  # type: ignore[attr-defined]
    named_parameters = dict(policy.named_parameters())  # type: ignore[attr-defined]
    parameters: dict[str, list[th.nn.Parameter]] = {}
    for network, prefixes in policy.network_prefixes().items():
        # Output heads may lie outside the prefixes (which list the modules with hidden layers).
        paths = [*prefixes, *policy.output_layers().get(network, [])]
        if isinstance(policy, ActorCriticPolicy) and network == "actor" and "log_std" in named_parameters:
            paths.append("log_std")  # PPO's Gaussian log std is a bare parameter, not a layer
        found: dict[int, th.nn.Parameter] = {}
        for path in paths:
            owned = modules[path].parameters() if path in modules else [named_parameters[path]]
            found.update((id(p), p) for p in owned)
        parameters[network] = list(found.values())
    return parameters


def weight_metrics(
    parameters: Mapping[str, Sequence[th.Tensor]], previous: Mapping[str, Sequence[th.Tensor]] | None = None
) -> dict[str, float]:
    """``weight_magnitude`` of each network, and ``weight_change`` where a previous snapshot fits."""
    values = {metric_name(network, WHOLE, "weight_magnitude"): weight_magnitude(p) for network, p in parameters.items()}
    for network, params in (previous or {}).items():
        current = parameters.get(network)
        if current is not None and [p.shape for p in current] == [q.shape for q in params]:
            values[metric_name(network, WHOLE, "weight_change")] = weight_change(current, params)
    return values


def snapshot(parameters: Mapping[str, Sequence[th.Tensor]]) -> dict[str, list[th.Tensor]]:
    """Detached copies of the parameters, for the next ``weight_change``."""
    return {network: [p.detach().clone() for p in params] for network, params in parameters.items()}
