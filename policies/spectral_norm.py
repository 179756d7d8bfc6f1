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
- a list of module paths in the policy, e.g. ``["q_net.q_net.2"]``, each named once.

An output layer that stacks one head per task along its outputs (:class:`~crl.policies.MultiHeadSACPolicy`,
see :meth:`ContinualPolicyMixin.task_heads`) is normalised head by head (:class:`HeadwiseSpectralNorm`):
one ``sigma`` for the whole matrix would make every head's output depend on every other head's
weights, so training one task would move the other tasks' heads.

Target networks (DQN's ``q_net_target``, SAC's ``critic_target``) get the same layers normalised and
estimate the norm of their own weights: they run in eval mode (SB3), but their power iteration follows
the policy's training mode (:meth:`ContinualPolicyMixin.set_training_mode`), so it steps once per
target forward pass during ``train()``, as in the reference implementations, whose target networks
stay in training mode (e.g. DrQ's ``critic_target``). Outside ``train()`` (acting, metrics) no
normalised layer iterates, so measuring never changes training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import torch as th
from torch import nn
from torch.nn import functional as F
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
    paths: list[str] = list(option) if is_paths else []  # type: ignore[call-overload]
    # A layer can be parametrized once; a second registration would fail deep inside torch.
    repeated = sorted({path for path in paths if paths.count(path) > 1})
    if repeated:
        raise ValueError(f"policy option spectral_norm={paths!r} names {repeated} more than once; name each layer once")


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


class HeadwiseSpectralNorm(nn.Module):
    """Parametrization ``W -> W_h / sigma(W_h)`` for each head ``W_h`` of a stacked output layer.

    The rows of ``W`` (``heads * k`` x ``in``) are ``heads`` blocks of ``k`` rows, as
    :func:`~crl.policies.multihead.select_head` reads them; each block has its own power-iteration
    vectors, stepped once per training-mode forward pass, as
    :func:`torch.nn.utils.parametrizations.spectral_norm` does for a whole matrix. A head's
    normalised weight depends on its own rows only, so only the selected head receives gradients.

    :param weight: the layer's weight, ``(heads * k, in)``
    :param heads: the number of heads stacked along the rows
    :param eps: added to norms, as in torch's spectral norm
    """

    _u: th.Tensor
    """``(heads, k)``: each head's left singular vector estimate."""
    _v: th.Tensor
    """``(heads, in)``: each head's right singular vector estimate."""

    def __init__(self, weight: th.Tensor, heads: int, eps: float = 1e-12) -> None:
        super().__init__()
        if weight.ndim != 2 or weight.shape[0] % heads:
            raise ValueError(f"a weight of shape {tuple(weight.shape)} does not split into {heads} heads of rows")
        self.heads = heads
        self.eps = eps
        blocks = self._blocks(weight.detach())
        u = F.normalize(blocks.new_empty(heads, blocks.shape[1]).normal_(0, 1), dim=1, eps=eps)
        v = F.normalize(blocks.new_empty(heads, blocks.shape[2]).normal_(0, 1), dim=1, eps=eps)
        self.register_buffer("_u", u)
        self.register_buffer("_v", v)
        self._power_method(blocks, 15)  # as torch: start from converged vectors

    def _blocks(self, weight: th.Tensor) -> th.Tensor:
        """``(heads, k, in)``: head ``h`` is rows ``h k .. (h + 1) k - 1``."""
        return weight.view(self.heads, -1, weight.shape[1])

    @th.no_grad()
    def _power_method(self, blocks: th.Tensor, iterations: int) -> None:
        for _ in range(iterations):
            u = F.normalize(th.bmm(blocks, self._v.unsqueeze(2)).squeeze(2), dim=1, eps=self.eps)
            self._u.copy_(u)
            v = F.normalize(th.bmm(blocks.transpose(1, 2), self._u.unsqueeze(2)).squeeze(2), dim=1, eps=self.eps)
            self._v.copy_(v)

    def forward(self, weight: th.Tensor) -> th.Tensor:
        blocks = self._blocks(weight)
        if self.training:
            self._power_method(blocks.detach(), 1)
        u, v = self._u.clone(), self._v.clone()
        sigma = (u * th.bmm(blocks, v.unsqueeze(2)).squeeze(2)).sum(dim=1)  # u_h^T W_h v_h per head
        return (blocks / sigma.view(-1, 1, 1)).reshape_as(weight)

    def right_inverse(self, value: th.Tensor) -> th.Tensor:
        # As torch's spectral norm: assigning a weight sets the raw weight.
        return value


def _normalise(layer: nn.Module, heads: int) -> None:
    """Parametrize ``layer.weight``: torch's spectral norm, or head by head for stacked heads."""
    if heads > 1:
        weight = layer.weight
        assert isinstance(weight, th.Tensor)
        parametrize.register_parametrization(layer, "weight", HeadwiseSpectralNorm(weight, heads))
    else:
        parametrizations.spectral_norm(layer)


def apply_spectral_norm(
    policy: ContinualPolicyMixin,
    paths: Sequence[str],
    targets: dict[str, str],
    heads: Mapping[str, int] | None = None,
) -> None:
    """Normalise the layers at ``paths`` and their twins in the target networks, in place.

    The parameters keep their identity (``weight`` becomes ``parametrizations.weight.original``), so
    optimizers built before stay valid. The power-iteration vectors are drawn on a forked torch
    generator: the option changes how the networks compute, not the random stream of the run.

    :param targets: online network attribute -> its target network attribute (e.g. ``q_net`` -> ``q_net_target``)
    :param heads: path -> number of task heads stacked in that layer's outputs, each normalised on its
        own (:meth:`ContinualPolicyMixin.task_heads`); other layers are normalised as one matrix
    """
    stacked = {policy.get_submodule(path): n for path, n in (heads or {}).items()}  # type: ignore[attr-defined]
    layers = [policy.get_submodule(path) for path in paths]  # type: ignore[attr-defined]
    with th.random.fork_rng(devices=[]):
        for layer in layers:
            _normalise(layer, stacked.get(layer, 1))
        for online_name, target_name in targets.items():
            online, target = getattr(policy, online_name), getattr(policy, target_name)
            for path, module in online.named_modules():
                if module in layers:
                    _normalise(target.get_submodule(path), stacked.get(module, 1))
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
