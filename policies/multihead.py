"""Multi-head policies: one output head per task, selected by the task id in the observation.

Continual World's SAC (Wolczyk et al. 2021) shares the hidden layers of the actor and of each critic
across tasks and gives every task its own output layer; the task is read from the one-hot code the
sequence gives the observation (:class:`crl.wrappers.TaskIdObservation`: appended to a flat one, beside
frames in a dict). Only the selected
head receives gradients, so learning a task leaves the other tasks' heads untouched; with
``spectral_norm`` on the output layers, each head is normalised on its own for the same reason
(:class:`~crl.policies.spectral_norm.HeadwiseSpectralNorm`).

The same heads are on TQC's quantile critics (one ``n_quantiles`` block per task) and on CrossQ's
critics (:class:`MultiHeadTQCPolicy`, :class:`MultiHeadCrossQPolicy`), on DQN's and QR-DQN's value
networks (:class:`MultiHeadDQNPolicy`, :class:`MultiHeadQRDQNPolicy`) and on PPO's action and value
layers (:class:`MultiHeadActorCriticPolicy`); each algorithm takes its multi-head policy by the name
``"MultiHeadPolicy"``.
"""

from __future__ import annotations

from functools import partial
from typing import Any, ClassVar, Literal, overload

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib.crossq import policies as crossq
from sb3_contrib.qrdqn import policies as qrdqn
from sb3_contrib.tqc import policies as tqc
from stable_baselines3.common.distributions import DiagGaussianDistribution, Distribution
from stable_baselines3.common.policies import BasePolicy, ContinuousCritic
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, CombinedExtractor
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from stable_baselines3.dqn import policies as sb3_dqn
from stable_baselines3.sac import policies as sb3
from torch import nn

from crl.policies.actor_critic import ActorCriticPolicy
from crl.policies.crossq import CrossQPolicy
from crl.policies.direct_forward import Step, chained_layers
from crl.policies.dqn import DQNPolicy
from crl.policies.layers import ACTIVATION_TYPES, ArchitectureOptions
from crl.policies.qrdqn import QRDQNPolicy
from crl.policies.sac import SACPolicy
from crl.policies.tqc import TQCPolicy
from crl.wrappers.sequence import TASK_ID_KEY

FIRST_LAYERS = ("layer_norm_tanh",)


@overload
def task_index(observations: PyTorchObs, n_heads: int) -> th.Tensor: ...
@overload
def task_index(observations: np.ndarray | dict[str, np.ndarray], n_heads: int) -> np.ndarray: ...
def task_index(observations: Any, n_heads: int) -> Any:
    """The task id of each observation: the position of the 1 in its last ``n_heads`` entries (of its
    ``task_id`` key, for dict observations); tensors for tensors, arrays for the arrays the envs return."""
    code = observations[TASK_ID_KEY] if isinstance(observations, dict) else observations
    return code[:, -n_heads:].argmax(1)  # torch's dim and numpy's axis


def with_task_heads(observations: np.ndarray | dict[str, np.ndarray], heads: np.ndarray, n_heads: int) -> Any:
    """A copy of a batch of observations whose one-hot task ids name ``heads`` (one per row) instead.

    A multi-head policy then acts with those tasks' heads: the rest of each observation is unchanged.
    """
    code = observations[TASK_ID_KEY] if isinstance(observations, dict) else observations
    rewritten = code.copy()
    rewritten[:, -n_heads:] = np.eye(n_heads, dtype=rewritten.dtype)[heads]
    if isinstance(observations, dict):
        return {**observations, TASK_ID_KEY: rewritten}
    return rewritten


def select_head(outputs: th.Tensor, task: th.Tensor, n_heads: int) -> th.Tensor:
    """Pick each sample's head: ``outputs`` is ``(batch, ..., n_heads * k)``, the result ``(batch, ..., k)``."""
    per_head = outputs.unflatten(-1, (n_heads, -1))
    middle = (slice(None),) * (per_head.dim() - 3)  # e.g. TQC's critics: each gets the sample's head
    # Indexing puts the batch axis first both when the two index tensors are adjacent and when apart.
    return per_head[(th.arange(outputs.shape[0], device=outputs.device), *middle, task)]


class MultiHeadActorMixin:
    """An actor (SAC's, TQC's or CrossQ's) whose mean and log-std layers have one head per task.

    :param n_heads: number of heads (= length of the one-hot task id at the end of the observation)
    """

    mu: Any
    log_std: Any  # the actors': a layer (the policy refuses gSDE, see TaskHeadsPolicyMixin)

    def __init__(self, *args: Any, n_heads: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.n_heads = n_heads
        assert isinstance(self.mu, nn.Linear) and isinstance(self.log_std, nn.Linear)  # without use_sde
        action_dim = self.mu.out_features
        self.mu = nn.Linear(self.mu.in_features, n_heads * action_dim)
        self.log_std = nn.Linear(self.log_std.in_features, n_heads * action_dim)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), "n_heads": self.n_heads}  # type: ignore[misc]

    def get_action_dist_params(self, obs: PyTorchObs) -> tuple[th.Tensor, th.Tensor, dict[str, th.Tensor]]:
        # The actors clamp log_std element-wise, so clamping all heads and then selecting one is the same.
        mean_actions, log_std, kwargs = super().get_action_dist_params(obs)  # type: ignore[misc]
        task = task_index(obs, self.n_heads)
        return select_head(mean_actions, task, self.n_heads), select_head(log_std, task, self.n_heads), kwargs


class MultiHeadActor(MultiHeadActorMixin, sb3.Actor):
    """SB3's SAC actor whose mean and log-std layers have one head per task (:class:`MultiHeadActorMixin`)."""


class MultiHeadTQCActor(MultiHeadActorMixin, tqc.Actor):
    """sb3-contrib's TQC actor whose mean and log-std layers have one head per task."""


class MultiHeadCrossQActor(MultiHeadActorMixin, crossq.Actor):
    """sb3-contrib's CrossQ actor whose mean and log-std layers have one head per task."""


class MultiHeadCriticMixin:
    """A critic (SAC's, TQC's or CrossQ's) whose Q-networks output one head per task: their last layer's
    ``k`` outputs (1 Q-value, or TQC's ``n_quantiles``) become ``n_heads * k``.

    :param n_heads: number of heads (= length of the one-hot task id at the end of the observation)
    """

    def __init__(self, *args: Any, n_heads: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.n_heads = n_heads
        for q_net in self.q_networks:  # type: ignore[attr-defined]
            _widen_output(q_net, n_heads)

    def forward(self, obs: Any, actions: th.Tensor) -> Any:
        outputs = super().forward(obs, actions)  # type: ignore[misc]
        task = task_index(obs, self.n_heads)
        if isinstance(outputs, th.Tensor):  # TQC's quantiles, (batch, n_critics, n_heads * n_quantiles)
            return select_head(outputs, task, self.n_heads)
        return tuple(select_head(values, task, self.n_heads) for values in outputs)


class MultiHeadContinuousCritic(MultiHeadCriticMixin, ContinuousCritic):
    """SB3's SAC critic whose Q-networks output one value per task head."""

    def q1_forward(self, obs: th.Tensor, actions: th.Tensor) -> th.Tensor:
        return select_head(super().q1_forward(obs, actions), task_index(obs, self.n_heads), self.n_heads)


class MultiHeadTQCCritic(MultiHeadCriticMixin, tqc.Critic):
    """sb3-contrib's TQC critic whose quantile networks output ``n_quantiles`` quantiles per task head."""


class MultiHeadCrossQCritic(MultiHeadCriticMixin, crossq.CrossQCritic):
    """sb3-contrib's CrossQ critic whose Q-networks output one value per task head."""


class MultiHeadValueNetworkMixin:
    """A value network (DQN's Q-network, QR-DQN's quantile network) whose output layer has one head per task.

    :param n_heads: number of heads (= length of the one-hot task id at the end of the observation)
    """

    output_stack: ClassVar[str]
    """The attribute holding the network's layers after the features extractor."""

    def __init__(self, *args: Any, n_heads: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.n_heads = n_heads
        _widen_output(getattr(self, self.output_stack), n_heads)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), "n_heads": self.n_heads}  # type: ignore[misc]

    def head_outputs(self, obs: PyTorchObs) -> th.Tensor:
        """The output layer's values of each sample's task head."""
        stack = getattr(self, self.output_stack)
        outputs = stack(self.extract_features(obs, self.features_extractor))  # type: ignore[attr-defined]
        return select_head(outputs, task_index(obs, self.n_heads), self.n_heads)


class MultiHeadQNetwork(MultiHeadValueNetworkMixin, sb3_dqn.QNetwork):
    """SB3's DQN Q-network whose output layer has one head of ``n_actions`` Q-values per task."""

    output_stack = "q_net"

    def forward(self, obs: PyTorchObs) -> th.Tensor:
        return self.head_outputs(obs)


class MultiHeadQuantileNetwork(MultiHeadValueNetworkMixin, qrdqn.QuantileNetwork):
    """sb3-contrib's QR-DQN quantile network whose output layer has one head of ``n_quantiles x n_actions``
    quantiles per task."""

    output_stack = "quantile_net"

    def forward(self, obs: PyTorchObs) -> th.Tensor:
        # sb3-contrib's layout within the head: the quantiles of every action
        return self.head_outputs(obs).view(-1, self.n_quantiles, int(self.action_space.n))  # type: ignore[attr-defined]


def _multi_head_layers(network: nn.Module) -> list[Step] | None:
    """The layers that compute :meth:`MultiHeadValueNetworkMixin.head_outputs` before the head is chosen,
    on the preprocessed observation; ``None`` for a network with another forward pass (a subclass)."""
    if type(network) not in (MultiHeadQNetwork, MultiHeadQuantileNetwork):
        return None
    assert isinstance(network, MultiHeadValueNetworkMixin) and isinstance(network, BasePolicy)
    stack = getattr(network, network.output_stack)
    return chained_layers(network.features_extractor) + chained_layers(stack)


def _widen_output(stack: nn.Sequential, n_heads: int) -> None:
    """Give the last Linear layer of ``stack`` ``n_heads`` times its outputs (a fresh layer), in place."""
    output = stack[-1]
    assert isinstance(output, nn.Linear)
    stack[-1] = nn.Linear(output.in_features, n_heads * output.out_features)


class TaskHeadsPolicyMixin:
    """A policy whose output layers have one head per task: the options ``n_heads`` and ``first_layer``.

    Needs the one-hot task id of a :class:`~crl.wrappers.TaskSequence` built with ``task_id_in_obs=True``:
    at the end of a flat ``Box`` observation, or in the ``task_id`` key of a dict observation (frames or
    grids beside it, read through SB3's ``CombinedExtractor`` as ``MultiInputPolicy`` reads them).

    :param n_heads: number of task heads (the sequence's ``n_task_ids``)
    :param first_layer: ``"layer_norm_tanh"``: the first hidden layer of every network is
        Linear -> LayerNorm -> tanh, the others keep ``activation_fn`` (Continual World's networks);
        ``None``: all layers use ``activation_fn``
    """

    n_heads: int
    first_layer: str | None
    two_hot: Any
    device: th.device

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        *args: Any,
        n_heads: int | None = None,
        first_layer: Literal["layer_norm_tanh"] | None = None,
        **kwargs: Any,
    ) -> None:
        if n_heads is None:
            raise ValueError(
                "MultiHeadPolicy needs policy_kwargs={'n_heads': N}: N is the length of the one-hot task id at the "
                "end of each observation (a TaskSequence built with task_id_in_obs=True: its n_task_ids)"
            )
        if kwargs.get("use_sde"):  # gSDE's noise matrix and PPO's gSDE log_std are not per task
            raise ValueError("MultiHeadPolicy does not support use_sde=True; use use_sde=False")
        if isinstance(n_heads, bool) or not isinstance(n_heads, int) or n_heads < 1:
            raise ValueError(f"policy option n_heads must be a positive int, got {n_heads!r}")
        _check_task_id_fits(observation_space, n_heads)
        if isinstance(observation_space, spaces.Dict):
            kwargs.setdefault("features_extractor_class", CombinedExtractor)  # as SB3's MultiInputPolicy
        if first_layer not in (None, *FIRST_LAYERS):
            raise ValueError(
                f"policy option first_layer={first_layer!r} is not allowed; use one of {[None, *FIRST_LAYERS]}"
            )
        if first_layer is not None:
            _check_first_layer_fits(first_layer, kwargs.get("net_arch"))
        # Set before SB3's constructor, which builds the networks through make_actor / make_critic.
        object.__setattr__(self, "n_heads", n_heads)
        object.__setattr__(self, "first_layer", first_layer)
        super().__init__(observation_space, action_space, *args, **kwargs)  # type: ignore[call-arg]

    def _validate_architecture(self, architecture: ArchitectureOptions, kwargs: dict[str, Any]) -> None:
        super()._validate_architecture(architecture, kwargs)  # type: ignore[misc]
        if self.two_hot is not None:
            raise ValueError("policy option two_hot is not supported by MultiHeadPolicy; use two_hot=None")
        if self.first_layer is not None and not architecture.is_default:
            raise ValueError(
                f"policy option first_layer={self.first_layer!r} sets the first layer's normalisation and "
                "activation itself; use it without layer_norm and without a concatenating activation "
                f"(activation='crelu' or 'fourier'), got layer_norm={architecture.layer_norm!r} and "
                f"activation={architecture.activation!r}"
            )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        parameters = super()._get_constructor_parameters()  # type: ignore[misc]
        return {**parameters, "n_heads": self.n_heads, "first_layer": self.first_layer}


class MultiHeadPolicyMixin(TaskHeadsPolicyMixin):
    """A soft actor-critic policy with one actor head and one critic head per task (:class:`TaskHeadsPolicyMixin`)."""

    multi_head_actor: ClassVar[type[BasePolicy]]
    multi_head_critic: ClassVar[type[nn.Module]]
    actor_kwargs: dict[str, Any]
    critic_kwargs: dict[str, Any]
    critic: Any

    def task_heads(self) -> dict[str, int]:
        heads = ["actor.mu", "actor.log_std"]
        for index, q_net in enumerate(self.critic.q_networks):
            heads.append(f"critic.qf{index}.{len(q_net) - 1}")
        return {path: self.n_heads for path in heads}

    def critic_outputs(self, obs: th.Tensor, actions: th.Tensor, target: bool = False) -> tuple[th.Tensor, ...] | None:
        """Each Q-network's output of each sample's task head, through the critic's layers called directly
        as for the single-head critic (:attr:`critic_class` is the multi-head one); ``None`` when not exact.

        Through the module calls, SAC with two heads ran Pendulum at 0.94 of the single-head policy's
        steps/s (``bench/multi_head_cost.py``).
        """
        outputs = super().critic_outputs(obs, actions, target)  # type: ignore[misc]
        if outputs is None:
            return None
        task = task_index(obs, self.n_heads)
        return tuple(select_head(values, task, self.n_heads) for values in outputs)

    def make_actor(self, features_extractor: BaseFeaturesExtractor | None = None) -> Any:
        actor_kwargs = self._update_features_extractor(self.actor_kwargs, features_extractor)  # type: ignore[attr-defined]
        actor = self.multi_head_actor(**actor_kwargs, n_heads=self.n_heads).to(self.device)
        actor = self._rewrite_actor(actor)  # type: ignore[attr-defined]
        if self.first_layer is not None:
            _layer_norm_tanh_first(actor.latent_pi)
        return actor

    def make_critic(self, features_extractor: BaseFeaturesExtractor | None = None) -> Any:
        critic_kwargs = self._update_features_extractor(self.critic_kwargs, features_extractor)  # type: ignore[attr-defined]
        critic = self.multi_head_critic(**critic_kwargs, n_heads=self.n_heads).to(self.device)
        critic = self._rewrite_critic(critic)  # type: ignore[attr-defined]
        if self.first_layer is not None:
            for q_net in critic.q_networks:
                _layer_norm_tanh_first(q_net)
        return critic


class MultiHeadSACPolicy(MultiHeadPolicyMixin, SACPolicy):
    """crl's SAC ``MlpPolicy`` with one actor head and one critic head per task (:class:`MultiHeadPolicyMixin`)."""

    multi_head_actor = MultiHeadActor
    multi_head_critic = MultiHeadContinuousCritic
    critic_class = MultiHeadContinuousCritic


class MultiHeadTQCPolicy(MultiHeadPolicyMixin, TQCPolicy):
    """crl's TQC ``MlpPolicy`` with one actor head per task, and per task one block of ``n_quantiles``
    outputs in each quantile critic (:class:`MultiHeadPolicyMixin`)."""

    multi_head_actor = MultiHeadTQCActor
    multi_head_critic = MultiHeadTQCCritic
    critic_class = MultiHeadTQCCritic


class MultiHeadCrossQPolicy(MultiHeadPolicyMixin, CrossQPolicy):
    """crl's CrossQ ``MlpPolicy`` with one actor head and one critic head per task (:class:`MultiHeadPolicyMixin`).

    ``first_layer="layer_norm_tanh"`` needs ``batch_norm=False``, as CrossQ's ``layer_norm`` does.
    """

    multi_head_actor = MultiHeadCrossQActor
    multi_head_critic = MultiHeadCrossQCritic
    critic_class = MultiHeadCrossQCritic

    def _validate_architecture(self, architecture: ArchitectureOptions, kwargs: dict[str, Any]) -> None:
        super()._validate_architecture(architecture, kwargs)
        if self.first_layer is not None and kwargs.get("batch_norm", True):
            raise ValueError(
                f"policy option first_layer={self.first_layer!r} is not supported by CrossQ with batch_norm=True: "
                "its BatchRenorm layers already normalise the input of every Linear layer; pass batch_norm=False"
            )


class MultiHeadValuePolicyMixin(TaskHeadsPolicyMixin):
    """A value-based policy (DQN's, QR-DQN's) whose network has one output head per task
    (:class:`TaskHeadsPolicyMixin`)."""

    value_network: ClassVar[type[MultiHeadValueNetworkMixin]]
    """The multi-head network class; the policy holds it under its ``output_stack`` name, as SB3 names them
    (``policy.q_net.q_net``, ``policy.quantile_net.quantile_net``)."""
    net_args: dict[str, Any]

    def task_heads(self) -> dict[str, int]:
        name = self.value_network.output_stack
        stack = getattr(getattr(self, name), name)
        return {f"{name}.{name}.{len(stack) - 1}": self.n_heads}

    def _direct_head_outputs(self, obs: PyTorchObs, network: nn.Module, kept_in: str) -> th.Tensor | None:
        """:meth:`MultiHeadValueNetworkMixin.head_outputs` of ``network`` through its layers' ``forward``, kept in
        the policy's attribute ``kept_in`` (:meth:`~crl.policies.base.ContinualPolicyMixin.direct_pass`);
        ``None`` when that would not be exact.

        The policies' acting pass and both passes of every gradient step take it, as the single-head
        policies' do: through the module calls, DQN with two heads ran CartPole at 0.74 of the
        single-head policy's steps/s (``bench/multi_head_cost.py``).
        """
        outputs = self.direct_pass(obs, network, kept_in, _multi_head_layers)  # type: ignore[attr-defined]
        if outputs is None:
            return None
        return select_head(outputs, task_index(obs, self.n_heads), self.n_heads)

    def _make_value_network(self) -> Any:
        net_args = self._update_features_extractor(self.net_args, features_extractor=None)  # type: ignore[attr-defined]
        network = self.value_network(**net_args, n_heads=self.n_heads).to(self.device)  # type: ignore[call-arg,attr-defined]
        stack = getattr(network, self.value_network.output_stack)
        self.architecture.rewrite(stack)  # type: ignore[attr-defined]
        if self.first_layer is not None:
            _layer_norm_tanh_first(stack)
        return network


class MultiHeadDQNPolicy(MultiHeadValuePolicyMixin, DQNPolicy):
    """crl's DQN ``MlpPolicy`` whose Q-network has one head of Q-values per task (:class:`TaskHeadsPolicyMixin`)."""

    value_network = MultiHeadQNetwork

    def make_q_net(self) -> sb3_dqn.QNetwork:
        return self._make_value_network()  # type: ignore[no-any-return]

    def _direct_q_values(self, obs: PyTorchObs, target: bool) -> th.Tensor | None:
        if target:
            return self._direct_head_outputs(obs, self.q_net_target, "_direct_target_layers")
        return self._direct_head_outputs(obs, self.q_net, "_direct_q_layers")


class MultiHeadQRDQNPolicy(MultiHeadValuePolicyMixin, QRDQNPolicy):
    """crl's QR-DQN ``MlpPolicy`` whose quantile network has one head of quantiles per task
    (:class:`TaskHeadsPolicyMixin`)."""

    value_network = MultiHeadQuantileNetwork

    def make_quantile_net(self) -> qrdqn.QuantileNetwork:
        return self._make_value_network()  # type: ignore[no-any-return]

    def _direct_quantiles(self, obs: PyTorchObs, target: bool) -> th.Tensor | None:
        network = self.quantile_net_target if target else self.quantile_net
        kept_in = "_direct_target_layers" if target else "_direct_quantile_layers"
        outputs = self._direct_head_outputs(obs, network, kept_in)
        if outputs is None:
            return None
        return outputs.view(-1, network.n_quantiles, int(self.action_space.n))  # type: ignore[attr-defined]


class MultiHeadActorCriticPolicy(TaskHeadsPolicyMixin, ActorCriticPolicy):
    """crl's PPO ``MlpPolicy`` with one action head and one value head per task (:class:`TaskHeadsPolicyMixin`).

    ``action_net`` and ``value_net`` output ``n_heads`` blocks, one per task, and a Gaussian policy's
    state-independent ``log_std`` has one block per task too, so that learning a task leaves every
    other task's action distribution as it was. Each sample's block is chosen by its task id before
    the distribution is built. The heads are initialised as SB3 initialises its single ones (orthogonal
    with gains 0.01 and 1 under ``ortho_init``, ``log_std_init``). ``train/std`` averages every head's.
    ``use_sde`` is refused (gSDE's noise matrix is not per task).
    """

    action_net: nn.Module
    value_net: nn.Module
    log_std: nn.Parameter
    action_dist: Distribution

    def task_heads(self) -> dict[str, int]:
        return {"action_net": self.n_heads, "value_net": self.n_heads}

    def _build_mlp_extractor(self) -> None:
        super()._build_mlp_extractor()
        if self.first_layer is not None:
            _layer_norm_tanh_first(self.mlp_extractor.policy_net)
            _layer_norm_tanh_first(self.mlp_extractor.value_net)

    def _build(self, lr_schedule: Schedule) -> None:
        super()._build(lr_schedule)
        action_net, value_net = self.action_net, self.value_net
        assert isinstance(action_net, nn.Linear) and isinstance(value_net, nn.Linear)
        self.action_net = nn.Linear(action_net.in_features, self.n_heads * action_net.out_features)
        self.value_net = nn.Linear(value_net.in_features, self.n_heads)
        if self.ortho_init:
            self.action_net.apply(partial(self.init_weights, gain=0.01))
            self.value_net.apply(partial(self.init_weights, gain=1))
        if isinstance(self.action_dist, DiagGaussianDistribution):
            self.log_std = nn.Parameter(self.log_std.detach().repeat(self.n_heads))
        # SB3 built the optimizer with the single heads' parameters.
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def forward(self, obs: PyTorchObs, deterministic: bool = False) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        distribution, values = self._task_outputs(obs)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        actions = actions.reshape((-1, *self.action_space.shape))  # type: ignore[misc]
        return actions, values, log_prob

    def evaluate_actions(self, obs: PyTorchObs, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        distribution, values = self._task_outputs(obs)
        return values, distribution.log_prob(actions), distribution.entropy()

    def get_distribution(self, obs: PyTorchObs) -> Distribution:
        features = BasePolicy.extract_features(self, obs, self.pi_features_extractor)
        return self._task_distribution(self.mlp_extractor.forward_actor(features), task_index(obs, self.n_heads))

    def predict_values(self, obs: PyTorchObs) -> th.Tensor:
        features = BasePolicy.extract_features(self, obs, self.vf_features_extractor)
        return self._task_values(self.mlp_extractor.forward_critic(features), task_index(obs, self.n_heads))

    def run_networks(self, observations: th.Tensor, actions: th.Tensor | None) -> None:
        self._task_outputs(observations)

    def _task_outputs(self, obs: PyTorchObs) -> tuple[Distribution, th.Tensor]:
        """The action distribution and the value of each sample's task head, the shared extractor run once."""
        latent_pi, latent_vf = self.latents(obs)
        task = task_index(obs, self.n_heads)
        return self._task_distribution(latent_pi, task), self._task_values(latent_vf, task)

    def _task_distribution(self, latent_pi: th.Tensor, task: th.Tensor) -> Distribution:
        """The action distribution of each sample's task head (SB3's ``_get_action_dist_from_latent``)."""
        mean_actions = select_head(self.action_net(latent_pi), task, self.n_heads)
        if isinstance(self.action_dist, DiagGaussianDistribution):
            # Rows of the (n_heads, actions) view: 8 us less per pass and backward than expanding it per sample
            log_std = self.log_std.view(self.n_heads, -1)[task]
            return self.action_dist.proba_distribution(mean_actions, log_std)
        return self.action_dist.proba_distribution(action_logits=mean_actions)  # type: ignore[call-arg]

    def _task_values(self, latent_vf: th.Tensor, task: th.Tensor) -> th.Tensor:
        """The value of each sample's task head, ``(batch, 1)``."""
        return select_head(self.value_net(latent_vf), task, self.n_heads)


def _check_task_id_fits(observation_space: spaces.Space, n_heads: int) -> None:
    """Refuse observations whose task id ``n_heads`` cannot be read from: a flat ``Box`` ending with it, or
    a ``Dict`` with its ``task_id`` key (:func:`crl.wrappers.sequence.with_task_id`)."""
    if isinstance(observation_space, spaces.Dict):
        code = observation_space.spaces.get(TASK_ID_KEY)
        if not isinstance(code, spaces.Box) or code.shape != (n_heads,):
            raise ValueError(
                f"policy option n_heads={n_heads}: MultiHeadPolicy reads the task id from the key {TASK_ID_KEY!r} "
                f"of dict observations, a Box of shape ({n_heads},); got {observation_space}"
            )
        return
    if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 1:
        raise ValueError(
            f"MultiHeadPolicy needs a flat Box observation space ending with the task id, or a Dict with a "
            f"{TASK_ID_KEY!r} key; got {observation_space}"
        )
    if observation_space.shape[0] <= n_heads:
        raise ValueError(
            f"policy option n_heads={n_heads} leaves no observation before the task id "
            f"(observation size {observation_space.shape[0]})"
        )


def _check_first_layer_fits(first_layer: str, net_arch: object) -> None:
    """Reject a ``net_arch`` with no hidden layer in some network: there is no first layer to change.

    :param net_arch: ``None`` (the algorithm's default), a list, or SAC's ``{"pi": ..., "qf": ...}`` (PPO's
        ``{"pi": ..., "vf": ...}``)
    """
    if net_arch is None:
        return
    networks = ("pi", "qf", "vf")
    archs = [arch for key, arch in net_arch.items() if key in networks] if isinstance(net_arch, dict) else [net_arch]
    if any(len(arch) == 0 for arch in archs):  # type: ignore[arg-type]
        raise ValueError(
            f"policy option first_layer={first_layer!r} needs at least one hidden layer in every network, "
            f"got net_arch={net_arch!r}; use a non-empty net_arch or first_layer=None"
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
