"""GraMa (gradient-magnitude unit scores) and ReGraMa (recycling the units it finds), Liu et al. 2025."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch as th
from test_interventions_reinit import _fresh_with_seed, _kill_units, _snapshot, _state

import crl
from crl.interventions import InterventionError, ReDo, ReGraMa
from crl.interventions.network import unit_layers, weight_of
from crl.metrics import MetricsConfig, MetricsMonitor
from crl.metrics.functions import gradient_scores, unit_scores
from crl.metrics.grama import grama_metrics, unit_gradient_scores
from crl.metrics.probe_batch import draw_probe_batch

KWARGS = dict(learning_starts=100, train_freq=1, target_update_interval=1000, seed=0)


def test_gradient_scores_of_constructed_gradients() -> None:
    linear = th.tensor([[1.0, -1.0], [0.0, 0.0], [2.0, -4.0]])  # mean |g| per unit: 1, 0, 3; layer mean 4/3
    assert th.allclose(gradient_scores(linear), th.tensor([0.75, 0.0, 2.25]))
    conv = th.zeros(2, 3, 2, 2)
    conv[0] = 1.0
    conv[1, 0, 0, 0] = -12.0  # both channels: mean |g| = 1 over their 12 entries
    assert th.allclose(gradient_scores(conv), th.ones(2))
    assert th.equal(gradient_scores(th.zeros(4, 3)), th.zeros(4))  # no gradient at all: every unit inactive
    with pytest.raises(ValueError, match=r"units and inputs, got shape \(3,\)"):
        gradient_scores(th.ones(3))


def _silence_outgoing(layer: th.nn.Linear, units: th.Tensor) -> None:
    """Units that still fire but whose output nothing reads: no gradient reaches them."""
    with th.no_grad():
        layer.weight[:, units] = 0.0


def _trained_dqn(interventions: list | None = None) -> crl.DQN:
    model = crl.DQN("MlpPolicy", "CartPole-v1", interventions=interventions, **KWARGS)
    model.learn(300)
    return model


def _backward_scores(model: crl.DQN, batch) -> list[th.Tensor]:
    """The GraMa scores of the q-network's hidden layers from a plain ``backward()`` of the training loss."""
    model.policy.set_training_mode(False)
    ((loss, _),) = model.training_losses(batch).values()
    model.policy.optimizer.zero_grad()
    loss.backward()
    q = model.policy.q_net.q_net
    scores = [gradient_scores(q[0].weight.grad), gradient_scores(q[2].weight.grad)]
    model.policy.optimizer.zero_grad()
    return scores


def test_unit_gradient_scores_are_those_of_the_training_loss_and_see_silenced_units() -> None:
    model = _trained_dqn()
    q = model.policy.q_net.q_net
    _kill_units(q[0], th.arange(3))  # dead: no activation, no gradient
    _silence_outgoing(q[2], th.tensor([10, 11]))  # alive, but nothing downstream reads them
    batch = draw_probe_batch(model, 256, seed=1)
    layers = unit_layers(model.policy)
    rng_before, mode_before = th.random.get_rng_state(), model.policy.training
    grads_before = [weight_of(layer.incoming).grad.clone() for layer in layers]

    scores = unit_gradient_scores(model, batch, layers, seed=5)

    assert th.equal(th.random.get_rng_state(), rng_before) and model.policy.training == mode_before
    for layer, grad in zip(layers, grads_before, strict=True):  # training's .grad untouched
        assert th.equal(weight_of(layer.incoming).grad, grad)
    for ours, by_backward in zip(scores, _backward_scores(model, batch), strict=True):
        assert th.allclose(ours, by_backward, rtol=1e-6, atol=0.0)
    assert th.all(scores[0][:3] == 0) and th.all(scores[0][10:12] == 0)
    # ReDo's activation score sees the dead units, not the silenced ones
    activity = unit_scores(model.policy.hidden_features(batch.observations)["q_net"]["layer0"].post)
    assert th.all(activity[:3] == 0) and th.all(activity[10:12] > 0.1)


def test_sac_scores_each_network_with_the_loss_that_trains_it() -> None:
    model = crl.SAC(
        "MlpPolicy", "Pendulum-v1", learning_starts=64, batch_size=32, seed=0, policy_kwargs=dict(net_arch=[16, 16])
    )
    model.learn(96)
    batch = draw_probe_batch(model, 64, seed=1)
    layers = unit_layers(model.policy)
    scores = dict(
        zip(
            [(layer.network, layer.name) for layer in layers],
            unit_gradient_scores(model, batch, layers, seed=3),
            strict=True,
        )
    )
    with th.random.fork_rng(devices=[]):
        th.manual_seed(3)
        model.policy.set_training_mode(False)
        losses = model.training_losses(batch)
    for layer in layers:
        loss_name = "actor" if layer.network == "actor" else "critic"
        (gradient,) = th.autograd.grad(losses[loss_name][0], [weight_of(layer.incoming)], retain_graph=True)
        assert th.allclose(scores[layer.network, layer.name], gradient_scores(gradient), rtol=1e-6, atol=0.0)
    assert {network for network, _ in scores} == {"actor", "qf0", "qf1"}


def test_grama_ratio_counts_the_units_at_or_below_tau() -> None:
    model = _trained_dqn()
    q = model.policy.q_net.q_net
    _kill_units(q[0], th.arange(6))
    _silence_outgoing(q[2], th.arange(6, 16))  # layer0: 16 of 64 units get no gradient
    batch = draw_probe_batch(model, 256, seed=1)
    first, second = _backward_scores(model, batch)
    values = grama_metrics(model, batch, tau=0.01, seed=0)
    expected_first, expected_second = int((first <= 0.01).sum()), int((second <= 0.01).sum())
    assert expected_first >= 16
    assert values["plasticity/q_net/layer0/grama_ratio"] == expected_first / 64
    assert values["plasticity/q_net/layer1/grama_ratio"] == expected_second / 64
    assert values["plasticity/q_net/all/grama_ratio"] == (expected_first + expected_second) / 128
    assert grama_metrics(model, batch, tau=1e9, seed=0)["plasticity/q_net/all/grama_ratio"] == 1.0


def test_the_monitor_logs_grama_on_its_cadence_only() -> None:
    model = crl.DQN(
        "MlpPolicy", "CartPole-v1", metrics={"every": 100, "grama_every": 300, "probe_batch_size": 64}, **KWARGS
    )
    monitor = model.metrics_monitor
    measure = monitor.measure
    measured: list[tuple[int, bool]] = []

    def recorded(algo):
        values = measure(algo)
        measured.append((algo.lifetime_timesteps, "plasticity/q_net/all/grama_ratio" in values))
        return values

    monitor.measure = recorded
    model.learn(700)
    assert measured == [(101, True), (200, False), (300, True), (400, False), (500, False), (600, True), (700, False)]
    off = crl.DQN("MlpPolicy", "CartPole-v1", metrics={"every": 100, "probe_batch_size": 64}, **KWARGS)
    off.learn(200)
    assert not any("grama" in key for key in off.metrics_monitor.latest)


def test_a_monitor_pickled_before_grama_existed_loads_with_it_off() -> None:
    monitor = MetricsMonitor(MetricsConfig(every=50, hessian_every=100))
    del monitor._grama
    for field in ("grama_every", "grama_tau"):
        del monitor.config.__dict__[field]
    loaded = pickle.loads(pickle.dumps(monitor))
    assert loaded.config == MetricsConfig(every=50, hessian_every=100)
    assert loaded._grama.every is None and loaded._hessian.every == 100


def test_regrama_recycles_the_units_that_get_no_gradient_and_they_train_again(monkeypatch) -> None:
    model = _trained_dqn()
    q, target = model.policy.q_net.q_net, model.policy.q_net_target.q_net
    _silence_outgoing(q[2], th.arange(4))  # live units of layer0 that stopped learning
    batch = draw_probe_batch(model, 256, seed=1)
    monkeypatch.setattr("crl.interventions.regrama.probe_samples", lambda algo, size: (batch, 0))
    first, second = _backward_scores(model, batch)
    recycled, downstream = (first <= 0.01).nonzero().flatten(), second <= 0.01
    assert set(range(4)) <= set(recycled.tolist())
    before, target_before = _snapshot(q), _snapshot(target)
    fresh = _fresh_with_seed(model.policy, 7)

    th.manual_seed(7)
    assert ReGraMa().recycle(model) == len(recycled) + int(downstream.sum())

    assert th.equal(q[0].weight[recycled], fresh["q_net.q_net.0.weight"][recycled])
    assert th.all(q[0].bias[recycled] == 0)
    assert th.all(q[2].weight[~downstream][:, recycled] == 0)  # downstream recycled rows are fresh
    kept = th.ones(64, dtype=th.bool)
    kept[recycled] = False
    assert th.equal(q[0].weight[kept], before["0.weight"][kept])
    for key in ("exp_avg", "exp_avg_sq"):
        assert th.all(_state(model, q[0].weight)[key][recycled] == 0)
    assert th.equal(target[0].weight[recycled], q[0].weight[recycled])
    assert th.equal(target[0].weight[kept], target_before["0.weight"][kept])
    assert model.logger.name_to_value["interventions/regrama/recycled"] == len(recycled) + int(downstream.sum())

    recycled_in = q[0].weight[recycled].clone()
    model.learn(200, reset_num_timesteps=False)
    assert not th.equal(q[0].weight[recycled], recycled_in)
    assert th.all(q[2].weight[:, recycled].abs().sum(dim=0) > 0)


def test_regrama_at_tau_zero_leaves_the_output_unchanged(monkeypatch) -> None:
    """Units without gradient are dead or unread: recycled with zero outgoing weights, they change nothing."""
    model = _trained_dqn()
    _silence_outgoing(model.policy.q_net.q_net[2], th.arange(4))
    batch = draw_probe_batch(model, 256, seed=1)
    monkeypatch.setattr("crl.interventions.regrama.probe_samples", lambda algo, size: (batch, 0))
    outputs = model.q_net(batch.observations)
    assert ReGraMa(tau=0.0).recycle(model) >= 4
    assert th.equal(model.q_net(batch.observations), outputs)


def test_redo_leaves_the_units_regrama_recycles() -> None:
    """The silenced units fire as before: the activation score keeps them, the gradient score does not."""
    model = _trained_dqn()
    layers = unit_layers(model.policy)[:1]
    active = (~ReDo().dormant_units(model, layers)[0]).nonzero().flatten()[:4]
    _silence_outgoing(model.policy.q_net.q_net[2], active)
    by_activation = ReDo().dormant_units(model, layers)[0]
    by_gradient = ReGraMa().dormant_units(model, layers)[0]
    assert len(active) == 4 and not by_activation[active].any() and by_gradient[active].all()


@pytest.mark.parametrize(
    ("algorithm", "env_id", "kwargs"),
    [
        ("PPO", "CartPole-v1", dict(n_steps=64, batch_size=32, n_epochs=1)),
        ("SAC", "Pendulum-v1", dict(learning_starts=64, batch_size=32)),
    ],
)
def test_regrama_acts_during_training(algorithm: str, env_id: str, kwargs: dict) -> None:
    intervention = {"name": "regrama", "every": 64, "tau": 0.5, "probe_size": 32}
    model = getattr(crl, algorithm)(
        "MlpPolicy", env_id, interventions=[intervention], seed=0, policy_kwargs=dict(net_arch=[16, 16]), **kwargs
    )
    before = _snapshot(model.policy)
    model.learn(192)
    logged = model.logger.name_to_value
    assert logged["interventions/regrama/recycled_total"] > 0
    assert 0 < logged["interventions/regrama/recycled_fraction"] <= 1
    after = _snapshot(model.policy)
    assert all(np.isfinite(value.numpy()).all() for value in after.values())
    assert any(not th.equal(before[key], after[key]) for key in before)


def test_regrama_refuses_a_bad_threshold_and_an_unknown_network() -> None:
    with pytest.raises(
        InterventionError, match=r"intervention 'regrama': parameter tau=-0\.5: .*greater than or equal to 0"
    ):
        crl.DQN("MlpPolicy", "CartPole-v1", interventions=[{"name": "regrama", "tau": -0.5}])
    with pytest.raises(
        InterventionError, match=r"networks=\['critic'\] has \['critic'\]; this policy trains \['q_net'\]"
    ):
        crl.DQN("MlpPolicy", "CartPole-v1", interventions=[{"name": "regrama", "networks": ["critic"]}])


def test_conv_channels_without_gradient_are_found_and_recycled_in_a_shared_cnn(image_env, monkeypatch) -> None:
    model = crl.PPO("CnnPolicy", image_env((36, 36, 1)), n_steps=32, batch_size=32, seed=0)
    model.learn(32)
    cnn = model.policy.features_extractor.cnn
    with th.no_grad():  # channels 0 and 1 of the first conv never fire
        cnn[0].weight[:2] = 0.0
        cnn[0].bias[:2] = -1.0
    batch = draw_probe_batch(model, 32, seed=0)
    layers = unit_layers(model.policy)
    first = next(index for index, layer in enumerate(layers) if layer.incoming is cnn[0])
    scores = unit_gradient_scores(model, batch, layers, seed=0)
    assert th.all(scores[first][:2] == 0) and th.all(scores[first][2:] > 0)
    values = grama_metrics(model, batch, tau=0.0, seed=0)
    assert values["plasticity/actor/layer0/grama_ratio"] == values["plasticity/critic/layer0/grama_ratio"] == 2 / 32

    monkeypatch.setattr("crl.interventions.regrama.probe_samples", lambda algo, size: (batch, 0))
    assert ReGraMa(tau=0.0).recycle(model) >= 2
    assert th.all(cnn[0].bias[:2] == 0) and th.all(cnn[0].weight[:2].abs().sum(dim=(1, 2, 3)) > 0)
    second = next(index for index, layer in enumerate(layers) if layer.incoming is cnn[2])
    kept = scores[second] > 0  # rows of the next conv that were not recycled themselves
    assert kept.any() and th.all(cnn[2].weight[kept][:, :2] == 0)
