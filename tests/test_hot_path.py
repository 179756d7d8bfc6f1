"""The training hot path's shortcuts: they skip work, never change what SB3 would compute."""

from __future__ import annotations

import copy
import gc
import weakref
from collections.abc import Callable
from functools import partial
from math import inf, nan
from types import SimpleNamespace
from unittest.mock import patch

import gymnasium as gym
import numpy as np
import pytest
import stable_baselines3 as sb3
import torch as th
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import DummyVecEnv as SB3DummyVecEnv
from test_sb3_equivalence import assert_same_training

import crl
from crl.hooks import GradientStep
from crl.interventions import Intervention
from crl.optim import clip_grad_norm_, use_multi_tensor_updates
from crl.policies.actor_critic import ActorCriticPolicy
from crl.policies.base import normalized_images
from crl.policies.direct_forward import step_layer
from crl.policies.module_tree import listed_parameters
from crl.wrappers.vec_env import DummyVecEnv

DQN_ARGS = dict(learning_starts=200, train_freq=10, target_update_interval=100, batch_size=32, seed=0, device="cpu")


def _count_mode_walks(model, module) -> list[bool]:
    """Record the mode of every ``module.train()`` call during ``model.learn``."""
    calls: list[bool] = []
    walk = module.train

    def counted(mode: bool = True):
        calls.append(mode)
        return walk(mode)

    module.train = counted
    model.learn(1_000)
    return calls


def test_mode_switch_walks_the_network_only_when_the_mode_changes() -> None:
    model = crl.DQN("MlpPolicy", "CartPole-v1", **DQN_ARGS)
    walks = _count_mode_walks(model, model.policy.q_net)
    train_calls = (1_000 - 200) // 10
    # one switch into training mode per train() call and one back at the next predict()
    assert len(walks) <= 2 * train_calls + 2
    assert walks[-2:] == [True, False] or walks[-1] is True

    reference = sb3.DQN("MlpPolicy", "CartPole-v1", **DQN_ARGS)
    assert len(_count_mode_walks(reference, reference.policy.q_net)) > 5 * len(walks)  # SB3 walks on every predict


@pytest.mark.parametrize("algorithm", ["DQN", "PPO", "SAC"])
def test_direct_train_and_eval_are_seen_by_the_next_mode_switch(algorithm: str) -> None:
    env_id = "Pendulum-v1" if algorithm == "SAC" else "CartPole-v1"
    policy = getattr(crl, algorithm)("MlpPolicy", env_id, device="cpu").policy
    policy.set_training_mode(False)
    policy.train()  # every submodule in training mode, behind set_training_mode's back
    policy.set_training_mode(False)
    assert not any(module.training for module in policy.modules() if not _is_target(policy, module))
    policy.eval()
    policy.set_training_mode(True)
    trained = [m for m in policy.modules() if not _is_target(policy, m)]
    assert all(module.training for module in trained)


def _is_target(policy, module) -> bool:
    """Target networks stay in eval mode in SB3 (set_training_mode does not reach them)."""
    targets = [getattr(policy, name) for name in policy.target_networks().values()]
    return any(module is target or any(module is m for m in target.modules()) for target in targets)


def test_device_is_looked_up_again_after_the_policy_moves() -> None:
    policy = crl.DQN("MlpPolicy", "CartPole-v1", device="cpu").policy
    assert policy.device == th.device("cpu")
    policy.to("meta")
    assert policy.device == th.device("meta")


OBSERVATIONS = {
    "vector": (spaces.Box(-1, 1, (4,), np.float32), [(4,), (3, 4)]),
    "matrix": (spaces.Box(-1, 1, (2, 3), np.float64), [(2, 3), (5, 2, 3)]),
    "image": (spaces.Box(0, 255, (4, 36, 36), np.uint8), [(4, 36, 36), (2, 4, 36, 36), (36, 36, 4), (2, 36, 36, 4)]),
}


@pytest.mark.parametrize("kind", list(OBSERVATIONS))
def test_obs_to_tensor_gives_sb3s_tensor(kind: str) -> None:
    space, shapes = OBSERVATIONS[kind]
    policy = crl.policies.DQNPolicy(space, spaces.Discrete(2), lambda _: 1e-3)
    rng = np.random.default_rng(0)
    for shape in shapes:
        observation = rng.uniform(0, 255, shape).astype(space.dtype)
        ours, vectorized = policy.obs_to_tensor(observation)
        theirs, sb3_vectorized = BasePolicy.obs_to_tensor(policy, observation)
        assert vectorized == sb3_vectorized
        assert ours.dtype == theirs.dtype and th.equal(ours, theirs)
        # SB3 copies non-image observations: a network writing into its input leaves the caller's array alone
        assert np.shares_memory(ours.numpy(), observation) == np.shares_memory(theirs.numpy(), observation)
    bad = np.zeros((*space.shape[:-1], space.shape[-1] + 1), space.dtype)
    with pytest.raises(ValueError, match="Unexpected observation shape") as ours_error:
        policy.obs_to_tensor(bad)
    with pytest.raises(ValueError) as sb3_error:
        BasePolicy.obs_to_tensor(policy, bad)
    assert str(ours_error.value) == str(sb3_error.value)


class _CriticGradients(Intervention):
    """Records whether the actor loss's backward wrote into the critic's gradients."""

    name = "test_critic_gradients"

    def model_post_init(self, context) -> None:
        self._after_critic: list[th.Tensor] = []
        self._changed_by_actor: list[bool] = []

    def after_backward(self, algo, step: GradientStep) -> None:
        grads = [p.grad.clone() for p in algo.critic.parameters() if p.grad is not None]
        if step.loss_name == "critic":
            self._after_critic = grads
        else:
            same = len(grads) == len(self._after_critic) and all(map(th.equal, grads, self._after_critic))
            self._changed_by_actor.append(not same)


def test_sac_actor_step_leaves_the_critic_gradients_alone() -> None:
    """Same training as SB3, but the actor's backward no longer computes the critic's own gradients."""
    kwargs = dict(learning_starts=100, batch_size=32, policy_kwargs=dict(net_arch=[32, 32]), seed=1, device="cpu")
    reference = sb3.SAC("MlpPolicy", "Pendulum-v1", **kwargs)
    reference.learn(300)
    probe = _CriticGradients()
    model = crl.SAC("MlpPolicy", "Pendulum-v1", interventions=[probe], **kwargs)
    model.learn(300)
    assert_same_training(reference, model)
    assert probe._changed_by_actor and not any(probe._changed_by_actor)
    assert all(p.requires_grad for p in model.critic.parameters())


@pytest.mark.parametrize("algorithm", ["DQN", "PPO"])
def test_four_envs_in_crls_vec_env_train_like_sb3(algorithm: str) -> None:
    """SB3's algorithm on SB3's DummyVecEnv and crl's on crl's, four CartPoles each: bitwise the same."""
    kwargs = dict(DQN_ARGS) if algorithm == "DQN" else dict(n_steps=64, batch_size=64, n_epochs=2, seed=0, device="cpu")

    def train(library, vec_env_cls):
        env = make_vec_env("CartPole-v1", n_envs=4, seed=0, vec_env_cls=vec_env_cls)
        model = getattr(library, algorithm)("MlpPolicy", env, **kwargs)
        model.learn(1_024)
        return model

    assert_same_training(train(sb3, SB3DummyVecEnv), train(crl, DummyVecEnv))


class _LocalsReader(BaseCallback):
    """A user callback that reads the collection loop's variables every step."""

    def __init__(self) -> None:
        super().__init__()
        self.saw_infos: list[bool] = []

    def _on_step(self) -> bool:
        self.saw_infos.append("infos" in self.locals)
        return True


def test_hooks_relay_costs_one_callback_and_user_callbacks_keep_their_locals() -> None:
    model = crl.DQN("MlpPolicy", "CartPole-v1", metrics={"every": 100, "probe_batch_size": 64}, **DQN_ARGS)
    relay = model._init_callback(None)
    assert isinstance(relay, BaseCallback) and not isinstance(relay, CallbackList)

    reader = _LocalsReader()
    model.learn(300, callback=reader)
    assert len(reader.saw_infos) == 300 and all(reader.saw_infos)
    assert model.metrics_monitor is not None and model.metrics_monitor.measurements >= 1


def test_mode_switch_reaches_submodules_added_since_the_last_switch() -> None:
    policy = crl.DQN("MlpPolicy", "CartPole-v1", device="cpu").policy
    policy.set_training_mode(False)
    policy.q_net.q_net.append(th.nn.Dropout(0.5))  # e.g. an intervention changing the network; born in training mode
    policy.set_training_mode(False)
    assert not any(module.training for module in policy.q_net.modules())


ENV_OF = {"DQN": "CartPole-v1", "PPO": "CartPole-v1", "SAC": "Pendulum-v1"}


def _sb3_switch(policy):
    """SB3's ``set_training_mode`` of ``policy``'s class (the first SB3 class in its MRO)."""
    sb3_class = next(cls for cls in type(policy).__mro__ if cls.__module__.startswith("stable_baselines3"))
    return sb3_class.set_training_mode


@pytest.mark.parametrize("algorithm", ["DQN", "PPO", "SAC"])
def test_flattened_mode_switch_sets_the_flags_sb3s_walk_sets(algorithm: str) -> None:
    policy = getattr(crl, algorithm)("MlpPolicy", ENV_OF[algorithm], device="cpu").policy
    policy.set_training_mode(True)  # lists the modules SB3's walk reaches
    assert policy._switched_modules is not None
    rng = np.random.default_rng(0)
    for mode in (False, True, False):
        # arbitrary flags beforehand: modules SB3's walk does not reach (the targets) must keep theirs
        for module in policy.modules():
            module.training = bool(rng.integers(2))
        reference = copy.deepcopy(policy)
        _sb3_switch(reference)(reference, mode)
        policy._training_mode = not mode  # the flags were changed behind the switch's back
        policy.set_training_mode(mode)
        assert [m.training for m in policy.modules()] == [m.training for m in reference.modules()]
    targets = [m for m in policy.modules() if _is_target(policy, m)]
    assert (len(targets) > 0) == (algorithm != "PPO")
    assert not any(any(m is target for m in policy._switched_modules) for target in targets)


class _PolicyWithItsOwnTrain(ActorCriticPolicy):
    """A user's policy whose ``train()`` does more than set flags (SB3's PPO switch calls it)."""

    calls = 0

    def train(self, mode: bool = True):
        _PolicyWithItsOwnTrain.calls += 1
        return super().train(mode)


def test_a_policy_with_its_own_train_gets_every_switch_through_sb3s_walk() -> None:
    policy = crl.PPO(_PolicyWithItsOwnTrain, "CartPole-v1", device="cpu").policy
    before = _PolicyWithItsOwnTrain.calls
    for mode in (True, False, True):
        policy.set_training_mode(mode)
    assert policy._switched_modules is None
    assert _PolicyWithItsOwnTrain.calls - before == 3


class _Flagged(th.nn.Identity):
    """A module whose ``__setattr__`` sees every attribute set, the mode flag included."""

    def __setattr__(self, name: str, value) -> None:
        if name == "training":
            self.__dict__.setdefault("seen", []).append(value)
        super().__setattr__(name, value)


def test_a_module_with_its_own_setattr_sees_every_switch() -> None:
    policy = crl.DQN("MlpPolicy", "CartPole-v1", device="cpu").policy
    flagged = _Flagged()
    policy.q_net.q_net.append(flagged)
    for mode in (True, False, True):
        policy.set_training_mode(mode)
    assert policy._switched_modules is None
    assert flagged.seen[-3:] == [True, False, True]


def test_a_network_with_its_own_set_training_mode_gets_every_switch() -> None:
    policy = crl.DQN("MlpPolicy", "CartPole-v1", device="cpu").policy
    calls: list[bool] = []

    class CountedQNetwork(type(policy.q_net)):  # a user's Q-network whose switch does more than set flags
        def set_training_mode(self, mode: bool) -> None:
            calls.append(mode)
            super().set_training_mode(mode)

    policy.q_net.__class__ = CountedQNetwork
    policy._registrations_at_switch = -1  # the tree changed without a registration
    for mode in (True, False, True):
        policy.set_training_mode(mode)
    assert policy._switched_modules is None
    assert calls[-3:] == [True, False, True]


class _CountedTrain(th.nn.Identity):
    """A module whose ``train()`` does more than set a flag (here: count the calls)."""

    calls = 0

    def train(self, mode: bool = True):
        _CountedTrain.calls += 1
        return super().train(mode)


def test_a_module_with_its_own_train_gets_every_switch_through_sb3s_walk() -> None:
    policy = crl.DQN("MlpPolicy", "CartPole-v1", device="cpu").policy
    policy.q_net.q_net.append(_CountedTrain())
    before = _CountedTrain.calls
    for mode in (True, False, True):
        policy.set_training_mode(mode)
    assert policy._switched_modules is None
    assert _CountedTrain.calls - before == 3


def _dqn_acting_policy(**policy_kwargs) -> BasePolicy:
    policy = crl.DQN("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[120, 84], **policy_kwargs), seed=0).policy
    policy.set_training_mode(False)
    return policy


def _greedy(policy: BasePolicy, observations: th.Tensor) -> th.Tensor:
    with th.no_grad():
        return policy._predict(observations)


def _sb3_greedy(policy: BasePolicy, observations: th.Tensor) -> th.Tensor:
    with th.no_grad():
        return sb3.dqn.policies.DQNPolicy._predict(policy, observations)


@pytest.mark.parametrize("layer_norm", [None, "pre"])
def test_greedy_action_calls_the_layers_directly_and_equals_sb3s(layer_norm: str | None) -> None:
    policy = _dqn_acting_policy(layer_norm=layer_norm)
    generator = th.Generator().manual_seed(0)
    with th.no_grad():
        for parameter in policy.q_net.parameters():  # random weights, so that both actions are greedy somewhere
            parameter.copy_(th.randn(parameter.shape, generator=generator))
    observations = th.randn(256, 4, generator=generator)
    with patch.object(th.nn.Module, "_call_impl", side_effect=AssertionError("a module was called")):
        actions = _greedy(policy, observations)
    assert th.equal(actions, _sb3_greedy(policy, observations))
    assert len(actions.unique()) == 2  # both actions occur: the comparison can tell them apart
    layers = [type(step_layer(step)) for step in policy._direct_q_layers(policy.q_net)]
    hidden = [th.nn.Linear, th.nn.LayerNorm, th.nn.ReLU] if layer_norm else [th.nn.Linear, th.nn.ReLU]
    assert layers == [th.nn.Flatten, *hidden, *hidden, th.nn.Linear]


def test_a_hook_sends_acting_through_the_module_call_until_it_is_removed() -> None:
    policy = _dqn_acting_policy()
    observations = th.randn(8, 4)
    _greedy(policy, observations)
    seen: list[th.Tensor] = []
    handle = policy.q_net.q_net[0].register_forward_hook(lambda module, inputs, output: seen.append(output))
    _greedy(policy, observations)
    assert len(seen) == 1 and policy._direct_q_layers(policy.q_net) is None
    handle.remove()
    _greedy(policy, observations)
    assert len(seen) == 1 and policy._direct_q_layers(policy.q_net) is not None


def test_a_feature_recorder_records_the_direct_pass_as_its_hooks_record_module_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The direct path stays in use while a recorder is open and hands it the tensors its hooks get
    from module calls; after it, the layers found before are kept, without a walk of the modules."""
    policy = _dqn_acting_policy()
    observations = th.randn(8, 4)
    _greedy(policy, observations)  # builds the policy's direct layers
    direct = policy._direct_q_layers
    layers = direct(policy.q_net)
    assert layers is not None
    with policy.record_features(["q_net"]) as through_layers:
        assert direct(policy.q_net) is layers
        _greedy(policy, observations)
    with policy.record_features(["q_net"]) as through_modules, th.no_grad():
        policy.q_net(observations)  # SB3's forward: module calls, so the hooks record
    direct_features, module_features = through_layers.features()["q_net"], through_modules.features()["q_net"]
    assert list(direct_features) == list(module_features) == ["layer0", "layer1"]
    for name, recorded in direct_features.items():
        assert recorded.post.shape == (8, 120 if name == "layer0" else 84)
        assert th.equal(recorded.pre, module_features[name].pre) and th.equal(recorded.post, module_features[name].post)
    monkeypatch.setattr(type(direct), "_find_layers", lambda *args: pytest.fail("the layers were found again"))
    assert direct(policy.q_net) is layers
    _greedy(policy, observations)


def test_a_global_hook_sees_the_acting_forward_pass() -> None:
    policy = _dqn_acting_policy()
    _greedy(policy, th.randn(8, 4))
    seen: list[type] = []
    handle = th.nn.modules.module.register_module_forward_hook(lambda module, inputs, output: seen.append(type(module)))
    try:
        _greedy(policy, th.randn(8, 4))
    finally:
        handle.remove()
    assert th.nn.Linear in seen


def test_a_replaced_layer_is_used_by_the_next_greedy_action() -> None:
    policy = _dqn_acting_policy()
    observations = th.randn(64, 4, generator=th.Generator().manual_seed(1))
    _greedy(policy, observations)
    replacement = th.nn.Linear(84, 2)
    policy.q_net.q_net[-1] = replacement
    assert step_layer(policy._direct_q_layers(policy.q_net)[-1]) is replacement
    assert th.equal(_greedy(policy, observations), _sb3_greedy(policy, observations))


def test_a_q_network_with_its_own_forward_is_called_as_a_module() -> None:
    policy = _dqn_acting_policy(two_hot={"low": -10.0, "high": 10.0, "bins": 11})
    observations = th.randn(64, 4, generator=th.Generator().manual_seed(2))
    assert th.equal(_greedy(policy, observations), _sb3_greedy(policy, observations))
    assert policy._direct_q_layers(policy.q_net) is None


def test_dqn_trains_through_the_layers_directly_and_equals_the_module_calls() -> None:
    model = crl.DQN("MlpPolicy", "CartPole-v1", **DQN_ARGS)
    model.learn(400)
    batch = model.replay_buffer.sample(32)
    with patch.object(th.nn.Module, "_call_impl", side_effect=AssertionError("a module was called")):
        target = model._td_target(batch)
        loss = model._td_loss(batch, target)
    with th.no_grad():
        next_q_values = model.q_net_target(batch.next_observations).max(dim=1).values.reshape(-1, 1)
    assert th.equal(target, batch.rewards + (1 - batch.dones) * model.gamma * next_q_values)
    q_taken = th.gather(model.q_net(batch.observations), dim=1, index=batch.actions.long())
    assert th.equal(loss, th.nn.functional.smooth_l1_loss(q_taken, target))


class _LinearExtractor(BaseFeaturesExtractor):
    """A features extractor with parameters, to tell a shared extractor's gradients from a critic's own."""

    def __init__(self, observation_space: spaces.Box) -> None:
        super().__init__(observation_space, features_dim=8)
        self.linear = th.nn.Linear(int(np.prod(observation_space.shape)), 8)

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.linear(observations)


def _sac_batch(**policy_kwargs):
    model = crl.SAC("MlpPolicy", "Pendulum-v1", learning_starts=0, policy_kwargs=policy_kwargs, seed=0, device="cpu")
    model.learn(100)
    return model.policy, model.replay_buffer.sample(32)


@pytest.mark.parametrize("target", [False, True])
def test_sac_critics_run_their_layers_directly_with_sb3s_values(target: bool) -> None:
    policy, batch = _sac_batch(net_arch=[32, 32])
    with patch.object(th.nn.Module, "_call_impl", side_effect=AssertionError("a module was called")):
        direct = policy.q_values(batch.observations, batch.actions, target=target)
    critic = policy.critic_target if target else policy.critic
    expected = critic(batch.observations, batch.actions)
    assert len(direct) == 2 and all(th.equal(a, b) for a, b in zip(direct, expected, strict=True))


@pytest.mark.parametrize("share_features_extractor", [False, True])
def test_sac_critic_direct_pass_has_sb3s_gradients(share_features_extractor: bool) -> None:
    """Also for a features extractor with parameters: SB3 trains a shared one from the actor's loss only."""
    policy, batch = _sac_batch(
        net_arch=[32, 32], features_extractor_class=_LinearExtractor, share_features_extractor=share_features_extractor
    )
    assert_critic_gradients_are_the_module_calls(policy, policy.q_values, batch, share_features_extractor)


def assert_critic_gradients_are_the_module_calls(
    policy: BasePolicy, direct_pass: Callable, batch, share_features_extractor: bool
) -> None:
    """``direct_pass(observations, actions)`` gives the gradients of ``policy.critic``'s module call, and
    the critic's features extractor (a :class:`_LinearExtractor`) gets none from either when it is shared."""

    def gradients(outputs: th.Tensor | tuple[th.Tensor, ...]) -> list[th.Tensor | None]:
        policy.zero_grad()
        sum(output.square().sum() for output in (outputs if isinstance(outputs, tuple) else (outputs,))).backward()
        return [None if p.grad is None else p.grad.clone() for p in policy.parameters()]

    direct = gradients(direct_pass(batch.observations, batch.actions))
    extractor_gradient = policy.critic.features_extractor.linear.weight.grad
    module = gradients(policy.critic(batch.observations, batch.actions))
    assert sum(g is not None for g in direct) >= 6
    for ours, theirs in zip(direct, module, strict=True):
        assert (ours is None and theirs is None) or th.equal(ours, theirs)
    assert (extractor_gradient is None) == share_features_extractor


def test_a_hook_on_the_target_critic_sees_the_td_target() -> None:
    model = crl.SAC("MlpPolicy", "Pendulum-v1", learning_starts=0, policy_kwargs=dict(net_arch=[32, 32]), device="cpu")
    model.learn(100)
    batch = model.replay_buffer.sample(32)
    seen: list[th.Tensor] = []
    handle = model.critic_target.qf1[0].register_forward_hook(lambda module, inputs, output: seen.append(output))
    model._td_target(batch, th.tensor(0.1))
    handle.remove()
    model._td_target(batch, th.tensor(0.1))
    assert len(seen) == 1 and seen[0].shape == (32, 32)
    assert model.policy._direct_target_layers(model.critic_target) is not None  # the TD target went direct again


def test_a_hook_on_the_target_network_sees_the_td_target() -> None:
    model = crl.DQN("MlpPolicy", "CartPole-v1", **DQN_ARGS)
    model.learn(400)
    batch = model.replay_buffer.sample(32)
    seen: list[th.Tensor] = []
    handle = model.q_net_target.q_net[0].register_forward_hook(lambda module, inputs, output: seen.append(output))
    model._td_target(batch)
    handle.remove()
    model._td_target(batch)
    assert len(seen) == 1 and seen[0].shape == (32, 64)
    assert model.policy._direct_target_layers(model.q_net_target) is not None  # the TD target went direct again


@pytest.mark.parametrize(
    "policy_kwargs",
    [{}, {"layer_norm": "pre"}, {"two_hot": {"low": -10.0, "high": 10.0, "bins": 11}}],
    ids=["sb3", "layer_norm", "two_hot"],
)
def test_actor_critic_forward_calls_the_layers_directly_and_equals_sb3s(policy_kwargs: dict) -> None:
    policy = crl.PPO("MlpPolicy", "CartPole-v1", policy_kwargs=policy_kwargs, seed=0).policy
    observations = th.randn(16, 4, generator=th.Generator().manual_seed(0))
    called: list[th.nn.Module] = []
    call = th.nn.Module._call_impl

    def recorded_call(module: th.nn.Module, *args, **kwargs):
        called.append(module)
        return call(module, *args, **kwargs)

    with th.no_grad(), patch.object(th.nn.Module, "_call_impl", recorded_call):
        policy.forward(observations)
    assert called == [policy.action_net]  # called by SB3's _get_action_dist_from_latent
    actions, _, _ = _assert_forward_equals_sb3s(policy, observations)
    assert len(actions.unique()) == 2  # sampled actions differ between states: the RNG draws line up


def _assert_forward_equals_sb3s(policy: BasePolicy, observations: th.Tensor) -> tuple[th.Tensor, ...]:
    """crl's forward pass and SB3's, each from torch seed 1, give the same actions, values and log-probs (returned)."""
    th.manual_seed(1)
    with th.no_grad():
        direct = policy.forward(observations)
    th.manual_seed(1)
    with th.no_grad():
        actions, values, log_prob = sb3.common.policies.ActorCriticPolicy.forward(policy, observations)
    expected = (actions, policy._expected_values(values), log_prob)
    assert all(th.equal(ours, theirs) for ours, theirs in zip(direct, expected, strict=True))
    return direct


def test_actor_critic_with_separate_features_extractors_is_called_as_modules() -> None:
    policy = crl.PPO("MlpPolicy", "CartPole-v1", policy_kwargs={"share_features_extractor": False}, seed=0).policy
    observations = th.randn(16, 4)
    _assert_forward_equals_sb3s(policy, observations)
    assert policy._direct_layers(policy) is None


def test_direct_layers_are_found_again_by_a_copy() -> None:
    policy = _dqn_acting_policy()
    seen: list[th.Tensor] = []
    handle = th.nn.modules.module.register_module_forward_hook(lambda module, inputs, output: seen.append(output))
    try:
        _greedy(policy, th.randn(8, 4))  # remembers the (unpicklable) global hook in the way
        copied = copy.deepcopy(policy)
    finally:
        handle.remove()
    observations = th.randn(8, 4)
    assert th.equal(_greedy(copied, observations), _sb3_greedy(copied, observations))
    assert step_layer(copied._direct_q_layers(copied.q_net)[-1]) is copied.q_net.q_net[-1]


class _Frames(gym.Env):
    """Stacked 84x84 frames, channel first, as SB3's Atari preprocessing hands them to NatureCNN."""

    observation_space = spaces.Box(0, 255, (4, 84, 84), np.uint8)
    action_space = spaces.Discrete(4)

    def reset(self, *, seed=None, options=None):
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


def test_cnn_policies_act_through_nature_cnns_layers_directly_and_equal_sb3s() -> None:
    frames = th.randint(0, 256, (8, 4, 84, 84), generator=th.Generator().manual_seed(0), dtype=th.uint8)
    dqn = crl.DQN("CnnPolicy", _Frames(), buffer_size=100, seed=0).policy
    dqn.set_training_mode(False)
    with patch.object(th.nn.Module, "_call_impl", side_effect=AssertionError("a module was called")):
        actions = _greedy(dqn, frames)
    assert th.equal(actions, _sb3_greedy(dqn, frames))
    convolution, linear = [th.nn.Conv2d, th.nn.ReLU], [th.nn.Linear, th.nn.ReLU]
    expected = [*convolution, *convolution, *convolution, th.nn.Flatten, *linear, th.nn.Linear]
    assert [type(step_layer(step)) for step in dqn._direct_q_layers(dqn.q_net)] == expected
    ppo = crl.PPO("CnnPolicy", _Frames(), n_steps=8, batch_size=8, seed=0).policy
    _assert_forward_equals_sb3s(ppo, frames)
    assert [type(step_layer(step)) for step in ppo._direct_layers(ppo)[0]] == expected[:-1]


def _assert_evaluate_actions_equals_sb3s(policy: BasePolicy, observations: th.Tensor, actions: th.Tensor) -> None:
    """crl's ``evaluate_actions`` gives SB3's values, log-probs and entropies, and the same gradients."""
    results = []
    for evaluate in (policy.evaluate_actions, partial(sb3.common.policies.ActorCriticPolicy.evaluate_actions, policy)):
        policy.zero_grad()
        values, log_prob, entropy = evaluate(observations, actions)
        (values.square().mean() - log_prob.mean() - 0.01 * entropy.mean()).backward()
        results.append([values, log_prob, entropy, *(parameter.grad.clone() for parameter in policy.parameters())])
    ours, sb3s = results
    assert len(ours) == len(sb3s) and all(th.equal(a, b) for a, b in zip(ours, sb3s, strict=True))


def _module_calls(run: Callable[[], object]) -> list[type]:
    """The classes of the modules called (through ``nn.Module.__call__``) while ``run`` runs."""
    called: list[type] = []
    call = th.nn.Module._call_impl

    def counted(module: th.nn.Module, *args, **kwargs):
        called.append(type(module))
        return call(module, *args, **kwargs)

    with patch.object(th.nn.Module, "_call_impl", counted):
        run()
    return called


@pytest.mark.parametrize(
    ("env_id", "actions"),
    [("CartPole-v1", th.tensor([0, 1, 1, 0, 1, 0])), ("Pendulum-v1", th.linspace(-2, 2, 6).reshape(6, 1))],
)
def test_ppo_evaluates_actions_through_the_layers_with_sb3s_values_and_gradients(env_id: str, actions) -> None:
    policy = crl.PPO("MlpPolicy", env_id, seed=0).policy
    observations = th.randn(6, *policy.observation_space.shape, generator=th.Generator().manual_seed(0))
    _assert_evaluate_actions_equals_sb3s(policy, observations, actions)
    # Only the action head is a module call (SB3's _get_action_dist_from_latent makes it).
    assert _module_calls(lambda: policy.evaluate_actions(observations, actions)) == [th.nn.Linear]


def test_ppo_evaluates_uint8_frames_through_nature_cnns_layers_with_sb3s_values_and_gradients() -> None:
    frames = th.randint(0, 256, (8, 4, 84, 84), generator=th.Generator().manual_seed(0), dtype=th.uint8)
    kept = frames.clone()
    policy = crl.PPO("CnnPolicy", _Frames(), n_steps=8, batch_size=8, seed=0).policy
    _assert_evaluate_actions_equals_sb3s(policy, frames, th.arange(8) % 4)
    assert th.equal(frames, kept)  # normalised in a copy
    assert _module_calls(lambda: policy.evaluate_actions(frames, th.arange(8) % 4)) == [th.nn.Linear]


def test_ppo_evaluates_actions_through_modules_when_a_hook_is_registered() -> None:
    policy = crl.PPO("MlpPolicy", "CartPole-v1", seed=0).policy
    observations, actions = th.randn(6, 4), th.tensor([0, 1, 1, 0, 1, 0])
    seen: list[th.Tensor] = []
    layer = policy.mlp_extractor.policy_net[0]
    handle = layer.register_forward_hook(lambda module, inputs, output: seen.append(output))
    try:
        _assert_evaluate_actions_equals_sb3s(policy, observations, actions)
        assert len(seen) == 2  # the hooked layer ran as a module, in both passes
    finally:
        handle.remove()


class _SeededFrames(_Frames):
    """:class:`_Frames` drawn from the env's own seeded generator, so that two runs see the same frames."""

    def reset(self, *, seed=None, options=None):
        super(_Frames, self).reset(seed=seed)
        return self._frame(), {}

    def step(self, action):
        return self._frame(), float(action), bool(self.np_random.random() < 0.1), False, {}

    def _frame(self) -> np.ndarray:
        return self.np_random.integers(0, 256, self.observation_space.shape, dtype=np.uint8)


def test_ppo_trains_on_uint8_frames_like_sb3() -> None:
    arguments = dict(n_steps=32, batch_size=16, n_epochs=2, seed=0, device="cpu")
    reference = sb3.PPO("CnnPolicy", _SeededFrames(), **arguments).learn(64)
    candidate = crl.PPO("CnnPolicy", _SeededFrames(), **arguments).learn(64)
    assert_same_training(reference, candidate)


@pytest.mark.parametrize("target", [False, True])
def test_dqn_trains_on_uint8_frames_with_the_module_calls_values_and_gradients(target: bool) -> None:
    frames = th.randint(0, 256, (8, 4, 84, 84), generator=th.Generator().manual_seed(0), dtype=th.uint8)
    policy = crl.DQN("CnnPolicy", _Frames(), buffer_size=100, seed=0).policy
    network = policy.q_net_target if target else policy.q_net
    direct = policy.q_values(frames, target=target)
    direct.sum().backward()
    direct_gradients = [parameter.grad.clone() for parameter in network.parameters()]
    network.zero_grad()
    called = network(frames)
    called.sum().backward()
    assert th.equal(direct, called)
    assert all(
        th.equal(ours, parameter.grad) for ours, parameter in zip(direct_gradients, network.parameters(), strict=True)
    )


def test_normalized_images_are_sb3s_for_every_pixel_value_and_layout() -> None:
    pixels = th.arange(256, dtype=th.uint8).reshape(4, 8, 8)
    batch = pixels.repeat(3, 1, 1, 1).permute(0, 2, 3, 1)  # not contiguous: the result keeps the layout
    for frames in (pixels, batch, pixels.float()):
        given = frames.clone()
        ours, sb3s = normalized_images(frames), frames.float() / 255.0
        assert ours.dtype == sb3s.dtype == th.float32 and ours.stride() == sb3s.stride()
        assert th.equal(ours.view(th.int32), sb3s.view(th.int32))  # bit for bit
        assert th.equal(frames, given) and ours.data_ptr() != frames.data_ptr()  # the caller's batch is kept
    default = th.get_default_dtype()
    th.set_default_dtype(th.float64)  # uint8 / 255.0 would now be float64; SB3's float() stays float32
    try:
        assert th.equal(normalized_images(pixels).view(th.int32), (pixels.float() / 255.0).view(th.int32))
    finally:
        th.set_default_dtype(default)


def _batch(space: spaces.Space, size: int = 3) -> np.ndarray | dict[str, np.ndarray]:
    if isinstance(space, spaces.Dict):
        return {key: _batch(subspace, size) for key, subspace in space.items()}  # type: ignore[misc]
    return np.stack([space.sample() for _ in range(size)])


@pytest.mark.parametrize(
    "space",
    [
        spaces.Box(0, 255, (4, 8, 8), np.uint8),
        spaces.Box(0, 255, (4, 8, 8), np.float32),
        spaces.Box(-1.0, 1.0, (5,), np.float32),
        spaces.Discrete(3),
        spaces.Dict({"frames": spaces.Box(0, 255, (4, 8, 8), np.uint8), "position": spaces.Box(-1, 1, (2,))}),
    ],
    ids=["uint8_images", "float_images", "vector", "discrete", "dict"],
)
@pytest.mark.parametrize("normalize_images", [True, False])
def test_preprocessed_is_sb3s_preprocess_obs(space: spaces.Space, normalize_images: bool) -> None:
    policy = crl.DQN("MlpPolicy", "CartPole-v1", seed=0).policy
    model = SimpleNamespace(observation_space=space, normalize_images=normalize_images)
    space.seed(0)
    for _ in range(2):  # the second time with the remembered image check
        obs = obs_as_tensor(_batch(space), th.device("cpu"))
        ours, sb3s = policy.preprocessed(obs, model), preprocess_obs(obs, space, normalize_images=normalize_images)
        pairs = [(ours[key], sb3s[key]) for key in sb3s] if isinstance(sb3s, dict) else [(ours, sb3s)]
        assert all(mine.dtype == theirs.dtype and th.equal(mine, theirs) for mine, theirs in pairs)


def _adam_trajectory(optimizer_class: type, foreach: bool | None, steps: int = 30, **kwargs) -> list[th.Tensor]:
    """Parameters after ``steps`` updates on seeded random gradients (tensors of several shapes)."""
    generator = th.Generator().manual_seed(0)
    parameters = [th.randn(shape, generator=generator).requires_grad_() for shape in ((7, 5), (7,), (3, 7), (3,))]
    optimizer = optimizer_class(parameters, lr=1e-2, foreach=foreach, **kwargs)
    use_multi_tensor_updates(optimizer)
    for _ in range(steps):
        for parameter in parameters:
            parameter.grad = th.randn(parameter.shape, generator=generator)
        optimizer.step()
    return [parameter.detach() for parameter in parameters]


@pytest.mark.parametrize(
    ("optimizer_class", "kwargs"),
    [
        (th.optim.Adam, {}),
        (th.optim.Adam, {"amsgrad": True, "weight_decay": 0.1, "maximize": True}),
        (th.optim.AdamW, {"weight_decay": 0.1}),
    ],
)
def test_multi_tensor_adam_updates_are_bitwise_the_single_tensor_ones(optimizer_class: type, kwargs: dict) -> None:
    single = _adam_trajectory(optimizer_class, foreach=False, **kwargs)
    multi = _adam_trajectory(optimizer_class, foreach=None, **kwargs)
    assert all(th.equal(a, b) for a, b in zip(single, multi, strict=True))


def test_multi_tensor_updates_leave_explicit_and_inexact_settings_alone() -> None:
    parameter = th.zeros(3, requires_grad=True)
    chosen = th.optim.Adam([parameter], foreach=False)
    tensor_lr = th.optim.Adam([parameter], lr=th.tensor(1e-3))
    sgd = th.optim.SGD([parameter], lr=0.1)
    default = th.optim.Adam([parameter])
    for optimizer in (chosen, tensor_lr, sgd, default):
        use_multi_tensor_updates(optimizer)
    assert chosen.param_groups[0]["foreach"] is False
    assert tensor_lr.param_groups[0]["foreach"] is None
    assert sgd.param_groups[0]["foreach"] is None
    assert default.param_groups[0]["foreach"] is True


def test_every_adam_of_crls_algorithms_updates_multi_tensor_also_after_loading_an_sb3_model(tmp_path) -> None:
    sac = crl.SAC("MlpPolicy", "Pendulum-v1", device="cpu")
    optimizers = (sac.actor.optimizer, sac.critic.optimizer, sac.ent_coef_optimizer)
    assert all(group["foreach"] is True for optimizer in optimizers for group in optimizer.param_groups)

    sb3.PPO("MlpPolicy", "CartPole-v1", device="cpu").save(tmp_path / "sb3_ppo")
    loaded = crl.PPO.load(tmp_path / "sb3_ppo", device="cpu")
    assert loaded.policy.optimizer.param_groups[0]["foreach"] is True


def _gradients(scale: float, entry: float | None = None, dtype: th.dtype = th.float32) -> list[th.Tensor]:
    """Parameters of several shapes holding seeded random gradients times ``scale`` (one has none).

    :param entry: a value written into one gradient entry (a non-finite one makes the total norm so)
    """
    generator = th.Generator().manual_seed(0)
    parameters = [th.zeros(shape, dtype=dtype, requires_grad=True) for shape in ((7, 5), (7,), (3, 7), (3,))]
    for parameter in parameters[:-1]:
        parameter.grad = scale * th.randn(parameter.shape, generator=generator, dtype=dtype)
    if entry is not None:
        parameters[1].grad[0] = entry
    return parameters


def _assert_clipped_like_torch(scale: float, entry: float | None, dtype: th.dtype, max_norm: float) -> None:
    ours, torchs = _gradients(scale, entry, dtype), _gradients(scale, entry, dtype)
    norm = clip_grad_norm_((p for p in ours), max_norm)
    expected = th.nn.utils.clip_grad_norm_((p for p in torchs), max_norm)
    assert norm.dtype == expected.dtype
    assert th.equal(norm, expected) or (norm.isnan() and expected.isnan())
    for mine, reference in zip(ours, torchs, strict=True):
        assert (mine.grad is None) == (reference.grad is None)
        if mine.grad is not None:
            assert th.equal(mine.grad.isnan(), reference.grad.isnan())
            assert th.equal(mine.grad.nan_to_num(), reference.grad.nan_to_num()), f"scale {scale}"


@pytest.mark.parametrize("max_norm", [1.0, 0.3, inf])
@pytest.mark.parametrize("dtype", [th.float32, th.float64, th.bfloat16])
@pytest.mark.parametrize(("scale", "entry"), [(1e-3, None), (0.3, None), (10.0, None), (1.0, inf), (1.0, nan)])
def test_clip_grad_norm_is_bitwise_torchs(scale: float, entry: float | None, dtype: th.dtype, max_norm: float) -> None:
    """Norms below and above ``max_norm`` (gradients of scale 0.3 have norm 2.45), and non-finite ones.

    ``float32`` and ``float64`` compute the factor with NumPy scalars, ``bfloat16`` with tensors.
    """
    _assert_clipped_like_torch(scale, entry, dtype, max_norm)


@pytest.mark.parametrize("dtype", [th.float32, th.float64])
def test_clip_factor_from_numpy_scalars_is_torchs_over_many_norms(dtype: th.dtype) -> None:
    """The factor's last bit: gradient scales spread over 40 orders of magnitude, a max_norm not exact in binary."""
    scales = th.logspace(-20, 20, 400, dtype=th.float64).tolist()
    for scale in scales:
        _assert_clipped_like_torch(scale, None, dtype, 0.1)


def test_clip_grad_norm_of_mixed_dtypes_is_torchs() -> None:
    parameters = _gradients(10.0) + _gradients(10.0, dtype=th.float64)
    reference = [p.detach().clone().requires_grad_() for p in parameters]
    for copy_, original in zip(reference, parameters, strict=True):
        copy_.grad = None if original.grad is None else original.grad.clone()
    assert th.equal(clip_grad_norm_(parameters, 1.0), th.nn.utils.clip_grad_norm_(reference, 1.0))
    assert all(th.equal(a.grad, b.grad) for a, b in zip(parameters, reference, strict=True) if a.grad is not None)


def _same_tensors(listed: list[th.Tensor], expected) -> bool:
    return [id(p) for p in listed] == [id(p) for p in expected]


def test_listed_parameters_are_the_modules_parameters_and_follow_changes() -> None:
    policy = crl.DQN("MlpPolicy", "CartPole-v1", device="cpu").policy
    listed = listed_parameters(policy)
    assert _same_tensors(listed, policy.parameters())
    listed.clear()  # a copy: the next call is whole
    assert len(listed_parameters(policy)) == len(list(policy.parameters()))

    policy.q_net.q_net.append(th.nn.Linear(2, 2))  # a submodule registered
    policy.q_net.q_net[0].register_parameter("scale", th.nn.Parameter(th.ones(1)))  # a parameter registered
    assert _same_tensors(listed_parameters(policy), policy.parameters())
    policy.q_net.q_net[2]._parameters["bias"] = th.nn.Parameter(th.zeros(84))  # no hook sees this write
    assert _same_tensors(listed_parameters(policy), policy.parameters())
    shared = policy.q_net_target.q_net[0].weight
    policy.q_net.q_net[4].weight = shared  # one parameter in two modules: listed once, where parameters() has it
    assert _same_tensors(listed_parameters(policy), policy.parameters())


def test_listed_parameters_follow_a_conversion_that_replaces_them() -> None:
    policy = crl.DQN("MlpPolicy", "CartPole-v1", device="cpu").policy
    before = listed_parameters(policy)
    overwrite = th.__future__.get_overwrite_module_params_on_conversion()
    th.__future__.set_overwrite_module_params_on_conversion(True)  # .double() makes new Parameter objects
    try:
        policy.double()
    finally:
        th.__future__.set_overwrite_module_params_on_conversion(overwrite)
    after = listed_parameters(policy)
    assert _same_tensors(after, policy.parameters()) and all(p.dtype == th.float64 for p in after)
    assert not any(p is q for p, q in zip(before, after, strict=True))


def test_listed_parameters_do_not_keep_the_module_alive() -> None:
    module = th.nn.Sequential(th.nn.Linear(2, 2), th.nn.ReLU())
    listed_parameters(module)
    alive = weakref.ref(module)
    del module
    gc.collect()
    assert alive() is None


def test_a_module_with_its_own_parameters_is_walked_at_every_call() -> None:
    class Growing(th.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.extra: list[th.nn.Parameter] = []

        def parameters(self, recurse: bool = True):
            return iter(self.extra)

    grown = Growing()
    assert listed_parameters(grown) == []
    grown.extra.append(th.nn.Parameter(th.ones(1)))  # no registration: only the override knows
    assert listed_parameters(grown) == grown.extra


LOGGED_RUNS = {
    "DQN": ("CartPole-v1", 1_200, dict(learning_starts=200, train_freq=2, target_update_interval=100)),
    "SAC": ("Pendulum-v1", 600, dict(learning_starts=100, policy_kwargs=dict(net_arch=[32, 32]))),
}


@pytest.mark.parametrize("name", list(LOGGED_RUNS))
@pytest.mark.parametrize("gradient_steps", [1, 2])
def test_logs_are_sb3s(name: str, gradient_steps: int) -> None:
    """Every logged value, of the same type; one gradient step per train() logs its loss without np.mean."""
    env_id, steps, kwargs = LOGGED_RUNS[name]
    dumps = {}
    for library in (sb3, crl):
        algo_class = getattr(library, name)
        model = algo_class("MlpPolicy", env_id, gradient_steps=gradient_steps, seed=0, device="cpu", **kwargs)
        writer = _RecordingWriter()
        model.set_logger(Logger(folder=None, output_formats=[writer]))
        model.learn(steps, log_interval=1)
        dumps[library] = writer.dumps
    trained = [dump for dump in dumps[crl] if "train/loss" in dump or "train/actor_loss" in dump]
    assert len(trained) >= 2
    for ours, theirs in zip(dumps[crl], dumps[sb3], strict=True):
        assert ours == theirs and [type(v) for v in ours.values()] == [type(v) for v in theirs.values()]


class _RecordingWriter(KVWriter):
    """Keeps every dump's key-values, except the wall-clock ones (``time/fps``, ``time/time_elapsed``)."""

    def __init__(self) -> None:
        self.dumps: list[dict] = []

    def write(self, key_values: dict, key_excluded: dict, step: int = 0) -> None:
        timed = ("time/fps", "time/time_elapsed")
        self.dumps.append({key: value for key, value in key_values.items() if key not in timed} | {"step": step})


def test_learn_without_callback_copies_no_locals_and_a_users_function_still_gets_them() -> None:
    model = crl.DQN("MlpPolicy", "CartPole-v1", **DQN_ARGS)
    quiet = model._init_callback(None)
    quiet.update_locals({"infos": []})
    assert quiet.locals == {} and quiet.on_step()
    seen: list[bool] = []
    model.learn(50, callback=lambda locals_, globals_: seen.append("infos" in locals_) or True)
    assert len(seen) == 50 and all(seen)


def test_stored_transitions_are_sb3s_also_at_episode_ends() -> None:
    """The replay buffer holds SB3's next observations: the terminal one where an episode ended."""
    buffers = {}
    for library, vec_env in ((sb3, SB3DummyVecEnv), (crl, DummyVecEnv)):
        env = vec_env([lambda: gym.make("CartPole-v1")] * 2)
        model = library.DQN("MlpPolicy", env, learning_starts=10_000, seed=0, device="cpu")
        model.learn(600)
        buffers[library] = model.replay_buffer
    assert buffers[crl].dones[:300].sum() > 5  # episodes ended, so terminal observations were stored
    for field in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
        assert np.array_equal(getattr(buffers[crl], field), getattr(buffers[sb3], field)), field


def test_storing_a_terminal_observation_leaves_the_next_episodes_first_one_alone() -> None:
    model = crl.DQN("MlpPolicy", "CartPole-v1", learning_starts=10_000, seed=0, device="cpu")
    model.learn(8)
    first_of_next, terminal = np.zeros((1, 4), dtype=np.float32), np.ones(4, dtype=np.float32)
    infos = [{"terminal_observation": terminal}]
    model._store_transition(model.replay_buffer, np.array([0]), first_of_next, np.zeros(1), np.ones(1), infos)
    assert np.array_equal(model.replay_buffer.next_observations[model.replay_buffer.pos - 1, 0], terminal)
    assert model._last_obs is first_of_next and not first_of_next.any()


def test_the_image_check_is_made_again_for_another_space() -> None:
    policy = crl.DQN("MlpPolicy", "CartPole-v1", seed=0).policy
    images = SimpleNamespace(observation_space=spaces.Box(0, 255, (4, 8, 8), np.uint8), normalize_images=True)
    frames = th.full((1, 4, 8, 8), 255, dtype=th.uint8)
    assert th.equal(policy.preprocessed(frames, images), th.ones(1, 4, 8, 8))
    states = th.full((1, 4), 255.0)
    assert th.equal(policy.preprocessed(states, policy), states)  # CartPole's states are not images
