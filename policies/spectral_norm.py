"""Spectral normalisation of chosen layers of a policy's networks (the policy option ``spectral_norm``).

A normalised layer computes with ``W / sigma(W)``, ``sigma`` the largest singular value of ``W``
estimated by one step of power iteration per training-mode forward pass
(:func:`torch.nn.utils.parametrizations.spectral_norm`; conv kernels as ``out x (in * kh * kw)``
matrices). Miyato et al. 2018 introduced it for GAN critics; Gogianu et al. 2021 apply it to DQN's
penultimate layer, and Lyle et al. 2023 ("Understanding plasticity in neural networks") compare it
with other interventions against plasticity loss.

Which layers (of every network the algorithm trains, see ``network_prefixes``):

- ``"hidden"``: every Linear/Conv2d layer that computes a hidden layer (features extractor included);
- ``"head"``: the output layers (DQN's Q-value layer, PPO's ``action_net`` and ``value_net``, SAC's
  ``mu``/``log_std`` and each critic's last layer);
- ``"all"``: both;
- a list of module paths in the policy, e.g. ``["q_net.q_net.2"]``.

Target networks (DQN's ``q_net_target``, SAC's ``critic_target``) get the same layers normalised and
estimate the norm of their own weights: they run in eval mode (SB3), but their power iteration follows
the policy's training mode (:meth:`ContinualPolicyMixin.set_training_mode`), so it steps once per
target forward pass during ``train()``, as in the reference implementations, whose target networks
stay in training mode (e.g. DrQ's ``critic_target``). Outside ``train()`` (acting, metrics) no
normalised layer iterates, so measuring never changes training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch as th
from torch import nn
from torch.nn.utils import parametrizations, parametrize

if TYPE_CHECKING:
    from crl.policies.base import ContinualPolicyMixin

SPECTRAL_NORM_GROUPS = ("hidden", "head", "all")
SpectralNormOption = Literal["hidden", "head", "all"] | list[str] | None

_WEIGHT_LAYERS = (nn.Linear, nn.Conv2d)


def check_spectral_norm_option(option: object) -> None:
    """Reject anything but ``None``, a group name or a list of module paths."""
    is_paths = isinstance(option, list | tuple) and all(isinstance(path, str) for path in option)
    if option is not None and option not in SPECTRAL_NORM_GROUPS and not is_paths:
        raise ValueError(
            f"policy option spectral_norm={option!r} is not allowed; use one of "
            f"{[None, *SPECTRAL_NORM_GROUPS]} or a list of module paths"
        )


def weight_layer_groups(policy: ContinualPolicyMixin) -> dict[str, list[str]]:
    """``{"hidden": paths, "head": paths}``: the weight layers of the trained networks, in forward order.

    A network's heads are its :meth:`output_layers`, or else the last weight layer under its prefixes;
    a layer shared by several networks (e.g. PPO's features extractor) is listed once.
    """
    modules = dict(policy.named_modules())  # type: ignore[attr-defined]
    outputs = policy.output_layers()
    groups: dict[str, list[str]] = {"hidden": [], "head": []}
    seen: set[nn.Module] = set()
    for network, prefixes in policy.network_prefixes().items():
        found = [
            path
            for prefix in prefixes
            for path, module in policy.get_submodule(prefix).named_modules(prefix=prefix)  # type: ignore[attr-defined]
            if isinstance(module, _WEIGHT_LAYERS)
        ]
        heads = outputs.get(network) or found[-1:]
        hidden = [path for path in found if path not in heads]
        for group, paths in (("hidden", hidden), ("head", heads)):
            for path in paths:
                if isinstance(modules[path], _WEIGHT_LAYERS) and modules[path] not in seen:
                    seen.add(modules[path])
                    groups[group].append(path)
    return groups


def selected_layers(policy: ContinualPolicyMixin, option: str | Sequence[str]) -> list[str]:
    """The module paths ``option`` names in ``policy``.

    :raises ValueError: a path that is not a Linear/Conv2d layer of a trained network (listing those)
    """
    groups = weight_layer_groups(policy)
    if option == "all":
        return groups["hidden"] + groups["head"]
    if isinstance(option, str):
        return groups[option]
    allowed = groups["hidden"] + groups["head"]
    unknown = [path for path in option if path not in allowed]
    if unknown:
        raise ValueError(
            f"policy option spectral_norm names {unknown}, which are not weight layers of the trained networks; "
            f"weight layers: {allowed}"
        )
    return list(option)


def apply_spectral_norm(policy: ContinualPolicyMixin, paths: Sequence[str], targets: dict[str, str]) -> None:
    """Normalise the layers at ``paths`` and their twins in the target networks, in place.

    The parameters keep their identity (``weight`` becomes ``parametrizations.weight.original``), so
    optimizers built before stay valid. The power-iteration vectors are drawn on a forked torch
    generator: the option changes how the networks compute, not the random stream of the run.

    :param targets: online network attribute -> its target network attribute (e.g. ``q_net`` -> ``q_net_target``)
    """
    layers = [policy.get_submodule(path) for path in paths]  # type: ignore[attr-defined]
    with th.random.fork_rng(devices=[]):
        for layer in layers:
            parametrizations.spectral_norm(layer)
        for online_name, target_name in targets.items():
            online, target = getattr(policy, online_name), getattr(policy, target_name)
            for path, module in online.named_modules():
                if module in layers:
                    parametrizations.spectral_norm(target.get_submodule(path))
            # The target starts as a copy of the online network, power-iteration vectors included.
            target.load_state_dict(online.state_dict())


def set_power_iteration(module: nn.Module, mode: bool) -> None:
    """Turn the power iteration of every spectral-normalised layer in ``module`` on or off.

    A layer iterates in training mode; target networks stay in eval mode otherwise (SB3), so their
    normalisations are switched with the policy's training mode instead (see the module docstring).
    """
    for layer in module.modules():
        if parametrize.is_parametrized(layer, "weight"):
            layer.parametrizations.train(mode)  # type: ignore[union-attr,operator]
