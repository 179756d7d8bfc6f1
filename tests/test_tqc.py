"""crl's TQC: bitwise sb3-contrib's TQC without interventions, its policy options, and interventions on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sb3_contrib
import torch as th
from stable_baselines3.common.logger import Logger
from test_metrics_monitor import ALL_ON, _Recorder, expected_metric_keys
from test_sb3_equivalence import _Observer, assert_same_training
from torch import nn

from crl.algorithms.tqc import TQC
from crl.hooks import GradientStep
from crl.interventions import AdaptiveReplayRatio, LayerNorm, ReDo, Reset, ShrinkPerturb, WeightDecay
from crl.interventions.network import fresh_policy
from crl.metrics import evaluate
from crl.metrics.functions import unit_scores
from crl.policies.layers import CReLU

STEPS = 800
KWARGS: dict[str, Any] = dict(
    learning_starts=200, batch_size=64, policy_kwargs=dict(net_arch=[64, 64], n_critics=2, n_quantiles=5)
)
# Smaller runs for the tests that only need a trained model
SMALL: dict[str, Any] = dict(
    learning_starts=100, batch_size=32, seed=0, policy_kwargs=dict(net_arch=[16, 16], n_critics=2, n_quantiles=5)
)
NETWORKS = {"actor", "qf0", "qf1"}


def _train(algo_class: type, steps: int = STEPS, **extra: Any) -> Any:
    kwargs = {**KWARGS, **extra}
    model = algo_class("MlpPolicy", "Pendulum-v1", seed=3, device="cpu", **kwargs)
    model.learn(steps)
    return model


def _small(steps: int = 300, **extra: Any) -> TQC:
    policy_kwargs = {**SMALL["policy_kwargs"], **extra.pop("policy_kwargs", {})}
    model = TQC("MlpPolicy", "Pendulum-v1", device="cpu", **{**SMALL, **extra, "policy_kwargs": policy_kwargs})
    model.learn(steps)
    return model


def _snapshot(module: nn.Module) -> dict[str, th.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def _fresh_with_seed(policy: Any, seed: int) -> dict[str, th.Tensor]:
    th.manual_seed(seed)
    return dict(fresh_policy(policy).named_parameters())


def _probe(model: Any, size: int = 128) -> tuple[th.Tensor, th.Tensor]:
    """The first ``size`` observations and actions of an off-policy model's replay buffer."""
    return th.as_tensor(model.replay_buffer.observations[:size, 0]), th.as_tensor(model.replay_buffer.actions[:size, 0])


@pytest.fixture(scope="module")
def reference() -> sb3_contrib.TQC:
    """sb3-contrib's TQC trained with the default settings of these tests (shared: it takes seconds)."""
    # Module-scoped, it runs before conftest's per-test fixture that sets one thread for bitwise comparisons
    threads = th.get_num_threads()
    th.set_num_threads(1)
    try:
        return _train(sb3_contrib.TQC)
    finally:
        th.set_num_threads(threads)


def test_identical_to_sb3_contrib_without_interventions(reference: sb3_contrib.TQC) -> None:
    candidate = _train(TQC)
    assert candidate._n_updates == STEPS - KWARGS["learning_starts"]
    assert_same_training(reference, candidate)


@pytest.mark.parametrize(
    "extra", [dict(ent_coef=0.1), dict(top_quantiles_to_drop_per_net=1)], ids=["fixed_temperature", "drop_1"]
)
def test_identical_to_sb3_contrib_with_other_settings(extra: dict[str, Any]) -> None:
    reference = _train(sb3_contrib.TQC, **extra)
    candidate = _train(TQC, **extra)
    assert candidate._n_updates == STEPS - KWARGS["learning_starts"]
    assert_same_training(reference, candidate)


class _LayerObserver(_Observer):
    """The observer of the SB3 equivalence tests, also keeping ``network/layer`` of every recorded feature."""

    def model_post_init(self, context: Any) -> None:
        super().model_post_init(context)
        self._layer_keys: set[str] = set()

    def auxiliary_loss(self, algo: Any, step: GradientStep) -> None:
        self._layer_keys.update(f"{network}/{layer}" for network, layers in step.features.items() for layer in layers)
        return super().auxiliary_loss(algo, step)


def test_observing_hooks_change_nothing(reference: sb3_contrib.TQC) -> None:
    """Hooks that only read (features, gradient norms) leave training bitwise unchanged."""
    observer = _LayerObserver()
    candidate = _train(TQC, interventions=[observer])
    assert_same_training(reference, candidate)

    assert observer._calls["on_step"] == candidate.num_timesteps
    n_steps = observer._calls["before_gradient_step"]
    assert n_steps == candidate._n_updates
    for loss in ("critic", "actor"):
        assert observer._calls[f"auxiliary_loss/{loss}"] == n_steps
        assert observer._calls[f"after_optimizer_step/{loss}"] == n_steps
    assert observer._calls["on_train_start"] == n_steps  # one gradient step per train() call
    assert observer._feature_keys == NETWORKS
    assert observer._layer_keys == {f"{network}/layer{k}" for network in NETWORKS for k in (0, 1)}
    assert len(observer._grad_norms) == 2 * n_steps
    assert all(norm > 0 for norm in observer._grad_norms)


def test_networks_hidden_layers_and_features() -> None:
    model = TQC("MlpPolicy", "Pendulum-v1", device="cpu", **SMALL)
    policy = model.policy
    assert policy.network_prefixes() == {
        "actor": ["actor"],
        "qf0": ["critic.features_extractor", "critic.qf0"],
        "qf1": ["critic.features_extractor", "critic.qf1"],
    }
    assert policy.target_networks() == {"critic": "critic_target"}
    assert policy.output_layers() == {"actor": ["actor.mu", "actor.log_std"]}
    observations = th.zeros(7, 3)
    features = policy.hidden_features(observations)
    assert set(features) == NETWORKS
    assert features["qf1"]["layer1"].post.shape == (7, 16)
    assert features["qf0"]["layer0"].path == "critic.qf0.1"

    shared = TQC("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(share_features_extractor=True))
    assert shared.policy.network_prefixes()["qf0"] == ["actor.features_extractor", "critic.qf0"]


@pytest.mark.parametrize("how", ["policy_kwargs", "intervention"])
def test_layer_norm_goes_into_the_actor_and_every_quantile_network(how: str) -> None:
    extra: dict[str, Any] = (
        dict(policy_kwargs=dict(layer_norm="pre")) if how == "policy_kwargs" else dict(interventions=[LayerNorm()])
    )
    model = _small(steps=0, **extra)
    policy = model.policy
    stacks = [policy.actor.latent_pi, *policy.critic.q_networks, *policy.critic_target.q_networks]
    assert len(stacks) == 5
    for stack in stacks:
        kinds = [type(module) for module in stack]
        # "pre": Linear -> LayerNorm -> ReLU in each hidden layer; the quantile outputs are not normalised
        assert kinds[:6] == [nn.Linear, nn.LayerNorm, nn.ReLU] * 2, kinds
    assert policy.critic.qf0 is policy.critic.q_networks[0] and isinstance(policy.critic.qf1[-1], nn.Linear)
    assert policy.critic.qf1[-1].out_features == 5
    before = _snapshot(policy)
    model.learn(300)
    assert all(not th.equal(p, before[name]) for name, p in policy.named_parameters() if "critic_target" not in name)
    assert all(th.isfinite(p).all() for p in policy.parameters())


def test_crelu_widens_the_gaussian_heads_and_trains() -> None:
    model = _small(steps=300, policy_kwargs=dict(activation="crelu"))
    actor = model.policy.actor
    assert isinstance(actor.latent_pi[-1], CReLU)
    assert actor.mu.in_features == actor.log_std.in_features == 32
    assert isinstance(model.critic.qf0[1], CReLU) and model.critic.qf0[2].in_features == 32
    assert all(th.isfinite(p).all() for p in model.policy.parameters())


def test_save_and_load_keep_the_parameters_and_the_options(tmp_path: Path) -> None:
    model = _small(policy_kwargs=dict(layer_norm="pre"))
    model.save(tmp_path / "tqc.zip")
    loaded = TQC.load(tmp_path / "tqc.zip", device="cpu")
    assert type(loaded.policy) is type(model.policy)
    assert loaded.policy.architecture.layer_norm == "pre"
    assert loaded.top_quantiles_to_drop_per_net == model.top_quantiles_to_drop_per_net
    saved, restored = model.policy.state_dict(), loaded.policy.state_dict()
    assert list(saved) == list(restored)
    assert all(th.equal(value, restored[key]) for key, value in saved.items())
    assert th.equal(loaded.log_ent_coef, model.log_ent_coef)
    observations, _ = _probe(model, 16)
    assert np.array_equal(
        loaded.predict(observations.numpy(), deterministic=True)[0],
        model.predict(observations.numpy(), deterministic=True)[0],
    )


def test_two_hot_and_crelu_with_gsde_are_refused() -> None:
    two_hot = dict(low=-10.0, high=10.0, bins=11)
    with pytest.raises(ValueError, match=r"two_hot=\{'low': -10\.0, 'high': 10\.0, 'bins': 11\}.*return distributions"):
        TQC("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(two_hot=two_hot))
    with pytest.raises(ValueError, match="activation='crelu' is not supported with use_sde=True for TQC"):
        TQC("MlpPolicy", "Pendulum-v1", use_sde=True, policy_kwargs=dict(activation="crelu"))


def test_redo_recycles_critic_units_and_keeps_the_target_in_step(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _small()
    first, second = model.critic.qf0[0], model.critic.qf0[2]
    target_first = model.critic_target.qf0[0]
    killed = th.arange(4)
    with th.no_grad():  # units that never fire
        first.weight[killed], first.bias[killed] = 0.0, -1.0
    observations, actions = _probe(model)
    monkeypatch.setattr("crl.interventions.redo.probe_batch", lambda algo, size: (observations, actions))
    features = model.policy.hidden_features(observations, actions)["qf0"]
    downstream = unit_scores(features["layer1"].post) <= 0.0  # silent behind the killed units: recycled too
    quantiles = model.critic(observations, actions)
    fresh = _fresh_with_seed(model.policy, 7)

    th.manual_seed(7)
    assert ReDo(tau=0.0).recycle(model) >= len(killed)  # tau = 0: units silent on every probe sample

    assert th.equal(first.weight[killed], fresh["critic.qf0.0.weight"][killed])
    assert th.all(first.bias[killed] == 0) and th.all(second.weight[~downstream][:, killed] == 0)
    assert th.equal(target_first.weight[killed], first.weight[killed])
    assert th.equal(target_first.bias[killed], first.bias[killed])
    # zero outgoing weights: the quantiles do not move
    assert th.equal(model.critic(observations, actions), quantiles)
    assert th.all(model.critic.optimizer.state[first.weight]["exp_avg"][killed] == 0)
    recycled_in = first.weight[killed].clone()
    model.learn(100, reset_num_timesteps=False)
    assert not th.equal(first.weight[killed], recycled_in)


def test_head_reset_reinitialises_the_output_layers_and_resyncs_the_target() -> None:
    model = _small()
    before = _snapshot(model.policy)
    fresh = _fresh_with_seed(model.policy, 5)
    th.manual_seed(5)
    Reset(parts="head").apply(model, "test")
    heads = ["actor.mu", "actor.log_std", "critic.qf0.4", "critic.qf1.4"]
    parameters = dict(model.policy.named_parameters())
    for name, param in parameters.items():
        online_name = name.replace("critic_target.", "critic.", 1)
        if online_name.rpartition(".")[0] not in heads:
            assert th.equal(param, before[name]), name  # the target's other layers keep their lag
        elif name.startswith("critic_target."):
            assert th.equal(param, parameters[online_name]), name
        else:
            assert th.equal(param, fresh[name]), name
            optimizer = model.actor.optimizer if name.startswith("actor") else model.critic.optimizer
            assert param not in optimizer.state, name
    reset = model.critic.qf0[4].weight.clone()
    model.learn(50, reset_num_timesteps=False)
    assert not th.equal(model.critic.qf0[4].weight, reset)


def test_shrink_perturb_mixes_a_fresh_init_into_every_network_and_syncs_the_target() -> None:
    model = _small()
    before = _snapshot(model.policy)
    fresh = _fresh_with_seed(model.policy, 9)
    th.manual_seed(9)
    ShrinkPerturb(shrink=0.4, perturb=0.3).apply(model, "test")
    targets = dict(model.critic_target.named_parameters())
    for name, param in model.policy.named_parameters():
        if name.startswith("critic_target"):
            continue
        th.testing.assert_close(param, 0.4 * before[name] + 0.3 * fresh[name], rtol=0, atol=1e-7)
        if name.startswith("critic."):
            assert th.equal(targets[name.removeprefix("critic.")], param), name
    assert all(len(optimizer.state) == 0 for optimizer in (model.actor.optimizer, model.critic.optimizer))
    shrunk = _snapshot(model.actor)
    model.learn(50, reset_num_timesteps=False)
    assert all(not th.equal(p, shrunk[n]) for n, p in model.actor.named_parameters())


def test_weight_decay_intervention_equals_adamw() -> None:
    # Each model is seeded at construction (global RNGs): construct and train one after the other.
    ours = _small(interventions=[WeightDecay(weight_decay=0.01)])
    reference = _small(policy_kwargs=dict(optimizer_class=th.optim.AdamW, optimizer_kwargs=dict(weight_decay=0.01)))
    plain = _small()
    assert not th.equal(plain.critic.qf0[0].weight, ours.critic.qf0[0].weight)
    assert_same_training(reference, ours)


def test_adaptive_replay_ratio_measures_the_quantile_critics_fau() -> None:
    arr = AdaptiveReplayRatio(check_every=1, gap=1.0)
    model = _small(steps=450, interventions=[arr])  # Pendulum episodes last 200 steps: checks at 200 and 400
    assert 0.0 < model.logger.name_to_value["interventions/adaptive_replay_ratio/fau"] <= 1.0
    assert arr._switch_check == 2 and model.gradient_steps == 2


def test_metrics_do_not_change_training_and_reach_the_logger(reference: sb3_contrib.TQC) -> None:
    monitored = TQC("MlpPolicy", "Pendulum-v1", seed=3, device="cpu", metrics=ALL_ON, **KWARGS)
    recorder = _Recorder()
    monitored.set_logger(Logger(folder=None, output_formats=[recorder]))
    monitored.learn(STEPS)
    assert_same_training(reference, monitored)

    logged = {key for dump in recorder.dumps for key in dump}
    expected = expected_metric_keys(NETWORKS, ["critic", "actor"])
    assert expected <= logged, sorted(expected - logged)
    values = monitored.metrics_monitor.latest
    assert all(np.isfinite(value) for value in values.values())


def test_offline_metrics_probe_every_network_on_the_critics_actions() -> None:
    model = _small()
    observations, actions = _probe(model, 64)
    given = evaluate(model, observations, actions, plasticity_probe=True)
    chosen = evaluate(model, observations, plasticity_probe=True)  # the actor's actions
    for values in (given, chosen):
        assert {f"plasticity/{net}/all/plasticity_probe" for net in NETWORKS} <= set(values)
        assert all(np.isfinite(value) for value in values.values())
    assert given["plasticity/qf0/penultimate/feature_norm"] != chosen["plasticity/qf0/penultimate/feature_norm"]
    assert given["plasticity/actor/penultimate/feature_norm"] == chosen["plasticity/actor/penultimate/feature_norm"]
