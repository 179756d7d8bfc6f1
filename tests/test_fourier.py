"""Deep Fourier features (Lewandowski, Schuurmans & Machado 2024): ``activation="fourier"``, ``[sin(z), cos(z)]``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from test_policies import BOX, CONTINUOUS, DISCRETE, IMAGE, LR
from torch import nn

import crl
from crl.config.curriculum import PolicyOptions
from crl.interventions import ReDo
from crl.interventions.network import unit_layers
from crl.metrics import feature_metrics, metric_name
from crl.metrics import functions as metrics
from crl.policies import (
    ACTIVATIONS,
    ActorCriticCnnPolicy,
    ArchitectureOptions,
    ConcatenatedActivation,
    CReLU,
    DQNPolicy,
    Fourier,
    MultiHeadSACPolicy,
    SACPolicy,
)

DQN_KWARGS = dict(learning_starts=100, train_freq=1, target_update_interval=1000, seed=0)


def _layer_types(stack: nn.Sequential) -> list[type]:
    return [type(module) for module in stack]


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _snapshot(module: nn.Module) -> dict[str, th.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


# --- the module -------------------------------------------------------------------------------------


def test_fourier_output_is_sine_then_cosine_along_the_feature_dimension() -> None:
    x = th.tensor([[0.0, math.pi / 2, -math.pi / 6]])
    expected = th.tensor([[0.0, 1.0, -0.5, 1.0, 0.0, math.sqrt(3) / 2]])
    out = Fourier()(x)
    assert out.shape == (1, 6)
    th.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    assert out[0, 0] == 0.0 and out[0, 3] == 1.0  # sin(0) and cos(0) exactly


def test_fourier_of_a_feature_map_concatenates_channels() -> None:
    x = th.zeros(2, 3, 2, 2)
    x[1, 2, 0, 1] = math.pi
    x[0, 1, 1, 0] = math.pi / 2
    out = Fourier()(x)
    assert out.shape == (2, 6, 2, 2)
    assert th.equal(out[:, :3], th.sin(x)) and th.equal(out[:, 3:], th.cos(x))
    # channel c's sine is channel c, its cosine channel c + 3
    assert abs(float(out[1, 2, 0, 1])) < 1e-6 and float(out[1, 5, 0, 1]) == -1.0
    assert float(out[0, 1, 1, 0]) == 1.0 and abs(float(out[0, 4, 1, 0])) < 1e-6
    assert float(out[0, 0, 0, 0]) == 0.0 and float(out[0, 3, 0, 0]) == 1.0


def test_fourier_is_a_registered_concatenating_activation() -> None:
    assert ACTIVATIONS["fourier"] is Fourier
    assert isinstance(Fourier(), ConcatenatedActivation) and isinstance(CReLU(), ConcatenatedActivation)
    options = ArchitectureOptions(activation="fourier")
    assert options.concatenated and not options.is_default
    assert options.activation_fn(nn.Tanh) is nn.ReLU  # the placeholder SB3 builds with, swapped after
    assert not ArchitectureOptions(activation="tanh").concatenated
    assert PolicyOptions(activation="fourier", crelu_halve_width=True).activation == "fourier"  # YAML


# --- policies ---------------------------------------------------------------------------------------


def test_fourier_doubles_what_each_hidden_layer_passes_on() -> None:
    policy = SACPolicy(BOX, CONTINUOUS, LR, activation="fourier", net_arch=[16, 8])
    latent = policy.actor.latent_pi
    assert _layer_types(latent) == [nn.Linear, Fourier, nn.Linear, Fourier]
    assert latent[2].in_features == 32
    assert policy.actor.mu.in_features == 16 and policy.actor.log_std.in_features == 16
    assert policy.critic.qf0[2].in_features == 32 and policy.critic.qf0[4].in_features == 16
    assert _layer_types(policy.critic_target.qf1) == [nn.Linear, Fourier, nn.Linear, Fourier, nn.Linear]
    # actor: 4*16+16, 32*8+8, mu and log_std 16*2+2 each
    assert _count(policy.actor) == 80 + 264 + 34 + 34
    features = policy.hidden_features(th.zeros(5, 4))
    assert features["actor"]["layer1"].pre.shape == (5, 8)
    assert features["actor"]["layer1"].post.shape == (5, 16)
    # zero observations: every unit's pre-activation is its bias
    layer0 = features["actor"]["layer0"]
    assert th.equal(layer0.post, th.cat((th.sin(layer0.pre), th.cos(layer0.pre)), dim=1))
    assert policy.actor(th.zeros(5, 4), deterministic=True).shape == (5, 2)


@pytest.mark.parametrize(
    ("policy_kwargs", "shapes", "count"),
    [
        (dict(net_arch=[64, 64]), [(64, 4), (64, 64), (2, 64)], 4610),
        (dict(net_arch=[64, 64], activation="fourier"), [(64, 4), (64, 128), (2, 128)], 8834),
        (dict(net_arch=[64, 64], activation="fourier", crelu_halve_width=True), [(32, 4), (32, 64), (2, 64)], 2370),
    ],
    ids=["relu", "fourier", "fourier_halved"],
)
def test_dqn_q_network_shapes_and_parameter_count(policy_kwargs: dict, shapes: list, count: int) -> None:
    model = crl.DQN("MlpPolicy", "CartPole-v1", policy_kwargs=policy_kwargs)
    q = model.q_net.q_net
    assert [tuple(m.weight.shape) for m in q if isinstance(m, nn.Linear)] == shapes
    assert _count(model.q_net) == count
    if "activation" in policy_kwargs:
        assert _layer_types(q) == [nn.Linear, Fourier, nn.Linear, Fourier, nn.Linear]
        crelu = crl.DQN("MlpPolicy", "CartPole-v1", policy_kwargs={**policy_kwargs, "activation": "crelu"})
        assert _count(crelu.q_net) == count  # the same widths as CReLU's
    assert model.q_net(th.zeros(3, 4)).shape == (3, 2)


def test_ppo_parameter_counts_with_fourier() -> None:
    counts = {}
    for name, kwargs in {
        "relu": {},
        "fourier": dict(activation="fourier"),
        "halved": dict(activation="fourier", crelu_halve_width=True),
    }.items():
        model = crl.PPO("MlpPolicy", "CartPole-v1", n_steps=64, policy_kwargs=kwargs)
        counts[name] = _count(model.policy)
        if name == "fourier":
            assert isinstance(model.policy.mlp_extractor.policy_net[1], Fourier)
            assert model.policy.mlp_extractor.value_net[2].in_features == 128
            assert model.policy.action_net.in_features == 128 and model.policy.value_net.in_features == 128
    # each of pi and vf: 4*64+64 and 64*64+64 (ReLU) / 128*64+64 (Fourier) / 4*32+32 and 64*32+32 (halved);
    # heads: 64*2+2 and 64+1 (ReLU, halved) / 128*2+2 and 128+1 (Fourier)
    assert counts == {"relu": 9155, "fourier": 17539, "halved": 4675}


def test_fourier_on_nature_cnn_keeps_the_network_consistent() -> None:
    policy = ActorCriticCnnPolicy(IMAGE, DISCRETE, LR, activation="fourier", layer_norm="post")
    extractor = policy.features_extractor
    assert not any(isinstance(m, nn.ReLU) for m in policy.modules())
    convs = [m for m in extractor.cnn if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(4, 32), (64, 64), (128, 64)]
    assert sum(isinstance(m, Fourier) for m in extractor.cnn) == 3
    assert extractor.linear[0].in_features == 2 * 64 * 2 * 2 and extractor.features_dim == 1024
    assert policy.predict_values(th.zeros(3, *IMAGE.shape)).shape == (3, 1)
    features = policy.hidden_features(np.zeros((2, *IMAGE.shape), np.uint8))
    assert features["actor"]["layer0"].post.shape == (2, 64, 10, 10)


@pytest.mark.parametrize("algorithm", ["DQN", "PPO", "SAC"])
def test_fourier_policies_learn(algorithm: str) -> None:
    if algorithm == "DQN":
        model = crl.DQN(
            "MlpPolicy", "CartPole-v1", policy_kwargs=dict(activation="fourier", net_arch=[32]), **DQN_KWARGS
        )
        network = model.q_net
    elif algorithm == "PPO":
        model = crl.PPO(
            "MlpPolicy", "CartPole-v1", n_steps=128, batch_size=64, seed=0, policy_kwargs=dict(activation="fourier")
        )
        network = model.policy
    else:
        model = crl.SAC(
            "MlpPolicy",
            "Pendulum-v1",
            learning_starts=100,
            batch_size=32,
            seed=0,
            policy_kwargs=dict(activation="fourier", net_arch=[16, 16]),
        )
        network = model.actor
    assert any(isinstance(m, Fourier) for m in network.modules())
    before = _snapshot(network)
    model.learn(300)
    after = _snapshot(network)
    assert all(th.isfinite(p).all() for p in after.values())
    assert any(not th.equal(before[name], after[name]) for name in before)


def test_save_and_load_keep_the_fourier_network(tmp_path: Path) -> None:
    model = crl.DQN("MlpPolicy", "CartPole-v1", policy_kwargs=dict(activation="fourier", net_arch=[16]), **DQN_KWARGS)
    model.learn(200)
    model.save(tmp_path / "fourier")
    loaded = crl.DQN.load(tmp_path / "fourier")
    assert loaded.policy.architecture.activation == "fourier"
    assert _layer_types(loaded.q_net.q_net) == [nn.Linear, Fourier, nn.Linear]
    obs = th.as_tensor(model.replay_buffer.observations[:64, 0])
    with th.no_grad():
        assert th.equal(loaded.q_net(obs), model.q_net(obs))
    actions, _ = loaded.predict(obs.numpy(), deterministic=True)
    assert np.array_equal(actions, model.predict(obs.numpy(), deterministic=True)[0])


# --- where CReLU is refused, so is Fourier ----------------------------------------------------------


def test_fourier_with_sde_is_refused() -> None:
    with pytest.raises(ValueError, match="activation='fourier' is not supported with use_sde=True for SAC"):
        SACPolicy(BOX, CONTINUOUS, LR, activation="fourier", use_sde=True)
    with pytest.raises(ValueError, match="activation='fourier' is not supported with use_sde=True for TQC"):
        crl.TQC("MlpPolicy", "Pendulum-v1", use_sde=True, policy_kwargs=dict(activation="fourier"))
    with pytest.raises(ValueError, match="activation='fourier' is not supported with use_sde=True for CrossQ"):
        crl.CrossQ("MlpPolicy", "Pendulum-v1", use_sde=True, policy_kwargs=dict(activation="fourier", batch_norm=False))


def test_crossq_batch_renorm_takes_fourier_only_halved() -> None:
    message = (
        "policy option activation='fourier' is not supported by CrossQ with batch_norm=True unless "
        "crelu_halve_width=True: the BatchRenorm layer after each activation normalises the net_arch width, "
        "which this activation doubles"
    )
    with pytest.raises(ValueError, match=message):
        crl.CrossQ("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(activation="fourier"))
    model = crl.CrossQ(
        "MlpPolicy",
        "Pendulum-v1",
        learning_starts=100,
        batch_size=32,
        seed=0,
        policy_kwargs=dict(net_arch=[16, 16], activation="fourier", crelu_halve_width=True),
    )
    qf0 = model.critic.qf0
    assert isinstance(qf0[2], Fourier) and qf0[1].out_features == 8 and qf0[3].num_features == 16
    assert model.actor.mu.in_features == 16
    model.learn(200)
    assert all(th.isfinite(p).all() for p in model.policy.parameters())
    # without batch norm it doubles, as for SAC
    plain = crl.CrossQ(
        "MlpPolicy", "Pendulum-v1", policy_kwargs=dict(net_arch=[16], activation="fourier", batch_norm=False)
    )
    assert plain.actor.mu.in_features == 32


def test_halving_needs_a_concatenating_activation_and_even_widths() -> None:
    with pytest.raises(
        ValueError,
        match="crelu_halve_width=True needs activation='crelu' or activation='fourier', got activation='tanh'",
    ):
        DQNPolicy(BOX, DISCRETE, LR, activation="tanh", crelu_halve_width=True)
    with pytest.raises(ValueError, match="crelu_halve_width=True needs even hidden widths"):
        DQNPolicy(BOX, DISCRETE, LR, activation="fourier", crelu_halve_width=True, net_arch=[63])


def test_multi_head_first_layer_refuses_fourier_and_heads_read_both_halves() -> None:
    observations = spaces.Box(-1.0, 1.0, (5,), np.float32)
    with pytest.raises(ValueError, match="use it without layer_norm and without a concatenating activation"):
        MultiHeadSACPolicy(
            observations, CONTINUOUS, LR, n_heads=2, activation="fourier", net_arch=[16], first_layer="layer_norm_tanh"
        )
    policy = MultiHeadSACPolicy(observations, CONTINUOUS, LR, n_heads=2, activation="fourier", net_arch=[16])
    assert isinstance(policy.actor.latent_pi[1], Fourier) and policy.actor.mu.in_features == 32


# --- metrics ----------------------------------------------------------------------------------------


def test_fau_of_a_fourier_layer_counts_saturated_entries() -> None:
    z = th.tensor([[0.0, math.pi / 2, math.pi / 4], [math.pi, 0.1, -math.pi / 2]])
    h = Fourier()(z)
    # |h| > 0.99: sin(pi/2), cos(0) in row 0; sin(-pi/2), cos(pi), cos(0.1) = 0.995 in row 1
    saturated = th.tensor([[False, True, False, True, False, False], [False, False, True, True, True, False]])
    assert th.equal(metrics.inactive_mask(h, "fourier"), saturated)
    assert metrics.activation_kind(Fourier()) == "fourier"
    assert metrics.fau([h], "fourier") == pytest.approx(1 - 5 / 12)
    assert metrics.inactive_count(h, "fourier") == 5
    # judged by sign, as a ReLU layer, the same entries would count differently
    assert metrics.fau([h], "relu") != metrics.fau([h], "fourier")


def test_dormant_ratio_of_a_fourier_layer() -> None:
    # unit 0's pre-activation is 0 on every sample: its sine half is silent, its cosine half is 1
    z = th.tensor([[0.0, 1.0, -2.0], [0.0, 0.5, 3.0], [0.0, -1.5, 0.25]])
    h = Fourier()(z)
    activity = metrics.unit_activity(h)
    assert activity[0] == 0.0 and activity[3] == 1.0
    ratio, per_layer = metrics.dormant_ratio([h])
    assert ratio == pytest.approx(1 / 6) and per_layer == [pytest.approx(1 / 6)]  # output channels, as for CReLU
    assert metrics.dead_units([h]) == pytest.approx(1 / 6)
    assert metrics.dormant_mask(h).tolist() == [True, False, False, False, False, False]


def test_feature_metrics_judge_a_fourier_layer_by_saturation() -> None:
    th.manual_seed(0)
    policy = DQNPolicy(BOX, DISCRETE, LR, activation="fourier", net_arch=[8])
    obs = th.randn(64, 4) * 3
    post = policy.hidden_features(obs)["q_net"]["layer0"].post
    values = feature_metrics(policy, obs)
    expected = 1 - float((post.abs() > 0.99).float().mean())
    assert 0.0 < expected < 1.0
    assert values[metric_name("q_net", "layer0", "fau")] == pytest.approx(expected)
    assert values[metric_name("q_net", "all", "fau")] == pytest.approx(expected)


# --- ReDo -------------------------------------------------------------------------------------------


def _zero_rows(layer: nn.Linear, units: th.Tensor) -> None:
    with th.no_grad():
        layer.weight[units] = 0.0
        layer.bias[units] = 0.0


@pytest.mark.parametrize("activation", ["crelu", "fourier"])
def test_a_zeroed_unit_is_dormant_behind_crelu_but_not_behind_fourier(
    activation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = crl.DQN(
        "MlpPolicy", "CartPole-v1", policy_kwargs=dict(activation=activation, net_arch=[16, 16]), **DQN_KWARGS
    )
    model.learn(200)
    q = model.q_net.q_net
    units = th.arange(3)
    _zero_rows(q[0], units)
    probe = th.as_tensor(model.replay_buffer.observations[:128, 0])
    monkeypatch.setattr("crl.interventions.redo.probe_batch", lambda algo, size: (probe, None))
    layers = unit_layers(model.policy)
    assert [layer.halves for layer in layers] == [2, 2]
    post = model.policy.hidden_features(probe)["q_net"]["layer0"].post
    assert th.all(post[:, units] == 0)  # relu(0), sin(0)
    assert th.all(post[:, units + 16] == (0.0 if activation == "crelu" else 1.0))  # relu(-0), cos(0)
    dormant = ReDo(tau=0.1).dormant_units(model, layers)[0]
    assert bool(dormant[units].all()) is (activation == "crelu")
    if activation == "fourier":
        assert not bool(dormant.any())


def test_redo_recycles_a_fourier_unit_and_zeroes_both_outgoing_column_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    model = crl.DQN(
        "MlpPolicy", "CartPole-v1", policy_kwargs=dict(activation="fourier", net_arch=[16, 16]), **DQN_KWARGS
    )
    model.learn(300)
    q, target = model.q_net.q_net, model.q_net_target.q_net
    first, second = q[0], q[2]
    units = th.tensor([1, 4])
    columns = th.tensor([1, 4, 17, 20])  # unit i owns channels i (sine) and i + 16 (cosine)
    other_rows = th.tensor([i for i in range(16) if i not in units.tolist()])
    other_columns = th.tensor([i for i in range(32) if i not in columns.tolist()])
    layers = unit_layers(model.policy)
    assert layers[0].halves == 2 and sorted(layers[0].columns(second, units).tolist()) == columns.tolist()

    def chosen(self, algo, found):
        return [th.isin(th.arange(16), units), th.zeros(16, dtype=th.bool)]

    monkeypatch.setattr(ReDo, "dormant_units", chosen)
    before, optimizer_state = _snapshot(q), model.policy.optimizer.state
    assert th.all(second.weight[:, columns] != 0)
    recycled = ReDo(tau=0.1).recycle(model)

    assert recycled == 2
    assert th.all(second.weight[:, columns] == 0)  # both blocks of each recycled unit
    assert th.equal(second.weight[:, other_columns], before["2.weight"][:, other_columns])
    assert th.all(first.bias[units] == 0) and not th.equal(first.weight[units], before["0.weight"][units])
    assert th.equal(first.weight[other_rows], before["0.weight"][other_rows])
    assert th.equal(q[4].weight, before["4.weight"])  # layer1 kept all its units
    for key in ("exp_avg", "exp_avg_sq"):
        assert th.all(optimizer_state[second.weight][key][:, columns] == 0)
        assert th.all(optimizer_state[first.weight][key][units] == 0)
    assert th.equal(target[2].weight[:, columns], second.weight[:, columns])
    assert th.equal(target[0].weight[units], first.weight[units])
    assert model.logger.name_to_value["interventions/redo/recycled"] == 2

    model.learn(100, reset_num_timesteps=False)
    assert th.all(second.weight[:, columns].abs().sum(dim=0) > 0)  # the recycled unit trains again
