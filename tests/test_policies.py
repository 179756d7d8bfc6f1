"""crl policies: SB3's networks by default, LayerNorm/CReLU options, hidden-feature access."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common import policies as sb3_policies
from stable_baselines3.common.policies import ActorCriticPolicy as SB3ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.utils import ConstantSchedule
from stable_baselines3.dqn.policies import DQNPolicy as SB3DQNPolicy
from stable_baselines3.dqn.policies import QNetwork as SB3QNetwork
from stable_baselines3.sac.policies import SACPolicy as SB3SACPolicy
from torch import nn

import crl.policies.base as crl_policies_base
from crl.policies import (
    ActorCriticCnnPolicy,
    ActorCriticPolicy,
    CReLU,
    DQNCnnPolicy,
    DQNPolicy,
    Fourier,
    SACPolicy,
)

BOX = spaces.Box(-1.0, 1.0, (4,), np.float32)
DISCRETE = spaces.Discrete(3)
CONTINUOUS = spaces.Box(-1.0, 1.0, (2,), np.float32)
IMAGE = spaces.Box(0, 255, (4, 44, 44), np.uint8)
LR = ConstantSchedule(1e-3)

PAIRS = [
    (DQNPolicy, SB3DQNPolicy, DISCRETE),
    (ActorCriticPolicy, SB3ActorCriticPolicy, DISCRETE),
    (SACPolicy, SB3SACPolicy, CONTINUOUS),
]


@pytest.mark.parametrize(("crl_class", "sb3_class", "action_space"), PAIRS)
def test_default_policy_is_sb3s(crl_class, sb3_class, action_space) -> None:
    th.manual_seed(0)
    reference = sb3_class(BOX, action_space, LR).state_dict()
    th.manual_seed(0)
    candidate = crl_class(BOX, action_space, LR).state_dict()
    assert list(reference) == list(candidate)
    assert all(th.equal(reference[key], candidate[key]) for key in reference)


def _layer_types(stack: nn.Sequential) -> list[type]:
    return [type(module) for module in stack]


class _OwnActivation(nn.Module):
    """An activation class of a user's own: LayerNorm cannot tell it from any other module."""

    def forward(self, x: th.Tensor) -> th.Tensor:
        return th.relu(x)


@pytest.mark.parametrize("activation_fn", [nn.ReLU6, nn.Hardswish])
def test_any_torch_activation_gets_layer_norm_and_is_a_hidden_layer(activation_fn: type[nn.Module]) -> None:
    policy = DQNPolicy(BOX, DISCRETE, LR, net_arch=[8, 8], activation_fn=activation_fn, layer_norm="pre")
    assert _layer_types(policy.q_net.q_net) == [nn.Linear, nn.LayerNorm, activation_fn] * 2 + [nn.Linear]
    layers = policy.hidden_layers()["q_net"]
    assert [(layer.name, layer.path) for layer in layers] == [("layer0", "q_net.q_net.2"), ("layer1", "q_net.q_net.5")]
    assert all(isinstance(layer.activation, activation_fn) for layer in layers)


def test_an_activation_in_an_output_layer_is_not_a_hidden_layer() -> None:
    """SB3's gSDE actor clips its mean with a Hardtanh after ``mu``: an output, not a hidden layer."""
    policy = SACPolicy(BOX, CONTINUOUS, LR, net_arch=[8, 8], use_sde=True)
    assert isinstance(policy.actor.mu[1], nn.Hardtanh)
    assert [layer.path for layer in policy.hidden_layers(["actor"])["actor"]] == [
        "actor.latent_pi.1",
        "actor.latent_pi.3",
    ]


def test_layer_norm_placement() -> None:
    pre = DQNPolicy(BOX, DISCRETE, LR, layer_norm="pre").q_net.q_net
    post = DQNPolicy(BOX, DISCRETE, LR, layer_norm="post").q_net.q_net
    assert _layer_types(pre) == [nn.Linear, nn.LayerNorm, nn.ReLU] * 2 + [nn.Linear]
    assert _layer_types(post) == [nn.Linear, nn.ReLU, nn.LayerNorm] * 2 + [nn.Linear]


def test_layer_norm_normalises_hidden_pre_activations() -> None:
    policy = ActorCriticPolicy(BOX, DISCRETE, LR, layer_norm="pre")
    features = policy.hidden_features(th.randn(32, 4) * 100)
    for network in ("actor", "critic"):
        for layer in features[network].values():
            # Freshly initialised LayerNorm: zero mean, unit variance per sample
            assert th.allclose(layer.pre.mean(dim=1), th.zeros(32), atol=1e-5)
            assert th.allclose(layer.pre.var(dim=1, unbiased=False), th.ones(32), atol=1e-3)


def test_layer_norm_on_nature_cnn_covers_channels_and_space() -> None:
    policy = DQNCnnPolicy(IMAGE, DISCRETE, LR, layer_norm="pre")
    norms = [m for m in policy.q_net.features_extractor.modules() if isinstance(m, nn.LayerNorm)]
    # three conv layers normalised over (C, H, W), then the 512-unit linear layer
    assert [tuple(n.normalized_shape) for n in norms] == [(32, 10, 10), (64, 4, 4), (64, 2, 2), (512,)]
    features = policy.hidden_features(np.zeros((2, *IMAGE.shape), np.uint8))
    # DQN's CnnPolicy has no hidden layer after the extractor (net_arch=[])
    assert list(features["q_net"]) == [f"layer{k}" for k in range(4)]


def test_crelu_doubles_what_each_hidden_layer_passes_on() -> None:
    policy = SACPolicy(BOX, CONTINUOUS, LR, activation="crelu", net_arch=[16, 8])
    latent = policy.actor.latent_pi
    assert _layer_types(latent) == [nn.Linear, CReLU, nn.Linear, CReLU]
    assert latent[2].in_features == 32
    assert policy.actor.mu.in_features == 16
    assert policy.critic.qf0[2].in_features == 32 and policy.critic.qf0[4].in_features == 16
    features = policy.hidden_features(th.zeros(5, 4))
    assert features["actor"]["layer1"].pre.shape == (5, 8)
    assert features["actor"]["layer1"].post.shape == (5, 16)
    actions = policy.actor(th.zeros(5, 4), deterministic=True)
    assert actions.shape == (5, 2)


def test_crelu_on_nature_cnn_keeps_the_network_consistent() -> None:
    policy = ActorCriticCnnPolicy(IMAGE, DISCRETE, LR, activation="crelu", layer_norm="post")
    extractor = policy.features_extractor
    assert extractor.features_dim == 1024
    values = policy.predict_values(th.zeros(3, *IMAGE.shape))
    assert values.shape == (3, 1)


class _OwnExtractor(BaseFeaturesExtractor):
    """A user's features extractor: its forward is its own."""

    def __init__(self, observation_space: spaces.Space, features_dim: int = 8) -> None:
        super().__init__(observation_space, features_dim)
        self.net = nn.Sequential(nn.Linear(4, features_dim), nn.Tanh())

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.net(observations)


@pytest.mark.parametrize(
    ("options", "given"),
    [
        (dict(layer_norm="pre"), "layer_norm='pre'"),
        (dict(activation="crelu"), "activation='crelu'"),
        (dict(activation="fourier"), "activation='fourier'"),
    ],
)
def test_a_users_extractor_is_left_as_it_is_with_a_warning(options: dict, given: str) -> None:
    message = rf"{given} leaves features extractor _OwnExtractor as it is \(its activations \['net.1'\]"
    with pytest.warns(UserWarning, match=message):
        policy = DQNPolicy(BOX, DISCRETE, LR, features_extractor_class=_OwnExtractor, **options)
    assert [type(m) for m in policy.q_net.features_extractor.net] == [nn.Linear, nn.Tanh]
    rewritten = {"crelu": CReLU, "fourier": Fourier}.get(options.get("activation"), nn.LayerNorm)
    assert any(isinstance(m, rewritten) for m in policy.q_net.q_net)  # the MLP after it is rewritten


def test_crelu_output_is_both_halves() -> None:
    x = th.tensor([[1.0, -2.0, 0.0]])
    assert th.equal(CReLU()(x), th.tensor([[1.0, 0.0, 0.0, 0.0, 2.0, 0.0]]))


def test_hidden_features_name_every_trained_network() -> None:
    dqn = DQNPolicy(BOX, DISCRETE, LR).hidden_features(th.zeros(7, 4))
    assert list(dqn) == ["q_net"] and list(dqn["q_net"]) == ["layer0", "layer1"]
    assert dqn["q_net"]["layer1"].path == "q_net.q_net.3"

    sac = SACPolicy(BOX, CONTINUOUS, LR, n_critics=3).hidden_features(th.zeros(7, 4))
    assert list(sac) == ["actor", "qf0", "qf1", "qf2"]
    assert sac["qf2"]["layer0"].path == "critic.qf2.1"

    ppo = ActorCriticPolicy(BOX, DISCRETE, LR, net_arch=dict(pi=[8], vf=[6, 5])).hidden_features(th.zeros(7, 4))
    assert [f.post.shape[1] for f in ppo["actor"].values()] == [8]
    assert [f.post.shape[1] for f in ppo["critic"].values()] == [6, 5]


@pytest.mark.parametrize("share", [True, False])
def test_hidden_features_run_each_features_extractor_once_and_record_sb3s_passes(share: bool) -> None:
    policy = ActorCriticCnnPolicy(IMAGE, DISCRETE, LR, share_features_extractor=share, net_arch=dict(pi=[8], vf=[6]))
    obs = th.randint(0, 256, (5, *IMAGE.shape), dtype=th.uint8, generator=th.Generator().manual_seed(0))
    extractors = {policy.pi_features_extractor, policy.vf_features_extractor}
    calls: list[nn.Module] = []
    handles = [extractor.register_forward_hook(lambda m, i, o: calls.append(m)) for extractor in extractors]
    features = policy.hidden_features(obs)
    for handle in handles:
        handle.remove()
    assert len(extractors) == (1 if share else 2) and sorted(map(id, calls)) == sorted(map(id, extractors))
    with th.no_grad(), policy.record_features() as recorder:  # SB3's two passes, the shared CNN twice
        policy.get_distribution(obs)
        policy.predict_values(obs)
    expected = recorder.features()
    assert {network: list(layers) for network, layers in features.items()} == {
        network: list(layers) for network, layers in expected.items()
    }
    for network, layers in expected.items():
        for name, layer in layers.items():
            ours = features[network][name]
            assert ours.path == layer.path and th.equal(ours.pre, layer.pre) and th.equal(ours.post, layer.post)


def _sb3s_probe_passes(policy: nn.Module, obs: th.Tensor) -> None:
    if isinstance(policy, DQNCnnPolicy):
        policy.q_net(obs)
    else:
        policy.get_distribution(obs)
        policy.predict_values(obs)


@pytest.mark.parametrize(
    ("make", "net_arch"), [(DQNCnnPolicy, [8]), (ActorCriticCnnPolicy, dict(pi=[8], vf=[6]))], ids=["dqn", "ppo"]
)
def test_probe_passes_normalise_frames_as_sb3_without_its_preprocessing(make, net_arch, monkeypatch) -> None:
    policy = make(IMAGE, DISCRETE, LR, net_arch=net_arch)
    obs = th.randint(0, 256, (5, *IMAGE.shape), dtype=th.uint8, generator=th.Generator().manual_seed(0))
    with th.no_grad(), policy.record_features() as recorder:
        _sb3s_probe_passes(policy, obs)
    expected = recorder.features()
    calls: list[int] = []
    for module in (sb3_policies, crl_policies_base):
        real = module.preprocess_obs
        monkeypatch.setattr(module, "preprocess_obs", lambda *a, real=real, **k: calls.append(1) or real(*a, **k))
    features = policy.hidden_features(obs)
    assert calls == []  # crl's normalisation: the float copy divided in place
    for network, layers in expected.items():
        for name, layer in layers.items():
            ours = features[network][name]
            assert th.equal(ours.pre, layer.pre) and th.equal(ours.post, layer.post)


@pytest.mark.parametrize("method", ["forward", "extract_features"])
def test_probe_pass_runs_a_q_networks_own_methods(method: str) -> None:
    calls: list[str] = []

    def counted(self: SB3QNetwork, *args: th.Tensor) -> th.Tensor:
        calls.append(method)
        return getattr(SB3QNetwork, method)(self, *args)

    policy = DQNPolicy(BOX, DISCRETE, LR)
    policy.q_net.__class__ = type("OwnQNetwork", (SB3QNetwork,), {method: counted})
    policy.hidden_features(th.zeros(7, 4))
    assert calls == [method]


@pytest.mark.parametrize("scope", ["module", "global"])
def test_probe_pass_runs_a_hook_on_the_q_network(scope: str) -> None:
    policy = DQNPolicy(BOX, DISCRETE, LR)
    called: list[nn.Module] = []

    def hook(module: nn.Module, inputs: tuple[th.Tensor], output: th.Tensor) -> None:
        called.append(module)

    if scope == "module":
        handle = policy.q_net.register_forward_hook(hook)
    else:
        handle = nn.modules.module.register_module_forward_hook(hook)
    policy.hidden_features(th.zeros(7, 4))
    handle.remove()
    assert any(module is policy.q_net for module in called)


def test_probe_pass_runs_an_actor_critics_own_extract_features() -> None:
    calls: list[int] = []

    class OwnFeatures(ActorCriticPolicy):
        def extract_features(self, obs: th.Tensor, features_extractor: nn.Module | None = None) -> th.Tensor:
            calls.append(1)
            return super().extract_features(obs, features_extractor)

    OwnFeatures(BOX, DISCRETE, LR).hidden_features(th.zeros(7, 4))
    assert calls == [1]  # the shared extractor, once


def test_post_activation_is_the_activation_of_the_pre_activation() -> None:
    policy = DQNPolicy(BOX, DISCRETE, LR)
    for layer in policy.hidden_features(th.randn(16, 4))["q_net"].values():
        assert th.equal(layer.post, th.relu(layer.pre))


def test_recording_leaves_no_hooks_behind_and_outputs_unchanged() -> None:
    policy = DQNPolicy(BOX, DISCRETE, LR)
    obs = th.randn(4, 4)
    before = policy.q_net(obs)
    policy.hidden_features(obs)
    assert all(not m._forward_hooks for m in policy.modules())
    assert th.equal(policy.q_net(obs), before)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(layer_norm="middle"), "layer_norm='middle' is not allowed; use one of [None, 'pre', 'post']"),
        (dict(activation="swish"), "activation='swish' is not allowed; use one of ['crelu', 'elu'"),
        (dict(activation="tanh", activation_fn=nn.ReLU), "activation='tanh' and activation_fn=ReLU disagree"),
        (
            dict(activation="crelu", crelu_halve_width="yes"),
            "crelu_halve_width='yes' is not allowed; use True or False",
        ),
        (
            dict(activation_fn=_OwnActivation, layer_norm="pre"),
            "layer_norm='pre' needs activation_fn to be an activation it can find, got activation_fn=_OwnActivation; "
            "use one of ['CELU', 'CReLU', 'ELU'",
        ),
    ],
)
def test_bad_options_name_the_option_and_allowed_values(options, message) -> None:
    with pytest.raises(ValueError) as error:
        DQNPolicy(BOX, DISCRETE, LR, **options)
    assert message in str(error.value)


def test_crelu_with_sde_is_rejected() -> None:
    with pytest.raises(ValueError, match="activation='crelu' is not supported with use_sde=True"):
        SACPolicy(BOX, CONTINUOUS, LR, activation="crelu", use_sde=True)


def test_unknown_network_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"unknown network\(s\) \['critic'\]; this policy trains \['q_net'\]"):
        DQNPolicy(BOX, DISCRETE, LR).record_features(["critic"])


def test_policy_options_reach_the_algorithm_policy() -> None:
    import crl

    model = crl.PPO("MlpPolicy", gym.make("CartPole-v1"), policy_kwargs=dict(activation="crelu"), n_steps=64)
    assert isinstance(model.policy.mlp_extractor.policy_net[1], CReLU)
    assert model.policy.action_net.in_features == 128
