"""Weight decay, L2 toward the initial parameters and PFO: exact terms and their effect."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch as th
from torch import nn

import crl
from crl.hooks import GradientStep
from crl.interventions import PFO, InterventionError, L2Init, WeightDecay
from crl.interventions.pfo import pfo_penalty


def test_weight_decay_step_is_adamw_on_a_tiny_network() -> None:
    th.manual_seed(0)
    layer = nn.Linear(3, 2)
    twin = copy.deepcopy(layer)
    adam = th.optim.Adam(layer.parameters(), lr=0.1)
    adamw = th.optim.AdamW(twin.parameters(), lr=0.1, weight_decay=0.5)
    decay = WeightDecay(weight_decay=0.5)
    x = th.randn(8, 3)
    for _ in range(3):
        for net, optimizer in ((layer, adam), (twin, adamw)):
            optimizer.zero_grad()
            net(x).pow(2).sum().backward()
        before = layer.weight.detach().clone()
        decay.after_backward(None, GradientStep(0, None, optimizer=adam))  # type: ignore[arg-type]
        th.testing.assert_close(layer.weight, before * (1 - 0.1 * 0.5), rtol=0, atol=0)
        adam.step()
        adamw.step()
        assert th.equal(layer.weight, twin.weight) and th.equal(layer.bias, twin.bias)


def test_weight_decay_intervention_equals_sb3_with_adamw() -> None:
    kwargs = dict(learning_starts=50, train_freq=1, seed=0)
    # Each model is seeded at construction (global RNGs): construct and train one after the other.
    ours = crl.DQN("MlpPolicy", "CartPole-v1", interventions=[WeightDecay(weight_decay=0.01)], **kwargs).learn(200)
    adamw = dict(optimizer_class=th.optim.AdamW, optimizer_kwargs=dict(weight_decay=0.01))
    reference = crl.DQN("MlpPolicy", "CartPole-v1", policy_kwargs=adamw, **kwargs).learn(200)
    plain = crl.DQN("MlpPolicy", "CartPole-v1", **kwargs).learn(200)
    assert not th.equal(next(plain.policy.parameters()), next(ours.policy.parameters()))
    for p, q in zip(ours.policy.parameters(), reference.policy.parameters(), strict=True):
        assert th.equal(p, q)


def test_l2_init_term_and_gradient_equal_the_formula() -> None:
    model = crl.DQN("MlpPolicy", "CartPole-v1", learning_starts=50, seed=0, interventions=[L2Init(l2_init=0.2)])
    l2 = model.interventions[0]
    theta_0 = {name: p.detach().clone() for name, p in model.q_net.named_parameters()}
    model.learn(300)
    l2.on_train_start(model)
    penalty = l2.auxiliary_loss(model, GradientStep(0, None, loss_name="q_net"))
    expected = 0.1 * sum((p - theta_0[n]).pow(2).sum() for n, p in model.q_net.named_parameters())
    th.testing.assert_close(penalty, expected)
    model.policy.optimizer.zero_grad()
    penalty.backward()
    for name, p in model.q_net.named_parameters():
        th.testing.assert_close(p.grad, 0.2 * (p.detach() - theta_0[name]))
    assert model.logger.name_to_value["interventions/l2_init/penalty"] > 0


def test_l2_init_keeps_theta_0_through_save_and_load(tmp_path) -> None:
    model = crl.DQN("MlpPolicy", "CartPole-v1", learning_starts=50, seed=0, interventions=["l2_init"])
    theta_0 = {n: t.clone() for n, t in model.interventions[0]._theta_0.items()}
    model.learn(150)
    model.save(tmp_path / "model.zip")
    loaded = crl.DQN.load(tmp_path / "model.zip", env=model.get_env())
    for name, value in loaded.interventions[0]._theta_0.items():
        assert th.equal(value, theta_0[name])
    loaded.learn(100, reset_num_timesteps=False)


def test_pfo_penalty_on_a_hand_built_batch() -> None:
    phi_new = th.tensor([[1.0, 2.0], [0.0, -1.0]])
    phi_old = th.tensor([[0.0, 2.0], [2.0, 1.0]])
    # squared differences 1, 0, 4, 4: mean over batch and dims = 9 / 4
    assert pfo_penalty(phi_new, phi_old).item() == pytest.approx(9 / 4)


def test_pfo_auxiliary_loss_is_coef_times_the_feature_distance_to_the_collecting_network() -> None:
    model = crl.PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, seed=0, interventions=[PFO(coef=3.0)])
    model.learn(64)
    pfo = model.interventions[0]
    obs = th.as_tensor(model.rollout_buffer.observations[:16])
    old = model.policy.hidden_features(obs)["actor"]["layer1"].pre
    pfo.on_train_start(model)
    with th.no_grad():
        for p in model.policy.mlp_extractor.policy_net.parameters():
            p.add_(0.1)
    batch = type("Batch", (), {"observations": obs})()
    step = GradientStep(0, batch, loss_name="policy")
    with model.policy.record_features(["actor", "critic"]) as recorder:
        model.policy.evaluate_actions(obs, th.zeros(16))
    step.features = recorder.features()
    new = step.features["actor"]["layer1"].pre
    loss = pfo.auxiliary_loss(model, step)
    th.testing.assert_close(loss, 3.0 * (new - old).pow(2).mean())
    assert loss.requires_grad


def test_pfo_on_the_critic_runs_the_frozen_shared_extractor_once_and_adds_both_terms() -> None:
    model = crl.PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, seed=0, interventions=[PFO(critic=True)])
    model.learn(64)
    pfo = model.interventions[0]
    obs = th.as_tensor(model.rollout_buffer.observations[:16])
    old = model.policy.hidden_features(obs)
    pfo.on_train_start(model)
    frozen_calls: list[int] = []
    pfo._frozen.features_extractor.register_forward_hook(lambda m, i, o: frozen_calls.append(1))
    with th.no_grad():
        for p in model.policy.mlp_extractor.parameters():
            p.add_(0.1)
    step = GradientStep(0, type("Batch", (), {"observations": obs})(), loss_name="policy")
    with model.policy.record_features(["actor", "critic"]) as recorder:
        model.policy.evaluate_actions(obs, th.zeros(16))
    step.features = recorder.features()
    loss = pfo.auxiliary_loss(model, step)
    assert frozen_calls == [1]
    expected = sum(
        (step.features[network]["layer1"].pre - old[network]["layer1"].pre).pow(2).mean()
        for network in ("actor", "critic")
    )
    th.testing.assert_close(loss, expected)


def _feature_change(interventions: list) -> float:
    model = crl.PPO(
        "MlpPolicy", "CartPole-v1", n_steps=256, batch_size=64, n_epochs=10, seed=1, interventions=interventions
    )
    model.learn(256)  # collect, then one update
    obs = th.as_tensor(model.rollout_buffer.observations.reshape(-1, 4))
    # features before the update: from a policy built with the same seed, before learning
    before = crl.PPO("MlpPolicy", "CartPole-v1", n_steps=256, seed=1).policy.hidden_features(obs)["actor"]["layer1"].pre
    after = model.policy.hidden_features(obs)["actor"]["layer1"].pre
    return float((after - before).pow(2).mean())


def test_pfo_with_a_large_coefficient_moves_the_features_less() -> None:
    free, regularised = _feature_change([]), _feature_change([PFO(coef=100.0)])
    assert regularised < 0.5 * free
    assert np.isfinite(regularised)


def test_bad_parameters_and_algorithms_fail_at_construction() -> None:
    with pytest.raises(InterventionError, match=r"parameter weight_decay=-1.0: Input should be greater than 0"):
        WeightDecay(weight_decay=-1.0)
    with pytest.raises(InterventionError, match=r"'pfo' does not apply to DQN; it supports \['PPO'\]"):
        crl.DQN("MlpPolicy", "CartPole-v1", interventions=["pfo"])
