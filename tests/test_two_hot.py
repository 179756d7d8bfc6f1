"""Categorical (two-hot) value heads: the math on hand-built cases, and DQN/SAC/PPO training with them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch as th
from torch.nn import functional as F

import crl
from crl.config import ConfigError
from crl.config.build import build_model, build_sequence
from crl.config.curriculum import validate_curriculum
from crl.policies.two_hot import TwoHot

# Support -4, -3, ..., 4: every point and every midpoint is exact in binary floating point.
SUPPORT = TwoHot(low=-4.0, high=4.0, bins=9)


def test_support_points_are_evenly_spaced() -> None:
    assert SUPPORT.support(th.zeros(())).tolist() == [-4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0]


def test_encoding_puts_the_weight_on_the_two_neighbours() -> None:
    probs = SUPPORT.encode(th.tensor([1.25, -4.0, 4.0, 2.0, 7.0, -9.0]))
    expected = th.zeros(6, 9)
    expected[0, 5], expected[0, 6] = 0.75, 0.25  # 1.25 = 0.75 * 1 + 0.25 * 2
    expected[1, 0] = 1.0  # the ends of the support
    expected[2, 8] = 1.0
    expected[3, 6] = 1.0  # a support point
    expected[4, 8] = 1.0  # clamped to high
    expected[5, 0] = 1.0  # clamped to low
    th.testing.assert_close(probs, expected, rtol=0, atol=0)


def test_encode_then_decode_returns_the_scalar() -> None:
    exact = th.tensor([-4.0, -3.5, -0.125, 0.0, 0.75, 1.25, 3.875, 4.0])
    assert th.equal(SUPPORT.expectation(SUPPORT.encode(exact)), exact)
    # Any value inside the support, up to float32 rounding.
    wide = TwoHot(low=-10.0, high=110.0, bins=51)
    values = th.empty(1000).uniform_(-10.0, 110.0, generator=th.Generator().manual_seed(0))
    th.testing.assert_close(wide.expectation(wide.encode(values)), values, rtol=0, atol=2e-5)


def test_decode_is_the_expectation_under_the_softmax() -> None:
    logits = th.tensor([[0.0] * 9, [math.log(3.0), math.log(1.0)] + [-math.inf] * 7])
    th.testing.assert_close(SUPPORT.decode(logits), th.tensor([0.0, 0.75 * -4.0 + 0.25 * -3.0]))


def test_loss_is_the_cross_entropy_against_the_two_hot_target() -> None:
    logits = th.tensor([[1.0, 2.0, 0.5, 0.0, -1.0, 0.0, 0.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 0.0, 0.0]])
    targets = th.tensor([-3.75, 1.5])  # -3.75: 0.75 on z_0 = -4, 0.25 on z_1 = -3; 1.5: half on 1, half on 2
    log_softmax = logits - th.logsumexp(logits, dim=1, keepdim=True)
    by_hand = (
        -(0.75 * log_softmax[0, 0] + 0.25 * log_softmax[0, 1] + 0.5 * log_softmax[1, 5] + 0.5 * log_softmax[1, 6]) / 2
    )
    th.testing.assert_close(SUPPORT.loss(logits, targets), by_hand)
    # Targets shaped (batch, 1), as TD targets are
    th.testing.assert_close(SUPPORT.loss(logits, targets.reshape(2, 1)), by_hand)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(low=1.0, high=1.0), "policy option two_hot needs low < high, got low=1.0, high=1.0"),
        (dict(low=0.0, high=1.0, bins=1), "policy option two_hot needs bins >= 2"),
        (dict(low=0.0, high=1.0, bins=2.5), "policy option two_hot needs bins >= 2 (an integer), got bins=2.5"),
        (dict(low=-float("inf"), high=1.0), "policy option two_hot needs a finite number for low, got low=-inf"),
        (dict(low="0", high="1"), "policy option two_hot needs a finite number for low, got low='0'"),
    ],
)
def test_bad_supports_are_rejected(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TwoHot(**options)


def test_an_unknown_key_is_rejected_by_the_policy() -> None:
    with pytest.raises(ValueError, match=r"policy option two_hot has no key\(s\) \['bin'\]"):
        crl.DQN("MlpPolicy", "CartPole-v1", policy_kwargs=dict(two_hot=dict(low=0, high=1, bin=3)))


@pytest.mark.parametrize(("two_hot", "missing"), [(dict(low=0), "['high']"), (dict(bins=3), "['low', 'high']")])
def test_missing_keys_are_named_by_the_policy(two_hot: dict, missing: str) -> None:
    with pytest.raises(ValueError) as error:
        crl.DQN("MlpPolicy", "CartPole-v1", policy_kwargs=dict(two_hot=two_hot))
    assert f"policy option two_hot needs keys low and high (bins is optional, default 51), got {two_hot!r} " in str(
        error.value
    )
    assert str(error.value).endswith(f"without {missing}")


RUNS = {
    "DQN": ("CartPole-v1", 600, dict(learning_starts=100, train_freq=4, target_update_interval=100)),
    "PPO": ("CartPole-v1", 512, dict(n_steps=128, batch_size=64, n_epochs=2)),
    "SAC": ("Pendulum-v1", 300, dict(learning_starts=100)),
}
SUPPORTS = {"DQN": (0.0, 100.0), "PPO": (0.0, 100.0), "SAC": (-200.0, 0.0)}


@pytest.mark.parametrize("name", list(RUNS))
def test_categorical_heads_train(name: str) -> None:
    env_id, steps, kwargs = RUNS[name]
    low, high = SUPPORTS[name]
    two_hot = dict(low=low, high=high, bins=21)
    model = getattr(crl, name)(
        "MlpPolicy", env_id, seed=0, policy_kwargs=dict(net_arch=[32, 32], two_hot=two_hot), **kwargs
    )
    head = {"DQN": "q_net.q_net.4", "PPO": "value_net", "SAC": "critic.qf0.4"}[name]
    outputs = {"DQN": 2 * 21, "PPO": 21, "SAC": 21}[name]
    assert model.policy.get_submodule(head).out_features == outputs
    before = {key: value.clone() for key, value in model.policy.state_dict().items()}
    model.learn(steps)

    after = model.policy.state_dict()
    assert all(th.isfinite(value).all() for value in after.values())
    assert [key for key, value in after.items() if th.equal(value, before[key])] == []  # every parameter moved
    # The values the algorithm acts and bootstraps with are expectations on the support.
    obs = th.as_tensor(model.observation_space.sample()[None])
    if name == "DQN":
        values = model.q_net(obs)
        assert values.shape == (1, 2)
    elif name == "PPO":
        values = model.policy.predict_values(obs)
        assert values.shape == (1, 1)
    else:
        values = th.cat(model.critic(obs, th.zeros(1, 1)), dim=1)
        assert values.shape == (1, 2)
    assert ((values >= low) & (values <= high)).all()


def test_dqn_loss_is_the_cross_entropy_of_the_taken_action() -> None:
    model = crl.DQN(
        "MlpPolicy", "CartPole-v1", seed=0, learning_starts=50, policy_kwargs=dict(two_hot=dict(low=0, high=10))
    )
    model.learn(100)
    batch = model.replay_buffer.sample(8)
    target = model._td_target(batch)
    logits = model.q_net.logits(batch.observations)
    taken = th.stack([logits[i, int(batch.actions[i])] for i in range(8)])
    expected = F.cross_entropy(taken, model.policy.two_hot.encode(target.flatten()))
    th.testing.assert_close(model.training_losses(batch)["q_net"][0], expected)


def test_value_clipping_is_refused_with_a_categorical_value() -> None:
    with pytest.raises(ValueError, match=r"clip_range_vf=0\.2 clips a scalar value estimate"):
        crl.PPO("MlpPolicy", "CartPole-v1", clip_range_vf=0.2, policy_kwargs=dict(two_hot=dict(low=0, high=100)))


def test_the_categorical_head_survives_save_and_load(tmp_path) -> None:
    model = crl.SAC(
        "MlpPolicy",
        "Pendulum-v1",
        seed=0,
        learning_starts=50,
        policy_kwargs=dict(net_arch=[16], two_hot=dict(low=-200, high=0)),
    )
    model.learn(80)
    model.save(tmp_path / "model.zip")
    loaded = crl.SAC.load(tmp_path / "model.zip")
    assert loaded.policy.two_hot == TwoHot(-200.0, 0.0, 51)
    obs, actions = th.zeros(3, 3), th.zeros(3, 1)
    for mine, theirs in zip(model.critic(obs, actions), loaded.critic(obs, actions), strict=True):
        assert th.equal(mine, theirs)


CURRICULUM = {
    "algorithm": "DQN",
    "policy_options": {"net_arch": [16], "two_hot": {"low": 0, "high": 100, "bins": 11}},
    "sequence": {"preset": "cartpole_permuted", "options": {"n_tasks": 2}, "steps_per_task": 100},
}


def test_a_curriculum_takes_the_option() -> None:
    curriculum = validate_curriculum(CURRICULUM)
    model = build_model(curriculum, build_sequence(curriculum), seed=0)
    assert model.policy.two_hot == TwoHot(0.0, 100.0, 11)
    assert model.q_net.q_net[-1].out_features == 2 * 11


@pytest.mark.parametrize(
    ("two_hot", "message"),
    [
        (
            {"low": 5, "high": 0},
            "c.yaml: key 'policy_options.two_hot' = {'low': 5, 'high': 0}: "
            "policy option two_hot needs low < high, got low=5.0, high=0.0",
        ),
        ({"low": 0, "hihg": 1}, "c.yaml: unknown key 'policy_options.two_hot.hihg' (did you mean 'high'?)"),
    ],
)
def test_a_bad_curriculum_value_fails_with_one_line(two_hot: dict, message: str) -> None:
    data = {**CURRICULUM, "policy_options": {"two_hot": two_hot}}
    with pytest.raises(ConfigError) as info:
        validate_curriculum(data, source="c.yaml")
    assert str(info.value).startswith(message), str(info.value)


def test_numpy_numbers_make_a_support() -> None:
    assert TwoHot(np.float32(-10.0), np.float64(10.0), bins=np.int64(5)).support(th.zeros(1)).tolist() == [
        -10.0, -5.0, 0.0, 5.0, 10.0,
    ]  # fmt: skip
