"""crl's QR-DQN: bitwise sb3-contrib's without interventions, crl's policy options, hooks, interventions, metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import sb3_contrib
import torch as th
from gymnasium import spaces
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.utils import ConstantSchedule
from test_metrics_monitor import _Recorder
from test_sb3_equivalence import _Observer, assert_same_training
from torch import nn

import crl
from crl.algorithms.qrdqn import QRDQN
from crl.hooks import GradientStep
from crl.interventions import (
    AdaptiveReplayRatio,
    InterventionError,
    LayerNorm,
    PlasticityInjection,
    ReDo,
    Reset,
    ShrinkPerturb,
    WeightDecay,
)
from crl.interventions.network import fresh_policy
from crl.metrics.functions import unit_scores
from crl.policies.layers import InjectedHead
from crl.policies.qrdqn import CnnPolicy, QRDQNPolicy

# 25 quantiles instead of 200: the pairwise quantile Huber loss of 200 is most of a run's time.
N_QUANTILES = 25
# Many updates in a short run (750 in 2,000 steps), with target updates among them.
EQUIVALENCE = dict(
    learning_starts=500,
    train_freq=4,
    gradient_steps=2,
    target_update_interval=250,
    batch_size=32,
    policy_kwargs=dict(n_quantiles=N_QUANTILES),
)
EQUIVALENCE_STEPS = 2000
# Short runs for interventions: an update per step, and a target network that lags (no update in 1,000 steps).
SHORT = dict(learning_starts=100, train_freq=1, target_update_interval=1000, seed=0, device="cpu")
BOX = spaces.Box(-1.0, 1.0, (4,), np.float32)
IMAGE = spaces.Box(0, 255, (1, 36, 36), np.uint8)
DISCRETE = spaces.Discrete(3)
LR = ConstantSchedule(1e-3)
HEAD = "quantile_net.quantile_net.4"


def _equivalence_run(
    algo_class: type, env: Any = "CartPole-v1", steps: int = EQUIVALENCE_STEPS, policy: str = "MlpPolicy", **extra: Any
):
    kwargs = {**EQUIVALENCE, **extra}
    model = algo_class(policy, env, seed=3, device="cpu", **kwargs)
    model.learn(steps)
    return model


def _short_run(interventions: list | None = None, steps: int = 300, **extra: Any) -> QRDQN:
    extra["policy_kwargs"] = {"n_quantiles": N_QUANTILES, **extra.get("policy_kwargs", {})}
    model = QRDQN("MlpPolicy", "CartPole-v1", interventions=interventions, **SHORT, **extra)
    model.learn(steps)
    return model


def _snapshot(module: nn.Module) -> dict[str, th.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def _fresh_with_seed(policy: nn.Module, seed: int) -> dict[str, th.Tensor]:
    th.manual_seed(seed)
    return dict(fresh_policy(policy).named_parameters())  # type: ignore[arg-type]


def _state(model: QRDQN, param: th.Tensor) -> dict[str, th.Tensor]:
    return model.policy.optimizer.state[param]


def _layer_types(stack: nn.Sequential) -> list[type[nn.Module]]:
    return [type(module) for module in stack]


@pytest.mark.parametrize("max_grad_norm", [None, 10.0])
def test_identical_to_sb3_contrib_without_interventions(max_grad_norm: float | None) -> None:
    """sb3-contrib clips the gradient only with a max_grad_norm; both settings train bitwise alike."""
    reference = _equivalence_run(sb3_contrib.QRDQN, max_grad_norm=max_grad_norm)
    candidate = _equivalence_run(QRDQN, max_grad_norm=max_grad_norm)
    assert candidate._n_updates == 750
    assert_same_training(reference, candidate)
    assert reference.logger.name_to_value["train/loss"] == candidate.logger.name_to_value["train/loss"]


def test_cnn_policy_is_identical_to_sb3_contribs(image_env) -> None:
    kwargs = dict(learning_starts=100, train_freq=4, target_update_interval=50, buffer_size=1000)
    runs = [
        _equivalence_run(algo_class, image_env((36, 36, 1)), steps=300, policy="CnnPolicy", **kwargs)
        for algo_class in (sb3_contrib.QRDQN, QRDQN)
    ]
    assert_same_training(*runs)
    assert isinstance(runs[1].policy, CnnPolicy) and runs[1]._n_updates == 100


class _LayerObserver(_Observer):
    """The observer of the SB3 equivalence tests, also noting every recorded layer as ``network/layer``."""

    def auxiliary_loss(self, algo, step: GradientStep):
        self._feature_keys.update(f"{network}/{layer}" for network, layers in step.features.items() for layer in layers)
        return super().auxiliary_loss(algo, step)


def test_observing_hooks_change_nothing_and_record_the_quantile_network() -> None:
    reference = _equivalence_run(sb3_contrib.QRDQN, max_grad_norm=10.0)
    observer = _LayerObserver()
    candidate = _equivalence_run(QRDQN, max_grad_norm=10.0, interventions=[observer])
    assert_same_training(reference, candidate)

    assert observer._calls["on_step"] == EQUIVALENCE_STEPS
    n_steps = observer._calls["before_gradient_step"]
    assert n_steps == candidate._n_updates == 750
    assert observer._calls["on_train_start"] == 375
    assert observer._calls["auxiliary_loss/quantile_net"] == n_steps
    assert observer._calls["after_optimizer_step/quantile_net"] == n_steps
    assert observer._feature_keys == {"quantile_net", "quantile_net/layer0", "quantile_net/layer1"}
    assert len(observer._grad_norms) == n_steps and all(norm > 0 for norm in observer._grad_norms)


@pytest.mark.parametrize("option", ["policy_kwargs", "intervention"])
def test_layer_norm_goes_into_the_quantile_network_and_its_target(option: str) -> None:
    if option == "policy_kwargs":
        model = _short_run(steps=200, policy_kwargs=dict(layer_norm="pre"))
    else:
        model = _short_run([LayerNorm()], steps=200)
    online, target = model.policy.quantile_net.quantile_net, model.policy.quantile_net_target.quantile_net
    expected = [nn.Linear, nn.LayerNorm, nn.ReLU] * 2 + [nn.Linear]
    assert _layer_types(online) == _layer_types(target) == expected
    assert model.policy.architecture.layer_norm == "pre"
    # trained: the LayerNorm's affine parameters moved from their initial (1, 0)
    assert not th.equal(online[1].weight, th.ones(64)) and not th.equal(online[1].bias, th.zeros(64))
    layers = model.policy.hidden_layers()["quantile_net"]
    assert [layer.name for layer in layers] == ["layer0", "layer1"]


def test_architecture_options_on_the_cnn_and_crelu() -> None:
    cnn = CnnPolicy(IMAGE, DISCRETE, LR, n_quantiles=5, layer_norm="post")
    norms = [m for m in cnn.quantile_net.features_extractor.modules() if isinstance(m, nn.LayerNorm)]
    assert [tuple(norm.normalized_shape) for norm in norms] == [(32, 8, 8), (64, 3, 3), (64, 1, 1), (512,)]
    assert len([m for m in cnn.quantile_net_target.modules() if isinstance(m, nn.LayerNorm)]) == 4
    assert cnn.quantile_net(th.zeros(2, *IMAGE.shape)).shape == (2, 5, 3)

    crelu = QRDQNPolicy(BOX, DISCRETE, LR, n_quantiles=5, activation="crelu")
    stack = crelu.quantile_net.quantile_net
    assert [layer.in_features for layer in stack if isinstance(layer, nn.Linear)] == [4, 128, 128]
    features = crelu.hidden_features(th.zeros(8, 4))["quantile_net"]
    assert features["layer1"].post.shape == (8, 128)


def test_save_and_load_keep_parameters_and_interventions(tmp_path: Path) -> None:
    model = _short_run([LayerNorm(), ReDo(every=100)], steps=300)
    redo = model.interventions[1]
    assert redo._checks_done == 3
    model.save(tmp_path / "qrdqn.zip")

    loaded = crl.QRDQN.load(tmp_path / "qrdqn.zip", env=model.get_env(), device="cpu")
    assert type(loaded) is QRDQN and type(loaded.policy) is QRDQNPolicy
    assert_same_training(model, loaded)
    assert repr(loaded.interventions) == repr(model.interventions)
    assert loaded.interventions[1]._checks_done == 3 and loaded.interventions[1] is not redo
    assert loaded.quantile_net is loaded.policy.quantile_net
    obs = model.replay_buffer.observations[:16, 0]
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])
    loaded.learn(100, reset_num_timesteps=False)
    assert loaded.interventions[1]._checks_done == 4


def test_two_hot_is_refused_with_the_reason() -> None:
    two_hot = dict(low=-10.0, high=10.0, bins=51)
    message = r"policy option two_hot=\{.*'bins': 51.*\} is not supported by QR-DQN: .*distribution over returns"
    with pytest.raises(ValueError, match=message):
        QRDQN("MlpPolicy", "CartPole-v1", policy_kwargs=dict(two_hot=two_hot))
    with pytest.raises(ValueError, match=message):
        QRDQNPolicy(BOX, DISCRETE, LR, two_hot=two_hot)


def test_training_losses_is_the_loss_train_minimises() -> None:
    """The Hessian metric's loss: on the batch train() draws, the loss it logs; nothing is updated."""
    model = _short_run(steps=150)
    np.random.seed(1)
    batch = model.replay_buffer.sample(32)  # the draw of train()'s next batch
    parameters = _snapshot(model.policy)
    losses = model.training_losses(batch)
    assert list(losses) == ["quantile_net"]
    loss, optimizer = losses["quantile_net"]
    assert optimizer is model.policy.optimizer and loss.requires_grad
    assert all(th.equal(p, parameters[n]) for n, p in model.policy.named_parameters())
    np.random.seed(1)
    model.train(gradient_steps=1, batch_size=32)
    assert model.logger.name_to_value["train/loss"] == loss.item()


# Interventions on QR-DQN: they find the quantile network and keep its target consistent.


def _kill_units(layer: nn.Linear, units: th.Tensor) -> None:
    """Make units that never fire: zero weights and a negative bias."""
    with th.no_grad():
        layer.weight[units] = 0.0
        layer.bias[units] = -1.0


def test_redo_recycles_dormant_units_and_syncs_the_target(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _short_run()
    online, target = model.policy.quantile_net.quantile_net, model.policy.quantile_net_target.quantile_net
    _kill_units(online[0], th.arange(5))
    probe = th.as_tensor(model.replay_buffer.observations[:256, 0])
    monkeypatch.setattr("crl.interventions.redo.probe_batch", lambda algo, size: (probe, None))
    features = model.policy.hidden_features(probe)["quantile_net"]
    recycled = th.nonzero(unit_scores(features["layer0"].post) <= 0.1).flatten()
    downstream = unit_scores(features["layer1"].post) <= 0.1
    other = th.tensor([i for i in range(64) if i not in recycled.tolist()])
    assert set(range(5)) <= set(recycled.tolist())
    target_before = _snapshot(target)
    fresh = _fresh_with_seed(model.policy, 7)

    th.manual_seed(7)
    assert ReDo(tau=0.1).recycle(model) == len(recycled) + int(downstream.sum())

    assert th.equal(online[0].weight[recycled], fresh["quantile_net.quantile_net.0.weight"][recycled])
    assert th.all(online[0].bias[recycled] == 0)
    # outgoing weights are zero, except in rows of downstream units that got fresh incoming weights
    assert th.all(online[2].weight[~downstream][:, recycled] == 0)
    assert th.all(_state(model, online[0].weight)["exp_avg"][recycled] == 0)
    # the target network gets the recycled entries and keeps its lagging values elsewhere
    assert th.equal(target[0].weight[recycled], online[0].weight[recycled])
    assert th.equal(target[0].weight[other], target_before["0.weight"][other])
    assert not th.equal(target[0].weight[other], online[0].weight[other])

    recycled_in = online[0].weight[recycled].clone()
    model.learn(100, reset_num_timesteps=False)
    assert not th.equal(online[0].weight[recycled], recycled_in)


def test_head_reset_reinitialises_the_quantile_head_and_its_target() -> None:
    model = _short_run()
    online, target = model.policy.quantile_net.quantile_net, model.policy.quantile_net_target.quantile_net
    assert online[4].out_features == N_QUANTILES * 2
    before = _snapshot(online)
    fresh = _fresh_with_seed(model.policy, 5)
    th.manual_seed(5)
    Reset(parts="head").apply(model, "test")
    assert th.equal(online[4].weight, fresh[f"{HEAD}.weight"]) and th.equal(online[4].bias, fresh[f"{HEAD}.bias"])
    assert online[4].weight not in model.policy.optimizer.state
    assert th.equal(online[0].weight, before["0.weight"]) and th.equal(online[2].weight, before["2.weight"])
    assert th.equal(target[4].weight, online[4].weight) and th.equal(target[4].bias, online[4].bias)
    assert not th.equal(target[0].weight, online[0].weight)  # the encoder's target still lags
    reset = online[4].weight.clone()
    model.learn(100, reset_num_timesteps=False)
    assert not th.equal(online[4].weight, reset)
    assert float(_state(model, online[4].weight)["step"]) == 100.0


def test_shrink_perturb_mixes_a_fresh_init_and_syncs_the_target() -> None:
    model = _short_run()
    online, target = model.policy.quantile_net, model.policy.quantile_net_target
    before = _snapshot(online)
    fresh = _fresh_with_seed(model.policy, 9)
    th.manual_seed(9)
    ShrinkPerturb(shrink=0.4, perturb=0.3).apply(model, "test")
    targets = dict(target.named_parameters())
    for name, param in online.named_parameters():
        expected = 0.4 * before[name] + 0.3 * fresh[f"quantile_net.{name}"]
        th.testing.assert_close(param, expected, rtol=0, atol=1e-7)
        assert th.equal(targets[name], param)
        assert param not in model.policy.optimizer.state
    shrunk = _snapshot(online)
    model.learn(50, reset_num_timesteps=False)
    assert all(not th.equal(p, shrunk[n]) for n, p in online.named_parameters())


def test_weight_decay_decays_the_quantile_network_before_each_update() -> None:
    decay = WeightDecay(weight_decay=0.1)
    model = _short_run([decay], steps=150)
    plain = _short_run(steps=150)
    first_layer = model.policy.quantile_net.quantile_net[0]
    assert not th.equal(first_layer.weight, plain.policy.quantile_net.quantile_net[0].weight)

    for param in model.policy.parameters():
        param.grad = th.ones_like(param)
    before = _snapshot(model.policy)
    decay.after_backward(model, GradientStep(index=0, batch=None, optimizer=model.policy.optimizer))
    lr = model.policy.optimizer.param_groups[0]["lr"]
    for name, param in model.policy.named_parameters():
        factor = 1.0 if name.startswith("quantile_net_target.") else 1.0 - lr * 0.1
        assert th.equal(param, before[name] * factor), name


def test_plasticity_injection_keeps_the_quantiles_and_trains_the_new_head() -> None:
    model = _short_run()
    obs = th.as_tensor(model.replay_buffer.observations[:32, 0])
    expected = [model.quantile_net(obs), model.quantile_net_target(obs)]
    trainable = sum(p.numel() for p in model.policy.parameters() if p.requires_grad)
    PlasticityInjection(at_step=1).inject(model)

    head = model.policy.get_submodule(HEAD)
    assert isinstance(head, InjectedHead)
    target_head = HEAD.replace("quantile_net.", "quantile_net_target.", 1)
    assert isinstance(model.policy.get_submodule(target_head), InjectedHead)
    for before, after in zip(expected, [model.quantile_net(obs), model.quantile_net_target(obs)], strict=True):
        assert th.equal(before, after)
    assert sum(p.numel() for p in model.policy.parameters() if p.requires_grad) == trainable
    registered = {p for group in model.policy.optimizer.param_groups for p in group["params"]}
    assert all(p in registered for p in head.new.parameters())
    old, new = _snapshot(head.old), _snapshot(head.new)
    model.learn(100, reset_num_timesteps=False)
    assert all(not th.equal(p, new[n]) for n, p in head.new.named_parameters())
    assert all(th.equal(p, old[n]) for n, p in head.old.named_parameters())


def test_plasticity_injection_at_a_step_during_training() -> None:
    injection = PlasticityInjection(at_step=200)
    model = _short_run([injection], steps=300)
    assert injection._injected
    head = model.policy.get_submodule(HEAD)
    assert isinstance(head, InjectedHead)
    # injected after the train() at step 200: the new head trained from then on, its frozen copy did not
    assert not th.equal(head.new.weight, head.new_frozen.weight)


def test_adaptive_replay_ratio_switches_on_the_quantile_networks_fau() -> None:
    switch = AdaptiveReplayRatio(check_every=2, gap=1.0)  # FAU always within 1.0: switch at the 2nd check
    model = _short_run([switch], steps=600)
    assert switch._switch_check == 2
    assert 0.0 < model.logger.name_to_value["interventions/adaptive_replay_ratio/fau"] <= 1.0
    assert (model.gradient_steps, model.train_freq.frequency) == (2, 1)


def test_metrics_monitor_measures_the_quantile_network_without_changing_training() -> None:
    metrics = dict(every=500, plasticity_probe_every=1000, hessian_every=1000, grama_every=1000, probe_batch_size=256)
    kwargs = dict(learning_starts=200, train_freq=4, target_update_interval=250, seed=3, device="cpu")
    policy_kwargs = dict(n_quantiles=N_QUANTILES)
    reference = QRDQN("MlpPolicy", "CartPole-v1", policy_kwargs=policy_kwargs, **kwargs)
    reference.learn(1000)
    monitored = QRDQN("MlpPolicy", "CartPole-v1", policy_kwargs=policy_kwargs, metrics=metrics, **kwargs)
    recorder = _Recorder()
    monitored.set_logger(Logger(folder=None, output_formats=[recorder]))
    monitored.learn(1000)
    assert_same_training(reference, monitored)

    logged = {key for dump in recorder.dumps for key in dump}
    layer_metrics = (
        "srank",
        "effective_rank",
        "pca_rank",
        "feature_rank",
        "dormant_ratio",
        "dead_units",
        "fau",
        "grama_ratio",
    )
    network_metrics = (
        "dormant_ratio",
        "dead_units",
        "fau",
        "weight_magnitude",
        "weight_change",
        "plasticity_probe",
        "grama_ratio",
    )
    expected = {f"plasticity/quantile_net/{layer}/{m}" for layer in ("layer0", "layer1") for m in layer_metrics}
    expected |= {f"plasticity/quantile_net/all/{m}" for m in (*network_metrics, "grad_norm", "hessian_top_eig")}
    expected |= {f"plasticity/quantile_net/penultimate/{m}" for m in ("srank", "feature_norm")}
    assert expected <= logged, sorted(expected - logged)
    assert not any(key.startswith("plasticity/") and "/quantile_net/" not in key for key in logged)
    values = monitored.metrics_monitor.latest
    assert all(np.isfinite(value) for value in values.values())
    assert values["plasticity/quantile_net/all/grad_norm"] > 0
    assert values["plasticity/quantile_net/all/plasticity_probe"] >= 0


def test_an_intervention_for_another_family_is_refused() -> None:
    with pytest.raises(InterventionError, match=r"'pfo' does not apply to QRDQN; it supports \['PPO'\]"):
        QRDQN("MlpPolicy", gym.make("CartPole-v1"), interventions=["pfo"])
