"""``plasticity_probe``: how well a network can still fit new targets (SPEC.md §1).

Lyle et al. 2023 define plasticity as the loss a network reaches when trained on new targets; PFO
(Moalla et al. 2024) make it operational: from the current weights, train a copy to regress the
outputs of a freshly initialised network of the same architecture on a fixed probe set, for a fixed
budget, and report the final loss (lower = more plastic). Outputs that are distributions (actors) are
compared by KL, values and Q-values by mean squared error.

The fresh network is built with the policy's own constructor arguments, so it is initialised exactly
as SB3 initialises that policy, from a fixed seed, so the probe task is the same at every measurement.
That seed is derived from the metrics' seed through a stream of its own (:func:`fresh_network_seed`):
the metrics' seed defaults to the algorithm's, from which SB3 initialises the agent itself, and a
target equal to the agent's initial network would measure a return to the start (0 before training)
instead of fitting new targets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.type_aliases import PyTorchObs
from torch.nn import functional as F

from crl.metrics.suite import network_parameters
from crl.optim import optimizer_of, policy_optimizers
from crl.policies.base import ContinualPolicyMixin

ACTION_VALUE_FAMILIES = frozenset({"SAC", "TQC", "CrossQ"})
"""Algorithm families whose critics take actions as well as observations (the actor's, by default)."""

# (policy, observations, actions) -> the network's output on them
OutputFn = Callable[[ContinualPolicyMixin, PyTorchObs, th.Tensor | None], object]


@dataclass(frozen=True)
class NetworkOutput:
    """How to read one network's output and how far apart two outputs are.

    :param output: the network's output for a batch
    :param divergence: the probe's loss between the fresh network's output (first) and the copy's (second)
    """

    output: OutputFn
    divergence: Callable[[object, object], th.Tensor]


def kl_divergence(target: object, learner: object) -> th.Tensor:
    """Mean over the batch of ``KL(target || learner)`` between two SB3 action distributions.

    Independent action dimensions are summed (diagonal Gaussians, multi-discrete, multi-binary). For
    SAC's squashed Gaussian this is the KL of the Gaussians before tanh, which the bijection preserves.
    """
    assert isinstance(target, Distribution) and isinstance(learner, Distribution)
    targets, learners = target.distribution, learner.distribution
    if not isinstance(targets, list):
        targets, learners = [targets], [learners]  # type: ignore[list-item]
    kls = [th.distributions.kl_divergence(p, q) for p, q in zip(targets, learners, strict=True)]  # type: ignore[arg-type]
    return th.stack([(kl.sum(dim=-1) if kl.dim() > 1 else kl).mean() for kl in kls]).sum()


def mse(target: object, learner: object) -> th.Tensor:
    assert isinstance(target, th.Tensor) and isinstance(learner, th.Tensor)
    return F.mse_loss(learner, target)


def _sac_actor(policy: ContinualPolicyMixin, observations: PyTorchObs, actions: th.Tensor | None) -> object:
    actor = policy.actor  # type: ignore[attr-defined]
    mean_actions, log_std, kwargs = actor.get_action_dist_params(observations)
    return actor.action_dist.proba_distribution(mean_actions, log_std, **kwargs)


def _sac_critic(index: int) -> OutputFn:
    def output(policy: ContinualPolicyMixin, observations: PyTorchObs, actions: th.Tensor | None) -> object:
        assert actions is not None, "SAC's critics need actions"
        return policy.critic(observations, actions)[index]  # type: ignore[attr-defined]

    return output


def _tqc_critic(index: int) -> OutputFn:
    def output(policy: ContinualPolicyMixin, observations: PyTorchObs, actions: th.Tensor | None) -> object:
        assert actions is not None, "TQC's critics need actions"
        # (batch, n_critics, n_quantiles): network `qf<index>`'s quantiles
        return policy.critic(observations, actions)[:, index, :]  # type: ignore[attr-defined]

    return output


def network_output(algorithm_family: str, network: str) -> NetworkOutput:
    """The output and divergence of ``network`` of a DQN, PPO, SAC, QR-DQN, TQC or CrossQ policy (by family).

    Quantile networks (QR-DQN's, TQC's critics) are compared by the mean squared error of their
    quantiles, as scalar values are.
    """
    outputs: dict[str, dict[str, NetworkOutput]] = {
        "DQN": {"q_net": NetworkOutput(lambda policy, obs, _: policy.q_net(obs), mse)},  # type: ignore[attr-defined]
        "QRDQN": {"quantile_net": NetworkOutput(lambda policy, obs, _: policy.quantile_net(obs), mse)},  # type: ignore[attr-defined]
        "PPO": {
            "actor": NetworkOutput(lambda policy, obs, _: policy.get_distribution(obs), kl_divergence),  # type: ignore[attr-defined]
            "critic": NetworkOutput(lambda policy, obs, _: policy.predict_values(obs), mse),  # type: ignore[attr-defined]
        },
        "SAC": {"actor": NetworkOutput(_sac_actor, kl_divergence)},
        "TQC": {"actor": NetworkOutput(_sac_actor, kl_divergence)},
        "CrossQ": {"actor": NetworkOutput(_sac_actor, kl_divergence)},
    }
    critics = {"SAC": _sac_critic, "TQC": _tqc_critic, "CrossQ": _sac_critic}
    if algorithm_family in ACTION_VALUE_FAMILIES and network.startswith("qf"):
        return NetworkOutput(critics[algorithm_family](int(network[2:])), mse)
    try:
        return outputs[algorithm_family][network]
    except KeyError:
        raise ValueError(f"no plasticity probe for network {network!r} of a {algorithm_family} policy") from None


def _rows(observations: PyTorchObs, indices: th.Tensor | slice) -> PyTorchObs:
    """The probe set's samples at ``indices`` (each key's, for dict observations)."""
    if isinstance(observations, dict):
        return {key: value[indices] for key, value in observations.items()}
    return observations[indices]


def first_array(observations: Any) -> Any:
    """The array of a batch of observations (a tensor or a NumPy array), or of its first key for dict observations."""
    return next(iter(observations.values())) if isinstance(observations, Mapping) else observations


def _optimizer_of(policy: ContinualPolicyMixin, parameters: list[th.nn.Parameter]) -> th.optim.Optimizer:
    """The policy's optimizer that updates the first of ``parameters``."""
    optimizer = optimizer_of(policy_optimizers(policy), parameters[0])  # type: ignore[arg-type]
    if optimizer is None:
        raise ValueError("no optimizer of the policy updates this network")
    return optimizer


FRESH_NETWORK_STREAM = 0x70726F6265
"""Names the fresh network's stream among the streams derived from the metrics' seed ("probe" in ASCII)."""


def fresh_network_seed(seed: int) -> int:
    """The torch seed of the probe's fresh network: ``seed`` and :data:`FRESH_NETWORK_STREAM` hashed
    by numpy's ``SeedSequence``, so it is never ``seed`` itself, from which SB3 initialises the agent.

    :param seed: the metrics' seed (any int; a negative one is taken modulo 2**64)
    """
    sequence = np.random.SeedSequence([seed % 2**64, FRESH_NETWORK_STREAM])
    return int(sequence.generate_state(1)[0])


def fresh_copy(policy: ContinualPolicyMixin, seed: int) -> ContinualPolicyMixin:
    """A freshly initialised policy of the same class and constructor arguments, in eval mode.

    Initialised as SB3 initialises that policy, from :func:`fresh_network_seed` of ``seed`` (not from
    ``seed``: that would rebuild the agent's own initial network when ``seed`` is the algorithm's);
    torch's global stream is left as it was.

    :param policy: the policy whose class and constructor arguments are used
    :param seed: the metrics' seed
    """
    with th.random.fork_rng(devices=[]):
        th.manual_seed(fresh_network_seed(seed))
        fresh = type(policy)(**policy._get_constructor_parameters())  # type: ignore[attr-defined]
    fresh = fresh.to(policy.device)  # type: ignore[attr-defined]
    fresh.set_training_mode(False)
    return fresh  # type: ignore[no-any-return]


def weight_copy(policy: ContinualPolicyMixin) -> ContinualPolicyMixin:
    """A copy of ``policy`` with its current weights and modules (:meth:`ContinualPolicyMixin.network_copy`:
    an injected head included), in eval mode."""
    copied = policy.network_copy()
    copied.set_training_mode(False)
    return copied  # type: ignore[no-any-return]


def plasticity_probe(
    policy: ContinualPolicyMixin,
    network: str,
    output: NetworkOutput,
    observations: PyTorchObs,
    actions: th.Tensor | None = None,
    epochs: int = 1,
    batch_size: int = 64,
    seed: int = 0,
    fresh: ContinualPolicyMixin | None = None,
) -> float:
    """Final loss of fitting a fresh network's outputs, starting from ``policy``'s current weights.

    A copy of ``policy`` trains the parameters of ``network`` (heads included) with a new optimizer of
    the class and hyperparameters (learning rate included) of the one that trains it, on minibatches
    of the probe set for ``epochs`` epochs; the reported loss is the divergence on the whole probe set
    afterwards. ``policy`` itself is not touched, and torch's global random stream is left as it was.

    :param policy: the policy whose plasticity is measured
    :param network: a name of ``policy.network_prefixes()``
    :param output: how to read the network's output and compare two (see :func:`network_output`)
    :param observations: the fixed probe set (a dict of tensors for dict observations)
    :param actions: actions for networks that take them (SAC's critics)
    :param epochs: the training budget, in passes over the probe set
    :param batch_size: minibatch size
    :param seed: seed of the minibatch order, and the seed the fresh network's is derived from
        (:func:`fresh_network_seed`)
    :param fresh: the freshly initialised policy (``fresh_copy(policy, seed)`` if not given; pass one
        to share it between the networks of a policy)
    """
    parameters = network_parameters(policy)[network]
    reference = _optimizer_of(policy, parameters)
    target = fresh if fresh is not None else fresh_copy(policy, seed)
    learner = weight_copy(policy)
    learner_parameters = network_parameters(learner)[network]
    hyperparameters = {key: value for key, value in reference.param_groups[0].items() if key != "params"}
    optimizer = type(reference)([{"params": learner_parameters, **hyperparameters}])  # type: ignore[call-arg]
    generator = th.Generator().manual_seed(seed)
    first = first_array(observations)
    n_samples, device = first.shape[0], first.device

    def loss_on(indices: th.Tensor | slice) -> th.Tensor:
        batch_observations = _rows(observations, indices)
        batch_actions = None if actions is None else actions[indices]
        with th.no_grad():
            wanted = output.output(target, batch_observations, batch_actions)
        return output.divergence(wanted, output.output(learner, batch_observations, batch_actions))

    for _ in range(epochs):
        order = th.randperm(n_samples, generator=generator).to(device)
        for start in range(0, n_samples, batch_size):
            loss = loss_on(order[start : start + batch_size])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with th.no_grad():
        return float(loss_on(slice(None)))
