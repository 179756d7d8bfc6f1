"""crl's CrossQ: bitwise sb3-contrib's CrossQ without interventions, its BatchRenorm layers, and interventions on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sb3_contrib
import torch as th
from sb3_contrib.common.torch_layers import BatchRenorm
from stable_baselines3.common.logger import Logger
from test_metrics_monitor import _Recorder, expected_metric_keys
from test_sb3_equivalence import assert_same_training
from test_tqc import _fresh_with_seed, _LayerObserver, _probe, _snapshot
from torch import nn

from crl.algorithms.crossq import CrossQ
from crl.hooks import GradientStep
from crl.interventions import AdaptiveReplayRatio, InterventionError, ReDo, Reset, ShrinkPerturb, WeightDecay
from crl.metrics import evaluate
from crl.metrics.functions import unit_scores
from crl.policies.crossq import batch_renorm_layers
from crl.policies.layers import CReLU

STEPS = 600
KWARGS: dict[str, Any] = dict(learning_starts=200, batch_size=64, policy_kwargs=dict(net_arch=[32, 32]))
# Smaller runs for the tests that only need a trained model
SMALL: dict[str, Any] = dict(learning_starts=100, batch_size=32, seed=0, policy_kwargs=dict(net_arch=[16, 16]))
NETWORKS = {"actor", "qf0", "qf1"}


def _train(algo_class: type, steps: int = STEPS, **extra: Any) -> Any:
    kwargs = {**KWARGS, **extra}
    model = algo_class("MlpPolicy", "Pendulum-v1", seed=3, device="cpu", **kwargs)
    model.learn(steps)
    return model


def _small(steps: int = 300, **extra: Any) -> CrossQ:
    policy_kwargs = {**SMALL["policy_kwargs"], **extra.pop("policy_kwargs", {})}
    model = CrossQ("MlpPolicy", "Pendulum-v1", device="cpu", **{**SMALL, **extra, "policy_kwargs": policy_kwargs})
    model.learn(steps)
    return model


def _state(module: nn.Module) -> dict[str, th.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


@pytest.fixture(scope="module")
def reference() -> sb3_contrib.CrossQ:
    """sb3-contrib's CrossQ trained with the default settings of these tests (shared: it takes seconds)."""
    # Module-scoped, it runs before conftest's per-test fixture that sets one thread for bitwise comparisons
    threads = th.get_num_threads()
    th.set_num_threads(1)
    try:
        return _train(sb3_contrib.CrossQ)
    finally:
        th.set_num_threads(threads)


def test_identical_to_sb3_contrib_without_interventions(reference: sb3_contrib.CrossQ) -> None:
    candidate = _train(CrossQ)
    assert candidate._n_updates == STEPS - KWARGS["learning_starts"]
    # state_dict holds the BatchRenorm layers' running statistics and step counts too
    assert any(key.endswith(".ra_var") for key in candidate.policy.state_dict())
    assert_same_training(reference, candidate)


@pytest.mark.parametrize(
    "extra",
    [
        # A warm-up shorter than the run: the layers also renormalise with their running statistics
        dict(policy_delay=1, policy_kwargs=dict(net_arch=[32, 32], renorm_warmup_steps=100)),
        dict(use_sde=True, ent_coef=0.1, train_freq=2, gradient_steps=2),
    ],
    ids=["policy_delay_1_renormalising", "gsde_fixed_temperature_2_steps"],
)
def test_identical_to_sb3_contrib_with_other_settings(extra: dict[str, Any]) -> None:
    reference = _train(sb3_contrib.CrossQ, **extra)
    candidate = _train(CrossQ, **extra)
    assert candidate._n_updates == STEPS - KWARGS["learning_starts"]
    if "policy_kwargs" in extra:
        assert int(candidate.critic.qf0[0].steps) > 100
    assert_same_training(reference, candidate)


def test_observing_hooks_change_nothing(reference: sb3_contrib.CrossQ) -> None:
    """Hooks that only read (features, gradient norms) leave training bitwise unchanged."""
    observer = _LayerObserver()
    candidate = _train(CrossQ, interventions=[observer])
    assert_same_training(reference, candidate)

    assert observer._calls["on_step"] == candidate.num_timesteps
    n_steps = observer._calls["before_gradient_step"]
    assert n_steps == candidate._n_updates
    actor_steps = n_steps // candidate.policy_delay  # updates 3, 6, ... of 400
    assert observer._calls["auxiliary_loss/critic"] == observer._calls["after_optimizer_step/critic"] == n_steps
    assert observer._calls["auxiliary_loss/actor"] == observer._calls["after_optimizer_step/actor"] == actor_steps
    assert observer._calls["on_train_start"] == n_steps  # one gradient step per train() call
    assert observer._feature_keys == NETWORKS
    assert observer._layer_keys == {f"{network}/layer{k}" for network in NETWORKS for k in (0, 1)}
    assert len(observer._grad_norms) == n_steps + actor_steps
    assert all(norm > 0 for norm in observer._grad_norms)


def test_hidden_layers_are_the_activations_between_linear_and_batch_renorm() -> None:
    model = CrossQ("MlpPolicy", "Pendulum-v1", device="cpu", **SMALL)
    policy = model.policy
    assert policy.network_prefixes() == {
        "actor": ["actor"],
        "qf0": ["critic.features_extractor", "critic.qf0"],
        "qf1": ["critic.features_extractor", "critic.qf1"],
    }
    assert policy.target_networks() == {}
    assert policy.output_layers() == {"actor": ["actor.mu", "actor.log_std"]}
    # sb3-contrib's stacks: BatchRenorm before every Linear, ReLU after each hidden Linear
    kinds = [type(module) for module in policy.critic.qf0]
    assert kinds == [*[sb3_contrib.common.torch_layers.BatchRenorm1d, nn.Linear, nn.ReLU] * 2, kinds[0], nn.Linear]
    layers = policy.hidden_layers()
    assert {name: [layer.path for layer in found] for name, found in layers.items()} == {
        "actor": ["actor.latent_pi.2", "actor.latent_pi.5"],
        "qf0": ["critic.qf0.2", "critic.qf0.5"],
        "qf1": ["critic.qf1.2", "critic.qf1.5"],
    }

    model.learn(250)  # running statistics away from their initial values
    policy.set_training_mode(True)  # the mode in which a forward pass would update them
    before = _state(policy)
    observations, actions = _probe(model, 7)
    features = policy.hidden_features(observations, actions)
    assert all(th.equal(value, before[key]) for key, value in policy.state_dict().items())
    assert all(layer.training for layer in batch_renorm_layers(policy))

    # pre is the Linear's output, post the ReLU's, which the next BatchRenorm normalises (running statistics)
    policy.set_training_mode(False)
    qf0 = policy.critic.qf0
    x = qf0[0](th.cat([observations, actions], dim=1))
    pre0 = qf0[1](x)
    post0 = qf0[2](pre0)
    pre1 = qf0[4](qf0[3](post0))
    assert th.equal(features["qf0"]["layer0"].pre, pre0) and th.equal(features["qf0"]["layer0"].post, post0)
    assert th.equal(features["qf0"]["layer1"].pre, pre1) and th.equal(features["qf0"]["layer1"].post, th.relu(pre1))
    assert features["actor"]["layer1"].post.shape == (7, 16)
    assert th.all(features["actor"]["layer1"].post >= 0)


def test_crl_mode_switch_is_sb3_contribs_after_crossqs_own_switches() -> None:
    policy = CrossQ("MlpPolicy", "Pendulum-v1", device="cpu", **SMALL).policy
    plain = policy.network_copy()  # switched by sb3-contrib's code alone
    for mode in (True, False, False, True):
        for switched in (policy, plain):
            # What CrossQ's train() does between two switches of the policy: its own BatchRenorm switches
            switched.actor.set_bn_training_mode(not mode)
            switched.critic.set_bn_training_mode(not mode)
        policy.set_training_mode(mode)
        sb3_contrib.crossq.policies.CrossQPolicy.set_training_mode(plain, mode)
        assert [m.training for m in policy.modules()] == [m.training for m in plain.modules()]
        assert all(module.training == mode for module in policy.modules())


def test_training_losses_keep_the_batch_norm_state_and_match_train() -> None:
    model = _small(steps=250)
    policy = model.policy
    batch = model.replay_buffer.sample(32)
    policy.set_training_mode(True)
    before = _state(policy)
    modes = [m.training for m in policy.modules()]
    losses = model.training_losses(batch)
    assert set(losses) == {"critic", "actor"}
    assert losses["critic"][1] is model.critic.optimizer and losses["actor"][1] is model.actor.optimizer
    assert all(th.equal(value, before[key]) for key, value in policy.state_dict().items())
    assert [m.training for m in policy.modules()] == modes
    # The critic loss comes from the batch statistics of the joint batch, as in train()
    next_actions, _ = model._next_actions(batch)
    with th.no_grad():
        eval_q = th.cat(model.critic(batch.observations, batch.actions), dim=1)
    current_q, _ = model._joint_q_values(batch, next_actions)
    assert not th.equal(current_q[0], eval_q[:, :1])
    assert all(th.isfinite(loss) for loss, _ in losses.values())
    losses["critic"][0].backward()  # the graph is intact after the statistics were restored


def test_save_and_load_keep_the_parameters_and_the_statistics(tmp_path: Path) -> None:
    model = _small(policy_delay=2, policy_kwargs=dict(activation="tanh"))
    model.save(tmp_path / "crossq.zip")
    loaded = CrossQ.load(tmp_path / "crossq.zip", device="cpu")
    assert type(loaded.policy) is type(model.policy)
    assert loaded.policy.architecture.activation == "tanh" and isinstance(loaded.critic.qf0[2], nn.Tanh)
    assert loaded.policy_delay == 2
    saved, restored = model.policy.state_dict(), loaded.policy.state_dict()
    assert list(saved) == list(restored)
    assert all(th.equal(value, restored[key]) for key, value in saved.items())
    assert th.equal(loaded.log_ent_coef, model.log_ent_coef)
    observations, _ = _probe(model, 16)
    assert np.array_equal(
        loaded.predict(observations.numpy(), deterministic=True)[0],
        model.predict(observations.numpy(), deterministic=True)[0],
    )
    loaded.set_env(model.get_env())
    loaded.learn(50, reset_num_timesteps=False)


def test_refused_options_say_which_and_why() -> None:
    two_hot = dict(low=-10.0, high=10.0, bins=11)
    with pytest.raises(
        ValueError, match=r"two_hot=\{'low': -10\.0, 'high': 10\.0, 'bins': 11\} is not supported by CrossQ"
    ):
        CrossQ("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(two_hot=two_hot))
    with pytest.raises(
        ValueError, match="layer_norm='pre' is not supported by CrossQ with batch_norm=True: its BatchRenorm"
    ):
        CrossQ("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(layer_norm="pre"))
    with pytest.raises(ValueError, match="activation='crelu' is not supported by CrossQ with batch_norm=True unless"):
        CrossQ("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(activation="crelu"))
    with pytest.raises(ValueError, match="activation='crelu' is not supported with use_sde=True for CrossQ"):
        CrossQ("MlpPolicy", "Pendulum-v1", use_sde=True, policy_kwargs=dict(activation="crelu", batch_norm=False))


def test_options_that_work_with_or_without_batch_renorm() -> None:
    # Halved CReLU passes on each layer's width: the BatchRenorm layers keep their sizes
    halved = _small(policy_kwargs=dict(activation="crelu", crelu_halve_width=True))
    qf0 = halved.critic.qf0
    assert isinstance(qf0[2], CReLU) and qf0[1].out_features == 8 and qf0[3].num_features == 16
    assert halved.actor.mu.in_features == 16
    assert all(th.isfinite(p).all() for p in halved.policy.parameters())
    # Without batch norm the stacks are SAC's, and LayerNorm goes in as there
    plain = _small(steps=150, policy_kwargs=dict(batch_norm=False, layer_norm="pre"))
    assert not batch_renorm_layers(plain.policy)
    assert [type(m) for m in plain.critic.qf0][:3] == [nn.Linear, nn.LayerNorm, nn.ReLU]
    assert all(th.isfinite(p).all() for p in plain.policy.parameters())


@pytest.mark.parametrize("name", ["redo", "continual_backprop"])
def test_unit_recycling_is_refused_behind_batch_renorm(name: str) -> None:
    """A silent unit still feeds the next Linear the constant its BatchRenorm makes of 0: zeroing its outgoing
    weights, as recycling does, would change the Q-values."""
    with pytest.raises(InterventionError, match=rf"intervention '{name}' cannot recycle units of CrossQPolicy: "
                       r"the BatchRenorm layer after each hidden layer .* use batch_norm=False"):  # fmt: skip
        CrossQ("MlpPolicy", "Pendulum-v1", interventions=[name])


def test_redo_recycles_critic_units_without_batch_renorm(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _small(policy_kwargs=dict(batch_norm=False))
    first, second = model.critic.qf0[0], model.critic.qf0[2]
    killed = th.arange(4)
    with th.no_grad():  # units that never fire
        first.weight[killed], first.bias[killed] = 0.0, -1.0
    observations, actions = _probe(model)
    monkeypatch.setattr("crl.interventions.redo.probe_batch", lambda algo, size: (observations, actions))
    features = model.policy.hidden_features(observations, actions)["qf0"]
    downstream = unit_scores(features["layer1"].post) <= 0.0  # silent behind the killed units: recycled too
    model.policy.set_training_mode(False)
    with th.no_grad():
        q_values = model.critic(observations, actions)
    fresh = _fresh_with_seed(model.policy, 7)

    th.manual_seed(7)
    assert ReDo(tau=0.0).recycle(model) >= len(killed)  # tau = 0: units silent on every probe sample

    assert th.equal(first.weight[killed], fresh["critic.qf0.0.weight"][killed])
    assert th.all(first.bias[killed] == 0) and th.all(second.weight[~downstream][:, killed] == 0)
    assert th.all(model.critic.optimizer.state[first.weight]["exp_avg"][killed] == 0)
    with th.no_grad():
        assert all(th.equal(a, b) for a, b in zip(model.critic(observations, actions), q_values, strict=True))
    recycled = first.weight[killed].clone()
    model.learn(100, reset_num_timesteps=False)
    assert not th.equal(first.weight[killed], recycled)


def test_head_reset_reinitialises_the_output_layers() -> None:
    model = _small()
    before = _snapshot(model.policy)
    fresh = _fresh_with_seed(model.policy, 5)
    th.manual_seed(5)
    Reset(parts="head").apply(model, "test")
    heads = ["actor.mu", "actor.log_std", "critic.qf0.7", "critic.qf1.7"]
    for name, param in model.policy.named_parameters():
        if name.rpartition(".")[0] not in heads:
            assert th.equal(param, before[name]), name
        else:
            assert th.equal(param, fresh[name]), name
            optimizer = model.actor.optimizer if name.startswith("actor") else model.critic.optimizer
            assert param not in optimizer.state, name
    reset = model.critic.qf0[7].weight.clone()
    model.learn(50, reset_num_timesteps=False)
    assert not th.equal(model.critic.qf0[7].weight, reset)


def test_shrink_perturb_mixes_a_fresh_init_into_every_network() -> None:
    model = _small()
    before = _snapshot(model.policy)
    fresh = _fresh_with_seed(model.policy, 9)
    th.manual_seed(9)
    ShrinkPerturb(shrink=0.4, perturb=0.3).apply(model, "test")
    for name, param in model.policy.named_parameters():  # BatchRenorm's scale and bias included
        th.testing.assert_close(param, 0.4 * before[name] + 0.3 * fresh[name], rtol=0, atol=1e-7)
    assert all(len(optimizer.state) == 0 for optimizer in (model.actor.optimizer, model.critic.optimizer))
    shrunk = _snapshot(model.actor)
    model.learn(50, reset_num_timesteps=False)
    assert all(not th.equal(p, shrunk[n]) for n, p in model.actor.named_parameters())


def test_weight_decay_intervention_equals_adamw() -> None:
    # Each model is seeded at construction (global RNGs): construct and train one after the other.
    ours = _small(interventions=[WeightDecay(weight_decay=0.01)])
    adamw = dict(optimizer_class=th.optim.AdamW, optimizer_kwargs=dict(weight_decay=0.01, betas=(0.5, 0.999)))
    reference = _small(policy_kwargs=adamw)
    plain = _small()
    assert not th.equal(plain.critic.qf0[1].weight, ours.critic.qf0[1].weight)
    assert_same_training(reference, ours)


def test_metrics_do_not_change_training_and_reach_the_logger(reference: sb3_contrib.CrossQ) -> None:
    # The actor learns at updates 3, 6, ...: train() at timestep t is update t - 200, so t = 500 measures an
    # actor step too (the monitor reports the gradient norms of the train() call it measures)
    metrics = dict(every=250, hessian_every=500, plasticity_probe_every=500, grama_every=500, probe_batch_size=128)
    monitored = CrossQ("MlpPolicy", "Pendulum-v1", seed=3, device="cpu", metrics=metrics, **KWARGS)
    recorder = _Recorder()
    monitored.set_logger(Logger(folder=None, output_formats=[recorder]))
    monitored.learn(STEPS)
    assert_same_training(reference, monitored)

    logged = {key for dump in recorder.dumps for key in dump}
    expected = expected_metric_keys(NETWORKS, ["critic", "actor"])
    assert expected <= logged, sorted(expected - logged)
    values = monitored.metrics_monitor.latest
    assert all(np.isfinite(value) for value in values.values())


class _NormsByStep(_LayerObserver):
    """Also keeps each gradient step's norm with its loss and timestep."""

    def model_post_init(self, context: Any) -> None:
        super().model_post_init(context)
        self._norms: list[tuple[str, int, float]] = []

    def after_backward(self, algo: Any, step: GradientStep) -> None:
        self._norms.append((step.loss_name, algo.num_timesteps, step.grad_norm))


def test_a_measurement_without_an_actor_step_takes_the_actors_next_gradient_norm() -> None:
    """At t = 250 train() is update 50, without an actor step (every third update); t = 500 (update 300) has one."""
    observer = _NormsByStep()
    metrics = dict(every=250, probe_batch_size=128)
    monitored = CrossQ(
        "MlpPolicy", "Pendulum-v1", seed=3, device="cpu", metrics=metrics, interventions=[observer], **KWARGS
    )
    recorder = _Recorder()
    monitored.set_logger(Logger(folder=None, output_formats=[recorder]))
    monitored.learn(STEPS, log_interval=1)  # a dump at every episode's end: 200, 400, 600

    def logged(loss: str) -> list[float]:
        key = f"plasticity/{loss}/all/grad_norm"
        return [dump[key] for dump in recorder.dumps if key in dump]

    def norms(loss: str, timesteps: int) -> list[float]:
        return [norm for name, t, norm in observer._norms if name == loss and t == timesteps]

    assert norms("actor", 250) == [] and len(norms("actor", 500)) == 1
    assert logged("critic") == [*norms("critic", 250), *norms("critic", 500)]
    next_actor_step = min(t for name, t, _ in observer._norms if name == "actor" and t > 250)  # update 51
    assert next_actor_step == 251
    assert logged("actor") == [*norms("actor", next_actor_step), *norms("actor", 500)]


def test_batch_renorm_is_what_the_layers_are() -> None:
    policy = CrossQ("MlpPolicy", "Pendulum-v1", device="cpu", **SMALL).policy
    # 3 in the actor (input, after each hidden layer), 3 per critic (before each Linear)
    assert len(policy.batch_renorms()) == 9 and all(isinstance(m, BatchRenorm) for m in policy.batch_renorms())


def test_adaptive_replay_ratio_measures_the_critics_fau() -> None:
    arr = AdaptiveReplayRatio(check_every=1, gap=1.0)
    model = _small(steps=450, interventions=[arr])  # Pendulum episodes last 200 steps: checks at 200 and 400
    assert 0.0 < model.logger.name_to_value["interventions/adaptive_replay_ratio/fau"] <= 1.0
    assert arr._switch_check == 2 and model.gradient_steps == 2


def test_offline_metrics_probe_every_network_and_keep_the_statistics() -> None:
    model = _small()
    model.policy.set_training_mode(True)  # a forward pass in this mode would update the running statistics
    before = _state(model.policy)
    observations, actions = _probe(model, 64)
    given = evaluate(model, observations, actions, plasticity_probe=True)
    chosen = evaluate(model, observations, plasticity_probe=True)  # the actor's actions
    for values in (given, chosen):
        assert {f"plasticity/{net}/all/plasticity_probe" for net in NETWORKS} <= set(values)
        assert all(np.isfinite(value) for value in values.values())
    assert given["plasticity/qf0/penultimate/feature_norm"] != chosen["plasticity/qf0/penultimate/feature_norm"]
    assert given["plasticity/actor/penultimate/feature_norm"] == chosen["plasticity/actor/penultimate/feature_norm"]
    assert all(th.equal(value, before[key]) for key, value in model.policy.state_dict().items())


def test_shrink_and_perturb_maps_the_parameters_and_leaves_the_batch_renorm_statistics() -> None:
    model = _small()
    layers = batch_renorm_layers(model.policy)
    statistics = [[buffer.clone() for buffer in layer.buffers()] for layer in layers]
    scales = [layer.scale.detach().clone() for layer in layers]
    ShrinkPerturb().apply(model, "test")
    for layer, kept, scale in zip(layers, statistics, scales, strict=True):
        assert all(th.equal(now, then) for now, then in zip(layer.buffers(), kept, strict=True))
        assert not th.equal(layer.scale, scale)  # BatchRenorm's own scale is a parameter: mapped


def test_a_full_reset_gives_the_batch_renorm_statistics_their_fresh_values() -> None:
    model = _small()
    layers = batch_renorm_layers(model.policy)
    assert layers and all(int(layer.steps) > 0 for layer in layers)
    Reset(parts="full").apply(model, "test")
    for layer in layers:
        assert int(layer.steps) == 0
        assert th.equal(layer.ra_mean, th.zeros_like(layer.ra_mean))
        assert th.equal(layer.ra_var, th.ones_like(layer.ra_var))
