"""crl.metrics.evaluate: the suite of a (saved) model on given observations, under the logged names."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch as th

import crl
from crl.metrics import evaluate


def _forced_dqn() -> crl.DQN:
    """A DQN whose 8-unit hidden layers have constant units, some of them dead, fixed by hand.

    layer0: units 0-2 have pre-activation -1 (dead), units 3-7 have +1.
    layer1: units 0-3 have pre-activation -1 (dead), units 4-7 have +2. The output layer is zero.
    """
    model = crl.DQN("MlpPolicy", "CartPole-v1", seed=0, policy_kwargs=dict(net_arch=[8, 8]))
    first, second, out = (m for m in model.q_net.q_net if isinstance(m, th.nn.Linear))
    with th.no_grad():
        for layer in (first, second, out):
            layer.weight.zero_()
            layer.bias.zero_()
        first.bias.copy_(th.tensor([-1.0] * 3 + [1.0] * 5))
        second.bias.copy_(th.tensor([-1.0] * 4 + [2.0] * 4))
    return model


def test_units_forced_dead() -> None:
    model = _forced_dqn()
    obs = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    values = evaluate(model, obs)
    name = "plasticity/q_net/{}/{}".format

    assert values[name("layer0", "dead_units")] == pytest.approx(3 / 8)
    assert values[name("layer1", "dead_units")] == pytest.approx(4 / 8)
    assert values[name("all", "dead_units")] == pytest.approx(7 / 16)
    # Live units have equal scores (1.6 and 2.0 times the layer mean): only the dead ones are dormant.
    assert values[name("layer0", "dormant_ratio")] == pytest.approx(3 / 8)
    assert values[name("all", "dormant_ratio")] == pytest.approx(7 / 16)
    assert values[name("layer1", "fau")] == pytest.approx(4 / 8)
    assert values[name("all", "fau")] == pytest.approx(9 / 16)
    # Every sample has the same features: rank 1 in each layer.
    for metric in ("srank", "pca_rank", "feature_rank"):
        assert values[name("layer1", metric)] == 1
    assert values[name("layer0", "effective_rank")] == pytest.approx(1.0, abs=1e-4)
    assert values[name("layer0", "feature_norm")] == pytest.approx(math.sqrt(5))
    assert values[name("layer1", "feature_norm")] == pytest.approx(4.0)  # |(0,0,0,0,2,2,2,2)|
    assert values[name("penultimate", "feature_norm")] == pytest.approx(math.sqrt(4 + 16))  # pre: -1 x4, 2 x4
    assert values[name("penultimate", "srank")] == values[name("penultimate", "feature_rank")] == 1
    # 130 parameters (40 + 72 + 18); squared sum 3 + 5 + 4 + 16 = 28
    assert values[name("all", "weight_magnitude")] == pytest.approx(math.sqrt(28 / 130))
    assert not any(
        key.endswith(("weight_change", "grad_norm", "hessian_top_eig", "plasticity_probe")) for key in values
    )


def test_same_values_after_save_and_load(tmp_path: Path) -> None:
    model = crl.PPO("MlpPolicy", "CartPole-v1", seed=0, n_steps=64, batch_size=32)
    model.learn(64)
    obs = np.stack([model.observation_space.sample() for _ in range(50)])
    before = evaluate(model, obs)
    model.save(tmp_path / "ppo.zip")
    after = evaluate(crl.PPO.load(tmp_path / "ppo.zip"), obs)
    assert after == before
    assert {key.split("/")[1] for key in before} == {"actor", "critic"}


def test_evaluate_matches_the_monitor_and_leaves_the_model_alone() -> None:
    """On the probe batch, evaluate gives what the monitor logged at the last measurement."""
    model = crl.SAC(
        "MlpPolicy",
        "Pendulum-v1",
        seed=2,
        learning_starts=100,
        policy_kwargs=dict(net_arch=[16, 16]),
        metrics={"every": 100, "plasticity_probe_every": 300, "probe_batch_size": 128},
    )
    model.learn(300)  # the last measurement is at the last train(), after which no weight moves
    monitor = model.metrics_monitor
    assert monitor is not None and monitor.latest_timesteps == 300
    model.policy.set_training_mode(True)
    state = {key: value.clone() for key, value in model.policy.state_dict().items()}
    batch = monitor.probe_batch
    # the plasticity probe's fresh network and minibatches come from the model's seed, as in training
    values = evaluate(model, batch.observations, batch.actions, plasticity_probe=True)
    assert values == {key: value for key, value in monitor.latest.items() if key in values}
    # 3 networks x (2 layers x 8 metrics + 3 pooled + 5 penultimate + weights + plasticity probe)
    assert len(values) == 3 * (2 * 8 + 3 + 5 + 1 + 1)
    assert model.policy.training
    assert all(th.equal(value, state[key]) for key, value in model.policy.state_dict().items())


def test_sac_critics_default_to_the_actors_actions() -> None:
    model = crl.SAC("MlpPolicy", "Pendulum-v1", seed=0, policy_kwargs=dict(net_arch=[8]))
    obs = np.stack([model.observation_space.sample() for _ in range(20)])
    with th.no_grad():
        actions = model.actor(th.as_tensor(obs), deterministic=True)
    assert evaluate(model, obs) == evaluate(model, obs, actions)
    assert evaluate(model, obs) != evaluate(model, obs, -actions)


def test_float64_actions_are_cast_like_observations() -> None:
    model = crl.SAC("MlpPolicy", "Pendulum-v1", seed=0, policy_kwargs=dict(net_arch=[8]))
    rng = np.random.default_rng(0)
    obs = rng.uniform(-1, 1, (16, 3))  # float64, as numpy draws them
    actions = rng.uniform(-1, 1, (16, 1))
    values = evaluate(model, obs, actions, plasticity_probe=True)
    assert values == evaluate(model, obs, actions.astype(np.float32), plasticity_probe=True)


def test_a_diverged_layer_is_measured_as_nan_with_a_warning() -> None:
    model = crl.DQN("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[8, 8]), seed=0)
    with th.no_grad():
        model.q_net.q_net[2].weight[0, 0] = float("nan")  # the second hidden layer's first unit
    observations = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    with pytest.warns(RuntimeWarning, match=r"features of q_net/layer1 .* not all finite"):
        values = evaluate(model, observations)
    layer_metrics = ["srank", "effective_rank", "pca_rank", "feature_rank", "dormant_ratio", "dead_units", "fau"]
    assert all(math.isnan(values[f"plasticity/q_net/layer1/{name}"]) for name in layer_metrics)
    assert all(math.isnan(values[f"plasticity/q_net/all/{name}"]) for name in ["dormant_ratio", "dead_units", "fau"])
    assert values["plasticity/q_net/layer0/srank"] >= 1  # the layer before is measured as usual


def test_batches_not_shaped_like_their_space_are_refused_with_the_expected_shape() -> None:
    model = crl.SAC("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(net_arch=[8]), seed=0)
    observations = np.zeros((3, 3), np.float32)
    cases = [
        (np.zeros(3, np.float32), None, r"observations must have the shape \(N, 3\) with N >= 1 .*got \(3,\)"),
        (np.zeros((0, 3), np.float32), None, r"observations must have the shape \(N, 3\) with N >= 1 .*got \(0, 3\)"),
        (np.zeros((3, 4), np.float32), None, r"observations must have the shape \(N, 3\) .*got \(3, 4\)"),
        (observations, np.zeros((2, 1)), r"actions must have the shape \(N, 1\) with N = 3, the number of observ"),
    ]
    for obs, actions, message in cases:
        with pytest.raises(ValueError, match=message):
            evaluate(model, obs, actions)
    assert "plasticity/qf0/layer0/srank" in evaluate(model, observations, np.zeros((3, 1)))
