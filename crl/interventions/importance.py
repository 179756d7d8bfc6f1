"""How much each parameter matters to a network's outputs: the importance weights of EWC and MAS.

Both are means over samples of per-sample gradients, as Continual World computes them for its SAC
(Wolczyk et al. 2021, ``continualworld/methods/ewc.py`` and ``mas.py``):

- **EWC** (Kirkpatrick et al. 2017): the diagonal of the Fisher information of the network's output
  distribution, ``F = mean_n sum_k w_nk (d y_nk / d theta)^2``, where ``y_n`` are the outputs of
  sample ``n`` and ``w_n`` the Fisher's weights for them (:class:`Outputs`).
- **MAS** (Aljundi et al. 2018): the sensitivity of the outputs' squared norm,
  ``Omega = mean_n |d ||y_n||^2 / d theta|``.

Per-sample gradients come from :mod:`torch.func` (``vmap`` over the samples of ``jacrev`` or
``grad``), a chunk of samples at a time so that a chunk's Jacobian stays within :data:`CHUNK_FLOATS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch as th
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap
from torch.utils._pytree import tree_map

from crl.interventions.base import InterventionError
from crl.optim import algorithm_optimizers

if TYPE_CHECKING:
    from stable_baselines3.common.type_aliases import PyTorchObs

FISHER_EPS = 1e-6
"""Added to the variance in the Gaussian's Fisher weights (Continual World's ``1e-6``)."""
CHUNK_FLOATS = 2**25
"""The most floats a chunk's per-sample Jacobian may hold (128 MiB in float32)."""


@dataclass(frozen=True)
class Outputs:
    """A network's outputs for a batch, as EWC and MAS read them.

    :param fisher_outputs: ``(batch, K)`` outputs whose gradients the Fisher weighs
    :param fisher_weights: ``(batch, K)`` the Fisher's weight of each output (no gradient)
    :param squared_norm: ``(batch,)`` the outputs' squared norm that MAS differentiates
    :param fisher_floor: each sample's Fisher is clipped from below at this value (Continual World
        clips the actor's at ``1e-5``), or ``None``
    """

    fisher_outputs: th.Tensor
    fisher_weights: th.Tensor
    squared_norm: th.Tensor
    fisher_floor: float | None = None


OutputFunction = Callable[[nn.Module, Any, th.Tensor], Outputs]
"""``(policy, observations, actions) -> Outputs`` of one of the policy's networks."""


def gaussian_outputs(mean: th.Tensor, log_std: th.Tensor) -> Outputs:
    """A diagonal Gaussian's outputs: the Fisher of ``N(mean, std^2)`` is
    ``((d mean)^2 + 2 (d std)^2) / std^2`` per action dimension (Continual World's closed form, with
    ``std^2 + 1e-6``); MAS reads ``||mean||^2 + ||log_std||^2``."""
    std = log_std.exp()
    precision = 1.0 / (std.detach() ** 2 + FISHER_EPS)
    return Outputs(
        fisher_outputs=th.cat([mean, std], dim=1),
        fisher_weights=th.cat([precision, 2.0 * precision], dim=1),
        squared_norm=mean.square().sum(dim=1) + log_std.square().sum(dim=1),
        fisher_floor=1e-5,
    )


def categorical_outputs(log_probs: th.Tensor) -> Outputs:
    """A categorical distribution's outputs: the Fisher ``sum_a p_a (d log p_a)^2``; MAS reads
    ``||log p||^2``."""
    return Outputs(
        fisher_outputs=log_probs,
        fisher_weights=log_probs.detach().exp(),
        squared_norm=log_probs.square().sum(dim=1),
        fisher_floor=1e-5,
    )


def value_outputs(values: th.Tensor) -> Outputs:
    """Value outputs ``(batch, K)`` read as unit-variance Gaussians: the Fisher ``sum_k (d v_k)^2``
    (Continual World's critics, ``K = 1``); MAS reads ``||v||^2``."""
    return Outputs(
        fisher_outputs=values,
        fisher_weights=th.ones_like(values),
        squared_norm=values.square().sum(dim=1),
    )


class _OutputsOf(nn.Module):
    """The policy as a module whose ``forward`` is one output function, for :func:`functional_call`."""

    def __init__(self, policy: nn.Module, outputs: OutputFunction) -> None:
        super().__init__()
        self.policy = policy
        self.outputs = outputs

    def forward(self, observations: PyTorchObs, actions: th.Tensor) -> Outputs:
        return self.outputs(self.policy, observations, actions)


def fisher_sums(
    policy: nn.Module,
    outputs: OutputFunction,
    parameters: Mapping[str, th.Tensor],
    observations: PyTorchObs,
    actions: th.Tensor,
) -> dict[str, th.Tensor]:
    """``sum_n max(sum_k w_nk (d y_nk / d theta)^2, floor)`` over the batch, per named parameter.

    :param parameters: name (in ``policy.named_parameters()``) -> parameter, the ones to weigh
    """
    module = _OutputsOf(policy, outputs)

    def per_sample(params: dict[str, th.Tensor], observation: Any, action: th.Tensor) -> dict[str, th.Tensor]:
        def fisher_outputs(params: dict[str, th.Tensor]) -> tuple[th.Tensor, th.Tensor]:
            result = functional_call(module, params, (_one(observation), action.unsqueeze(0)))
            return result.fisher_outputs.squeeze(0), result.fisher_weights.squeeze(0)

        jacobian, weights = jacrev(fisher_outputs, has_aux=True)(params)
        fisher = {name: th.tensordot(weights, jac.square(), dims=1) for name, jac in jacobian.items()}
        if floor is not None:
            fisher = {name: value.clamp(min=floor) for name, value in fisher.items()}
        return fisher

    with th.no_grad():
        first = module(observation_rows(observations, slice(1)), actions[:1])
    width, floor = int(first.fisher_outputs.shape[1]), first.fisher_floor
    return _chunked_sums(per_sample, _prefixed(parameters), observations, actions, width)


def mas_sums(
    policy: nn.Module,
    outputs: OutputFunction,
    parameters: Mapping[str, th.Tensor],
    observations: PyTorchObs,
    actions: th.Tensor,
) -> dict[str, th.Tensor]:
    """``sum_n |d ||y_n||^2 / d theta|`` over the batch, per named parameter."""
    module = _OutputsOf(policy, outputs)

    def per_sample(params: dict[str, th.Tensor], observation: Any, action: th.Tensor) -> dict[str, th.Tensor]:
        def squared_norm(params: dict[str, th.Tensor]) -> th.Tensor:
            result = functional_call(module, params, (_one(observation), action.unsqueeze(0)))
            return result.squared_norm.sum()

        return {name: gradient.abs() for name, gradient in grad(squared_norm)(params).items()}

    return _chunked_sums(per_sample, _prefixed(parameters), observations, actions, width=1)


def _prefixed(parameters: Mapping[str, th.Tensor]) -> dict[str, th.Tensor]:
    # _OutputsOf holds the policy as `policy`; detached, so torch.func tracks them on its own.
    return {f"policy.{name}": parameter.detach() for name, parameter in parameters.items()}


def _one(observation: Any) -> Any:
    """A single observation (tensor or dict of tensors) as a batch of one."""
    return tree_map(lambda tensor: tensor.unsqueeze(0), observation)


def observation_rows(observations: Any, rows: slice) -> Any:
    """Some rows of a batch of observations (a tensor or a dict of tensors)."""
    return tree_map(lambda tensor: tensor[rows], observations)


def _chunked_sums(
    per_sample: Callable[..., dict[str, th.Tensor]],
    params: dict[str, th.Tensor],
    observations: PyTorchObs,
    actions: th.Tensor,
    width: int,
) -> dict[str, th.Tensor]:
    """The sum over the batch of ``per_sample``'s values, vmapped over chunks of samples."""
    n_samples = len(actions)
    n_floats = width * sum(parameter.numel() for parameter in params.values())
    chunk = max(1, CHUNK_FLOATS // max(n_floats, 1))
    batched = vmap(per_sample, in_dims=(None, 0, 0))
    sums = {name[len("policy.") :]: th.zeros_like(parameter) for name, parameter in params.items()}
    for start in range(0, n_samples, chunk):
        part = slice(start, start + chunk)
        # torch.func differentiates with respect to `params` inside; outside, no graph is kept to the
        # parameters left out of them (a multi-head policy's heads), which the outputs also read.
        with th.no_grad():
            values = batched(params, observation_rows(observations, part), actions[part])
        for name, value in values.items():
            sums[name[len("policy.") :]] += value.sum(dim=0)
    return sums


@dataclass(frozen=True)
class RegularisedNetworks:
    """The outputs through which an algorithm's networks are regularised.

    :param policy_outputs: the network that acts (SAC's actor, PPO's action distribution, DQN's
        Q-network, QR-DQN's quantile network), always regularised
    :param critic_outputs: the critics (SAC's, TQC's, CrossQ's, PPO's value function), regularised
        on request (Continual World's ``regularize_critic``), or ``None`` when there are none
    """

    policy_outputs: OutputFunction
    critic_outputs: OutputFunction | None


def _flat(values: th.Tensor | tuple[th.Tensor, ...]) -> th.Tensor:
    """A critic's values as ``(batch, K)``: SAC's tuple of Q-values, TQC's ``(batch, critics, quantiles)``."""
    if isinstance(values, tuple):
        return th.cat([value.flatten(1) for value in values], dim=1)
    return values.flatten(1)


def squashed_gaussian(actor: Any, observations: Any) -> tuple[th.Tensor, th.Tensor]:
    """A soft actor's ``tanh(mu)`` and ``log sigma`` (each sample through its own task head): Continual
    World's actor returns the tanh-squashed mean and the clamped log-std, and SB3's gives both."""
    mean, log_std, _ = actor.get_action_dist_params(observations)
    return th.tanh(mean), log_std


def _soft_actor(policy: Any, observations: PyTorchObs, actions: th.Tensor) -> Outputs:
    return gaussian_outputs(*squashed_gaussian(policy.actor, observations))


def _soft_critics(policy: Any, observations: PyTorchObs, actions: th.Tensor) -> Outputs:
    return value_outputs(_flat(policy.critic(observations, actions)))


def _q_values(policy: Any, observations: PyTorchObs, actions: th.Tensor) -> Outputs:
    q_values = policy.q_net(observations)
    return value_outputs(q_values.gather(1, actions.long().reshape(-1, 1)))


def _quantiles(policy: Any, observations: PyTorchObs, actions: th.Tensor) -> Outputs:
    quantiles = policy.quantile_net(observations)  # (batch, n_quantiles, n_actions)
    index = actions.long().reshape(-1, 1, 1).expand(-1, quantiles.shape[1], 1)
    return value_outputs(quantiles.gather(2, index).squeeze(2))


def _action_distribution(policy: Any, observations: PyTorchObs, actions: th.Tensor) -> Outputs:
    distribution = policy.get_distribution(observations).distribution
    if isinstance(distribution, th.distributions.Normal):
        return gaussian_outputs(distribution.mean, distribution.stddev.log())
    return categorical_outputs(distribution.logits)  # torch's Categorical keeps normalised log-probabilities


def _state_values(policy: Any, observations: PyTorchObs, actions: th.Tensor) -> Outputs:
    return value_outputs(policy.predict_values(observations))


_SOFT_ACTOR_CRITIC = RegularisedNetworks(_soft_actor, _soft_critics)
REGULARISED_NETWORKS: dict[str, RegularisedNetworks] = {
    "SAC": _SOFT_ACTOR_CRITIC,
    "TQC": _SOFT_ACTOR_CRITIC,
    "CrossQ": _SOFT_ACTOR_CRITIC,
    "DQN": RegularisedNetworks(_q_values, None),
    "QRDQN": RegularisedNetworks(_quantiles, None),
    "PPO": RegularisedNetworks(_action_distribution, _state_values),
}
"""Algorithm family -> the outputs through which its networks are regularised."""


def reached_parameters(
    policy: nn.Module,
    outputs: OutputFunction,
    candidates: Mapping[str, th.Tensor],
    observations: PyTorchObs,
    actions: th.Tensor,
) -> list[str]:
    """The names among ``candidates`` of the parameters that ``outputs`` depend on (autograd reaches them)."""
    result = outputs(policy, observations, actions)
    total = result.fisher_outputs.sum() + result.squared_norm.sum()
    names = list(candidates)
    gradients = th.autograd.grad(total, [candidates[name] for name in names], allow_unused=True)
    return [name for name, gradient in zip(names, gradients, strict=True) if gradient is not None]


Reached = list[tuple[OutputFunction, dict[str, th.Tensor]]]
"""Each regularised output function with the regularised parameters it depends on, by name."""


def regularised_outputs(algo: Any, critic: bool) -> list[OutputFunction]:
    """The output functions of the network that acts and, with ``critic``, of the critics."""
    networks = REGULARISED_NETWORKS[algo.algorithm_family]
    critics = [networks.critic_outputs] if critic and networks.critic_outputs is not None else []
    return [networks.policy_outputs, *critics]


def regularised_parameters(
    algo: Any, critic: bool, observations: PyTorchObs, actions: th.Tensor
) -> tuple[dict[str, th.Tensor], Reached]:
    """Name -> parameter of every parameter a continual-learning method protects, in the policy's order,
    and which outputs reach which: trained by an optimizer, reached by :func:`regularised_outputs` on
    the batch, not in a task head of a multi-head policy (each task's head is its own, as Continual
    World's "common variables" leave them out).

    :param algo: a crl algorithm
    :param critic: protect the critics too
    :param observations: a batch the outputs are evaluated on (which parameters they reach)
    :param actions: the batch's actions
    """
    policy = algo.policy
    trained = {
        id(p) for optimizer in algorithm_optimizers(algo) for group in optimizer.param_groups for p in group["params"]
    }
    heads = tuple(f"{path}." for path in getattr(policy, "task_heads", dict)())
    candidates: dict[str, th.Tensor] = {
        name: parameter
        for name, parameter in policy.named_parameters()
        if id(parameter) in trained and parameter.requires_grad and not name.startswith(heads)
    }
    reached = []
    for outputs in regularised_outputs(algo, critic):
        names = reached_parameters(policy, outputs, candidates, observations, actions)
        reached.append((outputs, {name: candidates[name] for name in names}))
    regularised = {name: parameter for name, parameter in candidates.items() if any(name in r for _, r in reached)}
    return regularised, reached


def check_protected_networks(name: str, algo: Any, critic: bool) -> None:
    """Refuse, naming the intervention ``name``, an algorithm whose networks this module does not know,
    and ``critic=True`` for one without critics (DQN, QR-DQN)."""
    family = getattr(algo, "algorithm_family", type(algo).__name__)
    if family not in REGULARISED_NETWORKS:
        raise InterventionError(
            f"intervention {name!r} does not apply to {family}; it supports {sorted(REGULARISED_NETWORKS)}"
        )
    if critic and REGULARISED_NETWORKS[family].critic_outputs is None:
        raise InterventionError(
            f"intervention {name!r}: critic=True, but {family} has no critic (its value network is the network "
            "that acts, which the method always covers); leave critic=False"
        )
