"""Multi-head policies: one output head per task, selected by the task id in the observation.

Continual World's SAC (Wolczyk et al. 2021) shares the hidden layers of the actor and of each critic
across tasks and gives every task its own output layer; the task is read from the one-hot code the
sequence appends to the observation (:class:`crl.wrappers.TaskIdObservation`). Only the selected
head receives gradients, so learning a task leaves the other tasks' heads untouched; with
``spectral_norm`` on the output layers, each head is normalised on its own for the same reason
(:class:`~crl.policies.spectral_norm.HeadwiseSpectralNorm`).
"""

from __future__ import annotations

from typing import Any, Literal

import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ContinuousCritic
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.sac import policies as sb3
from torch import nn

from crl.policies.layers import ACTIVATION_TYPES, ArchitectureOptions
from crl.policies.sac import SACPolicy

FIRST_LAYERS = ("layer_norm_tanh",)


def task_index(observations: th.Tensor, n_heads: int) -> th.Tensor:
    """The task id of each observation: the position of the 1 in its last ``n_heads`` entries."""
    return observations[:, -n_heads:].argmax(dim=1)


def select_head(outputs: th.Tensor, task: th.Tensor, n_heads: int) -> th.Tensor:
    """Pick each sample's head: ``outputs`` is ``(batch, n_heads * k)``, the result ``(batch, k)``."""
    per_head = outputs.view(outputs.shape[0], n_heads, -1)
    return per_head[th.arange(outputs.shape[0], device=outputs.device), task]


class MultiHeadActor(sb3.Actor):
    """SB3's SAC actor whose mean and log-std layers have one head per task.

    :param n_heads: number of heads (= length of the one-hot task id at the end of the observation)
    """

    def __init__(self, *args: Any, n_heads: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.use_sde:
            raise ValueError("MultiHeadSACPolicy does not support use_sde=True; use use_sde=False")
        self.n_heads = n_heads
        assert isinstance(self.mu, nn.Linear) and isinstance(self.log_std, nn.Linear)  # without use_sde
        action_dim = self.mu.out_features
        self.mu = nn.Linear(self.mu.in_features, n_heads * action_dim)
        self.log_std = nn.Linear(self.log_std.in_features, n_heads * action_dim)  # type: ignore[assignment]

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), "n_heads": self.n_heads}

    def get_action_dist_params(self, obs: th.Tensor) -> tuple[th.Tensor, th.Tensor, dict[str, th.Tensor]]:  # type: ignore[override]
        # SB3 clamps log_std element-wise, so clamping all heads and then selecting one is the same.
        mean_actions, log_std, kwargs = super().get_action_dist_params(obs)
        task = task_index(obs, self.n_heads)
        return select_head(mean_actions, task, self.n_heads), select_head(log_std, task, self.n_heads), kwargs


class MultiHeadContinuousCritic(ContinuousCritic):
    """SB3's SAC critic whose Q-networks output one value per task head.

    :param n_heads: number of heads (= length of the one-hot task id at the end of the observation)
    """

    def __init__(self, *args: Any, n_heads: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.n_heads = n_heads
        for q_net in self.q_networks:
            assert isinstance(q_net, nn.Sequential) and isinstance(q_net[-1], nn.Linear)
            q_net[-1] = nn.Linear(q_net[-1].in_features, n_heads)

    def forward(self, obs: th.Tensor, actions: th.Tensor) -> tuple[th.Tensor, ...]:
        task = task_index(obs, self.n_heads)
        return tuple(select_head(q_values, task, self.n_heads) for q_values in super().forward(obs, actions))

    def q1_forward(self, obs: th.Tensor, actions: th.Tensor) -> th.Tensor:
        return select_head(super().q1_forward(obs, actions), task_index(obs, self.n_heads), self.n_heads)


class MultiHeadSACPolicy(SACPolicy):
    """crl's SAC ``MlpPolicy`` with one actor head and one critic head per task.

    Needs a flat ``Box`` observation ending with the one-hot task id (a :class:`~crl.wrappers.TaskSequence`
    built with ``task_id_in_obs=True``).

    :param n_heads: number of task heads (the sequence's ``n_task_ids``)
    :param first_layer: ``"layer_norm_tanh"``: the first hidden layer of every network is
        Linear -> LayerNorm -> tanh, the others keep ``activation_fn`` (Continual World's networks);
        ``None``: all layers use ``activation_fn``
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        *args: Any,
        n_heads: int,
        first_layer: Literal["layer_norm_tanh"] | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(n_heads, bool) or not isinstance(n_heads, int) or n_heads < 1:
            raise ValueError(f"policy option n_heads must be a positive int, got {n_heads!r}")
        if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 1:
            raise ValueError(f"MultiHeadSACPolicy needs a flat Box observation space, got {observation_space}")
        if observation_space.shape[0] <= n_heads:
            raise ValueError(
                f"policy option n_heads={n_heads} leaves no observation before the task id "
                f"(observation size {observation_space.shape[0]})"
            )
        if first_layer not in (None, *FIRST_LAYERS):
            raise ValueError(
                f"policy option first_layer={first_layer!r} is not allowed; use one of {[None, *FIRST_LAYERS]}"
            )
        if first_layer is not None:
            _check_first_layer_fits(first_layer, kwargs.get("net_arch"))
        # Set before SB3's constructor, which builds the networks through make_actor / make_critic.
        object.__setattr__(self, "n_heads", n_heads)
        object.__setattr__(self, "first_layer", first_layer)
        super().__init__(observation_space, action_space, *args, **kwargs)

    def _validate_architecture(self, architecture: ArchitectureOptions, kwargs: dict[str, Any]) -> None:
        super()._validate_architecture(architecture, kwargs)
        if self.two_hot is not None:
            raise ValueError("policy option two_hot is not supported by MultiHeadSACPolicy; use two_hot=None")
        if self.first_layer is not None and not architecture.is_default:
            raise ValueError(
                f"policy option first_layer={self.first_layer!r} sets the first layer's normalisation and "
                "activation itself; use it without layer_norm and activation='crelu'"
            )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), "n_heads": self.n_heads, "first_layer": self.first_layer}

    def task_heads(self) -> dict[str, int]:
        heads = ["actor.mu", "actor.log_std"]
        for index, q_net in enumerate(self.critic.q_networks):
            heads.append(f"critic.qf{index}.{len(q_net) - 1}")  # type: ignore[arg-type]
        return {path: self.n_heads for path in heads}

    def make_actor(self, features_extractor: BaseFeaturesExtractor | None = None) -> sb3.Actor:
        actor_kwargs = self._update_features_extractor(self.actor_kwargs, features_extractor)
        actor = self._rewrite_actor(MultiHeadActor(**actor_kwargs, n_heads=self.n_heads).to(self.device))
        if self.first_layer is not None:
            _layer_norm_tanh_first(actor.latent_pi)
        return actor

    def make_critic(self, features_extractor: BaseFeaturesExtractor | None = None) -> ContinuousCritic:
        critic_kwargs = self._update_features_extractor(self.critic_kwargs, features_extractor)
        critic = self._rewrite_critic(MultiHeadContinuousCritic(**critic_kwargs, n_heads=self.n_heads).to(self.device))
        if self.first_layer is not None:
            for q_net in critic.q_networks:
                _layer_norm_tanh_first(q_net)  # type: ignore[arg-type]
        return critic


def _check_first_layer_fits(first_layer: str, net_arch: object) -> None:
    """Reject a ``net_arch`` with no hidden layer in the actor or the critics: there is no first layer to change.

    :param net_arch: SAC's ``net_arch``: ``None`` (SB3's 256 x 256), a list, or ``{"pi": ..., "qf": ...}``
    """
    if net_arch is None:
        return
    archs = (
        [arch for key, arch in net_arch.items() if key in ("pi", "qf")] if isinstance(net_arch, dict) else [net_arch]
    )
    if any(len(arch) == 0 for arch in archs):  # type: ignore[arg-type]
        raise ValueError(
            f"policy option first_layer={first_layer!r} needs at least one hidden layer in the actor and the "
            f"critics, got net_arch={net_arch!r}; use a non-empty net_arch or first_layer=None"
        )


def _layer_norm_tanh_first(stack: nn.Sequential) -> None:
    """Turn the first ``Linear -> activation`` of ``stack`` into ``Linear -> LayerNorm -> tanh``, in place."""
    index = next((i for i, module in enumerate(stack) if isinstance(module, ACTIVATION_TYPES)), None)
    if index is None:
        raise ValueError(f"policy option first_layer='layer_norm_tanh' needs a hidden layer, got the network {stack}")
    linear = stack[index - 1]
    assert isinstance(linear, nn.Linear)
    stack[index] = nn.Tanh()
    # In place (not a new Sequential): SAC's critic keeps references to its Q-network stacks.
    stack.insert(index, nn.LayerNorm(linear.out_features).to(linear.weight.device))
