"""Multi-head policies (SAC, TQC, CrossQ, DQN, QR-DQN, PPO): the task id in the observation selects the output head."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch as th
from conftest import SpacesEnv
from gymnasium import spaces
from stable_baselines3.common.logger import Logger
from test_metrics_monitor import _Recorder, expected_metric_keys
from torch import nn

import crl
from crl.interventions import PlasticityInjection
from crl.policies import MultiHeadCrossQPolicy, MultiHeadSACPolicy, MultiHeadTQCPolicy
from crl.policies.layers import InjectedHead
from crl.wrappers import TaskSequence, permuted_observations

ALGORITHMS = {"SAC": crl.SAC, "TQC": crl.TQC, "CrossQ": crl.CrossQ}
OWN_OPTIONS = {"SAC": {}, "TQC": {"n_quantiles": 5}, "CrossQ": {}}
"""Each algorithm's own policy options in these tests (TQC: fewer quantiles, to tell them from heads)."""


@pytest.fixture(scope="module")
def sequence() -> TaskSequence:
    return TaskSequence(permuted_observations("Pendulum-v1", n_tasks=2, steps_per_task=10).tasks, task_id_in_obs=True)


def _model(sequence: TaskSequence, algorithm: str = "SAC", task: int = 0, **kwargs) -> crl.SAC:
    policy_kwargs = dict(n_heads=2, net_arch=[16, 16], **OWN_OPTIONS[algorithm], **kwargs.pop("policy_kwargs", {}))
    env = sequence.make_vec_env(task, seed=0)
    return ALGORITHMS[algorithm]("MultiHeadPolicy", env, policy_kwargs=policy_kwargs, seed=0, **kwargs)


def _observations(task: int) -> th.Tensor:
    base = th.tensor([[0.3, -0.2, 0.5], [0.1, 0.9, -1.0]])
    return th.cat([base, nn.functional.one_hot(th.tensor([task, task]), 2).float()], dim=1)


def _critic_values(critic: nn.Module, observations: th.Tensor, actions: th.Tensor) -> list[th.Tensor]:
    """One tensor per Q-network (quantile network): ``(batch, 1)``, TQC's ``(batch, n_quantiles)``."""
    outputs = critic(observations, actions)
    return list(outputs.unbind(dim=1)) if isinstance(outputs, th.Tensor) else list(outputs)


def _heads(layer: nn.Linear, n_heads: int = 2) -> tuple[th.Tensor, ...]:
    """A stacked output layer's weight and bias rows of each head (views)."""
    return tuple(zip(layer.weight.view(n_heads, -1, layer.in_features), layer.bias.view(n_heads, -1), strict=True))


def test_each_algorithm_takes_its_multi_head_policy_by_name(sequence) -> None:
    classes = {"SAC": MultiHeadSACPolicy, "TQC": MultiHeadTQCPolicy, "CrossQ": MultiHeadCrossQPolicy}
    for algorithm, policy_class in classes.items():
        policy = _model(sequence, algorithm).policy
        assert type(policy) is policy_class and policy.n_heads == 2
        outputs = [policy.actor.mu, policy.actor.log_std, *(q_net[-1] for q_net in policy.critic.q_networks)]
        critic_outputs = 2 * OWN_OPTIONS[algorithm].get("n_quantiles", 1)
        assert [layer.out_features for layer in outputs] == [2, 2, critic_outputs, critic_outputs]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_heads_are_chosen_by_the_task_id(sequence, algorithm: str) -> None:
    policy = _model(sequence, algorithm).policy
    policy.set_training_mode(False)  # CrossQ: BatchRenorm with its running statistics, unchanged by the passes
    actions = th.tensor([[0.5], [-0.5]])

    def outputs(task: int) -> tuple[th.Tensor, list[th.Tensor]]:
        return policy.actor(_observations(task), deterministic=True), _critic_values(
            policy.critic, _observations(task), actions
        )

    before = {task: outputs(task) for task in (0, 1)}
    with th.no_grad():  # move only head 1 of the actor's mean and of the first critic
        policy.actor.mu.bias[1] += 1.0
        _heads(policy.critic.qf0[-1])[1][1].add_(1.0)
    after = {task: outputs(task) for task in (0, 1)}
    th.testing.assert_close(after[0][0], before[0][0])
    th.testing.assert_close(after[0][1], before[0][1])
    assert not th.allclose(after[1][0], before[1][0])
    th.testing.assert_close(after[1][1][0], before[1][1][0] + 1.0)
    th.testing.assert_close(after[1][1][1], before[1][1][1])  # the second critic is untouched


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_only_the_selected_head_gets_gradients(sequence, algorithm: str) -> None:
    policy = _model(sequence, algorithm).policy
    policy.set_training_mode(False)  # CrossQ: in training mode BatchRenorm centres the batch, and a sum's gradient is 0
    values = _critic_values(policy.critic, _observations(1), th.zeros(2, 1))
    values[0].sum().backward()
    output = policy.critic.qf0[-1]
    gradient = output.weight.grad.view(2, -1, output.in_features)
    assert th.count_nonzero(gradient[0]) == 0 and th.count_nonzero(gradient[1]) > 0


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_learning_a_task_leaves_the_other_tasks_heads_as_they_were(sequence, algorithm: str) -> None:
    model = _model(sequence, algorithm, task=1, learning_starts=50, batch_size=32)
    policy = model.policy
    layers = [policy.actor.mu, policy.actor.log_std, *(q_net[-1] for q_net in policy.critic.q_networks)]
    before = [[th.cat([weight.flatten(), bias]).clone() for weight, bias in _heads(layer)] for layer in layers]
    model.learn(150)
    for layer, (head0, head1) in zip(layers, before, strict=True):
        now = [th.cat([weight.flatten(), bias]) for weight, bias in _heads(layer)]
        assert th.equal(now[0], head0) and not th.equal(now[1], head1)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_continual_world_first_layer(sequence, algorithm: str) -> None:
    policy_kwargs = dict(activation_fn=nn.LeakyReLU, first_layer="layer_norm_tanh")
    if algorithm == "CrossQ":
        policy_kwargs["batch_norm"] = False
    policy = _model(sequence, algorithm, policy_kwargs=policy_kwargs).policy
    stacks = [policy.actor.latent_pi, policy.critic.qf0]
    if algorithm != "CrossQ":  # CrossQ has no target critic
        stacks.append(policy.critic_target.qf1)
    for stack in stacks:
        assert [type(module) for module in stack][:5] == [nn.Linear, nn.LayerNorm, nn.Tanh, nn.Linear, nn.LeakyReLU]
    features = policy.hidden_features(_observations(0).numpy())
    assert list(features["actor"]) == ["layer0", "layer1"]
    # the first layer's pre-activation is the LayerNorm's output: zero mean per sample
    th.testing.assert_close(features["actor"]["layer0"].pre.mean(dim=1), th.zeros(2), atol=1e-6, rtol=0)


def _head_rows(layer: nn.Module, head: int, n_heads: int = 2) -> th.Tensor:
    """The raw (trained) weight rows of one head of a stacked output layer."""
    raw = layer.parametrizations.weight.original
    return raw.view(n_heads, -1, raw.shape[1])[head].detach().clone()


@pytest.mark.parametrize(
    ("algorithm", "option"), [("SAC", "head"), ("SAC", "all"), ("TQC", "head"), ("CrossQ", "head")]
)
def test_spectral_norm_normalises_each_head_on_its_own(sequence, algorithm: str, option: str) -> None:
    """One sigma for the stacked heads would let task 1's updates move task 0's head."""
    # Task 1 only: head 1 is selected
    model = _model(sequence, algorithm, task=1, policy_kwargs=dict(spectral_norm=option), learning_starts=50)
    policy = model.policy
    heads = [policy.actor.mu, policy.actor.log_std, policy.critic.qf0[-1], policy.critic.qf1[-1]]
    before = [(_head_rows(layer, 0), _head_rows(layer, 1)) for layer in heads]
    model.learn(150)
    for layer, (head0, head1) in zip(heads, before, strict=True):
        assert th.equal(_head_rows(layer, 0), head0)  # task 0's head is untouched
        assert not th.equal(_head_rows(layer, 1), head1)
    targets = [] if algorithm == "CrossQ" else [policy.critic_target.qf0[-1]]
    with th.no_grad():
        for layer in [*heads, *targets]:  # TQC's heads of 5 rows: power iterations to convergence
            layer.train(True)
            for _ in range(50):
                _ = layer.weight  # each read in training mode steps the power method
        policy.set_training_mode(False)
        for layer in [*heads, *targets]:  # each head's normalised weight has spectral norm 1
            for block in layer.weight.view(2, -1, layer.weight.shape[1]):
                assert float(th.linalg.matrix_norm(block, ord=2)) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_multi_head_policy_survives_save_and_load(sequence, tmp_path, algorithm: str) -> None:
    policy_kwargs = dict(first_layer="layer_norm_tanh", batch_norm=False) if algorithm == "CrossQ" else {}
    model = _model(sequence, algorithm, policy_kwargs=policy_kwargs or dict(first_layer="layer_norm_tanh"))
    model.save(tmp_path / "model")
    loaded = ALGORITHMS[algorithm].load(tmp_path / "model")
    assert type(loaded.policy) is type(model.policy) and loaded.policy.n_heads == 2
    assert loaded.policy.first_layer == "layer_norm_tanh"
    observations = _observations(1)
    th.testing.assert_close(
        loaded.policy.actor(observations, deterministic=True), model.policy.actor(observations, deterministic=True)
    )
    actions = th.zeros(2, 1)
    model.policy.set_training_mode(False)
    loaded.policy.set_training_mode(False)
    th.testing.assert_close(
        _critic_values(loaded.policy.critic, observations, actions),
        _critic_values(model.policy.critic, observations, actions),
    )


@pytest.mark.parametrize(
    ("algorithm", "kwargs", "message"),
    [
        ("SAC", dict(), r"MultiHeadPolicy needs policy_kwargs=\{'n_heads': N\}: N is the length of the one-hot"),
        ("SAC", dict(n_heads=0), "n_heads must be a positive int, got 0"),
        ("TQC", dict(n_heads=True), "n_heads must be a positive int, got True"),
        (
            "SAC",
            dict(n_heads=2, first_layer="layer_norm_tanh", net_arch=[]),
            r"first_layer='layer_norm_tanh' needs at least one hidden layer in every network, got net_arch=\[\]",
        ),
        (
            "TQC",
            dict(n_heads=2, first_layer="layer_norm_tanh", net_arch=dict(pi=[8], qf=[])),
            "needs at least one hidden layer",
        ),
        ("CrossQ", dict(n_heads=5), r"n_heads=5 leaves no observation before the task id \(observation size 5\)"),
        ("SAC", dict(n_heads=2, first_layer="relu"), "first_layer='relu' is not allowed"),
        ("SAC", dict(n_heads=2, first_layer="layer_norm_tanh", layer_norm="pre"), "use it without layer_norm"),
        ("SAC", dict(n_heads=2, use_sde=True), "does not support use_sde=True"),
        ("TQC", dict(n_heads=2, use_sde=True), "does not support use_sde=True"),
        ("TQC", dict(n_heads=2, two_hot=dict(low=-1, high=1, bins=11)), "two_hot"),
        (
            "CrossQ",
            dict(n_heads=2, first_layer="layer_norm_tanh"),
            "first_layer='layer_norm_tanh' is not supported by CrossQ with batch_norm=True",
        ),
    ],
)
def test_bad_options_are_rejected(sequence, algorithm: str, kwargs, message) -> None:
    env = sequence.make_vec_env(0)
    with pytest.raises(ValueError, match=message):
        use_sde = kwargs.pop("use_sde", False)
        options = dict(use_sde=use_sde) if use_sde else {}
        ALGORITHMS[algorithm]("MultiHeadPolicy", env, policy_kwargs=kwargs, **options)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_plasticity_injection_keeps_every_tasks_outputs(sequence, algorithm: str) -> None:
    model = _model(sequence, algorithm, learning_starts=50, batch_size=32)
    model.learn(100)
    policy = model.policy
    policy.set_training_mode(False)  # CrossQ: BatchRenorm with its running statistics
    critics = [policy.critic] if algorithm == "CrossQ" else [policy.critic, policy.critic_target]
    actions = th.tensor([[0.5], [-0.5]])

    def outputs() -> list[th.Tensor]:
        return [
            output
            for task in (0, 1)
            for output in (
                policy.actor(_observations(task), deterministic=True),
                *(value for critic in critics for value in _critic_values(critic, _observations(task), actions)),
            )
        ]

    before = outputs()
    PlasticityInjection(at_step=1).inject(model)
    assert isinstance(policy.critic.qf1[-1], InjectedHead) and isinstance(policy.actor.mu, InjectedHead)
    for expected, now in zip(before, outputs(), strict=True):
        assert th.equal(now, expected)


VALUE_BASED = {"DQN": crl.DQN, "QRDQN": crl.QRDQN}


@pytest.fixture(scope="module")
def cartpoles() -> TaskSequence:
    return TaskSequence(permuted_observations("CartPole-v1", n_tasks=2, steps_per_task=10).tasks, task_id_in_obs=True)


def _value_model(sequence: TaskSequence, algorithm: str, task: int = 0, **policy_kwargs) -> crl.DQN:
    kwargs = dict(n_heads=2, net_arch=[16], **policy_kwargs)
    if algorithm == "QRDQN":
        kwargs.setdefault("n_quantiles", 5)
    env = sequence.make_vec_env(task, seed=0)
    return VALUE_BASED[algorithm](
        "MultiHeadPolicy", env, policy_kwargs=kwargs, seed=0, learning_starts=50, batch_size=16, train_freq=4
    )


def _cartpole_observations(task: int) -> th.Tensor:
    base = th.tensor([[0.03, -0.2, 0.05, 0.3], [-0.1, 0.4, -0.02, -0.6]])
    return th.cat([base, nn.functional.one_hot(th.tensor([task, task]), 2).float()], dim=1)


def _network(model: crl.DQN) -> nn.Module:
    """The trained network: DQN's ``q_net``, QR-DQN's ``quantile_net``."""
    return model.q_net if isinstance(model, crl.DQN) else model.quantile_net


@pytest.mark.parametrize("algorithm", VALUE_BASED)
def test_value_based_heads_are_chosen_by_the_task_id_and_act_greedily(cartpoles, algorithm: str) -> None:
    model = _value_model(cartpoles, algorithm)
    policy_class = crl.policies.MultiHeadDQNPolicy if algorithm == "DQN" else crl.policies.MultiHeadQRDQNPolicy
    assert type(model.policy) is policy_class
    network = _network(model)
    output = network.q_net[-1] if algorithm == "DQN" else network.quantile_net[-1]
    assert output.out_features == 2 * 2 * (5 if algorithm == "QRDQN" else 1)  # heads x actions (x quantiles)
    before = {task: network(_cartpole_observations(task)) for task in (0, 1)}
    with th.no_grad():
        _heads(output)[1][1].add_(1.0)  # every output of head 1
    th.testing.assert_close(network(_cartpole_observations(0)), before[0])
    th.testing.assert_close(network(_cartpole_observations(1)), before[1] + 1.0)
    with th.no_grad():  # head 1 prefers action 1, head 0 action 0
        _heads(output)[0][1].view(-1, 2)[:, 0] += 100.0
        _heads(output)[1][1].view(-1, 2)[:, 1] += 100.0
    for task in (0, 1):
        actions, _ = model.predict(_cartpole_observations(task).numpy(), deterministic=True)
        assert list(actions) == [task, task]


@pytest.mark.parametrize("algorithm", VALUE_BASED)
def test_value_based_learning_a_task_leaves_the_other_tasks_head_as_it_was(cartpoles, algorithm: str) -> None:
    model = _value_model(cartpoles, algorithm, task=1)
    network = _network(model)
    output = network.q_net[-1] if algorithm == "DQN" else network.quantile_net[-1]
    before = [th.cat([weight.flatten(), bias]).clone() for weight, bias in _heads(output)]
    model.learn(200)
    now = [th.cat([weight.flatten(), bias]) for weight, bias in _heads(output)]
    assert th.equal(now[0], before[0]) and not th.equal(now[1], before[1])


@pytest.mark.parametrize("algorithm", VALUE_BASED)
def test_value_based_multi_head_policy_survives_save_load_and_an_injection(cartpoles, tmp_path, algorithm: str) -> None:
    model = _value_model(cartpoles, algorithm, first_layer="layer_norm_tanh", spectral_norm="head")
    model.learn(100)
    observations = th.cat([_cartpole_observations(0), _cartpole_observations(1)])
    model.policy.set_training_mode(False)
    expected = _network(model)(observations)
    model.save(tmp_path / "model")
    loaded = VALUE_BASED[algorithm].load(tmp_path / "model")
    assert type(loaded.policy) is type(model.policy) and loaded.policy.n_heads == 2
    loaded.policy.set_training_mode(False)
    th.testing.assert_close(_network(loaded)(observations), expected)
    PlasticityInjection(at_step=1).inject(model)
    assert th.equal(_network(model)(observations), expected)


PPO_SPACES = ("box", "discrete")
"""PPO's multi-head policy on Pendulum (a Gaussian with one ``log_std`` block per task) and on CartPole."""


def _ppo_case(request: pytest.FixtureRequest, space: str) -> tuple[TaskSequence, Callable[[int], th.Tensor]]:
    """The two-task sequence of ``space`` and its observations of a task."""
    if space == "box":
        return request.getfixturevalue("sequence"), _observations
    return request.getfixturevalue("cartpoles"), _cartpole_observations


def _ppo(sequence: TaskSequence, task: int = 0, **kwargs: Any) -> crl.PPO:
    policy_kwargs = dict(n_heads=2, net_arch=[16, 16], **kwargs.pop("policy_kwargs", {}))
    env = sequence.make_vec_env(task, seed=0)
    options = dict(n_steps=64, batch_size=32, n_epochs=2, seed=0, device="cpu")
    return crl.PPO("MultiHeadPolicy", env, policy_kwargs=policy_kwargs, **{**options, **kwargs})


def _ppo_heads(policy: nn.Module) -> dict[str, tuple[th.Tensor, th.Tensor]]:
    """Each per-task output of a multi-head PPO policy, as (head 0, head 1) copies of its parameters."""
    layers = {"action_net": policy.action_net, "value_net": policy.value_net}
    heads = {name: tuple(th.cat([w.flatten(), b]).clone() for w, b in _heads(layer)) for name, layer in layers.items()}
    if hasattr(policy, "log_std"):
        heads["log_std"] = tuple(policy.log_std.detach().view(2, -1).clone())
    return heads


def _evaluated(policy: nn.Module, observations: th.Tensor, actions: th.Tensor) -> list[th.Tensor]:
    values, log_prob, entropy = policy.evaluate_actions(observations, actions)
    return [values, log_prob, entropy]


def _actions(space: str) -> th.Tensor:
    return th.tensor([[0.5], [-0.5]]) if space == "box" else th.tensor([0, 1])


@pytest.mark.parametrize("space", PPO_SPACES)
def test_ppo_heads_give_what_a_single_head_policy_holding_the_tasks_head_gives(request, space: str) -> None:
    sequence, observations = _ppo_case(request, space)
    multi = _ppo(sequence).policy
    with th.no_grad():  # heads that differ, so that choosing the wrong one shows
        multi.action_net.bias.copy_(th.arange(multi.action_net.out_features, dtype=th.float32))
        multi.value_net.bias.copy_(th.tensor([-1.0, 2.0]))
        if space == "box":
            multi.log_std.copy_(th.tensor([-1.0, 0.5]))
    single = crl.PPO("MlpPolicy", sequence.make_vec_env(0), policy_kwargs=dict(net_arch=[16, 16]), n_steps=64).policy
    single.mlp_extractor.load_state_dict(multi.mlp_extractor.state_dict())
    for task in (0, 1):
        with th.no_grad():
            for name in ("action_net", "value_net"):
                (weight, bias), layer = _heads(getattr(multi, name))[task], getattr(single, name)
                layer.weight.copy_(weight)
                layer.bias.copy_(bias)
            if space == "box":
                single.log_std.copy_(multi.log_std.view(2, -1)[task])
        obs, actions = observations(task), _actions(space)
        for expected, got in zip(_evaluated(single, obs, actions), _evaluated(multi, obs, actions), strict=True):
            th.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
        th.testing.assert_close(multi.predict_values(obs), single.predict_values(obs), rtol=1e-6, atol=1e-7)
        th.testing.assert_close(multi(obs, deterministic=True)[0], single(obs, deterministic=True)[0])
        expected = single.get_distribution(obs).distribution
        got = multi.get_distribution(obs).distribution
        if space == "box":
            th.testing.assert_close(got.stddev, expected.stddev)
            th.testing.assert_close(got.mean, expected.mean, rtol=1e-6, atol=1e-7)
        else:
            th.testing.assert_close(got.logits, expected.logits, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("space", PPO_SPACES)
def test_ppo_direct_pass_matches_the_module_calls_and_every_entry_point(request, space: str) -> None:
    sequence, observations = _ppo_case(request, space)
    policy = _ppo(sequence).policy
    obs = th.cat([observations(0), observations(1)])
    actions, values, log_prob = policy(obs, deterministic=True)
    handle = th.nn.modules.module.register_module_forward_hook(lambda *_: None)  # any hook: module calls
    try:
        module_actions, module_values, module_log_prob = policy(obs, deterministic=True)
    finally:
        handle.remove()
    assert th.equal(module_actions, actions) and th.equal(module_values, values)
    assert th.equal(module_log_prob, log_prob)
    evaluated_values, evaluated_log_prob, _ = policy.evaluate_actions(obs, actions)
    assert th.equal(evaluated_values, values) and th.equal(evaluated_log_prob, log_prob)
    assert th.equal(policy.predict_values(obs), values)


@pytest.mark.parametrize("space", PPO_SPACES)
def test_ppo_only_the_selected_head_gets_gradients_and_learns(request, space: str) -> None:
    sequence, observations = _ppo_case(request, space)
    model = _ppo(sequence, task=1)
    policy = model.policy
    values, log_prob, entropy = policy.evaluate_actions(observations(1), _actions(space))
    (values.sum() + log_prob.sum() + entropy.sum()).backward()
    gradients = [policy.action_net.weight.grad, policy.action_net.bias.grad, policy.value_net.bias.grad]
    if space == "box":
        gradients.append(policy.log_std.grad)
    for gradient in gradients:
        head0, head1 = gradient.view(2, -1, *gradient.shape[1:])
        assert th.count_nonzero(head0) == 0 and th.count_nonzero(head1) > 0
    policy.zero_grad()

    before = _ppo_heads(policy)
    model.learn(128)
    for name, (head0, head1) in _ppo_heads(policy).items():
        assert th.equal(head0, before[name][0]), name
        assert not th.equal(head1, before[name][1]), name


def test_ppo_multi_head_options_first_layer_spectral_norm_save_load_and_injection(cartpoles, tmp_path) -> None:
    options = dict(first_layer="layer_norm_tanh", spectral_norm="head", activation_fn=nn.ReLU)
    model = _ppo(cartpoles, task=1, policy_kwargs=options)
    policy = model.policy
    for stack in (policy.mlp_extractor.policy_net, policy.mlp_extractor.value_net):
        assert [type(module) for module in stack] == [nn.Linear, nn.LayerNorm, nn.Tanh, nn.Linear, nn.ReLU]
    assert type(policy.action_net.parametrizations.weight[0]).__name__ == "HeadwiseSpectralNorm"
    heads = [policy.action_net, policy.value_net]
    before = [(_head_rows(layer, 0), _head_rows(layer, 1)) for layer in heads]
    model.learn(128)
    for layer, (head0, head1) in zip(heads, before, strict=True):
        assert th.equal(_head_rows(layer, 0), head0) and not th.equal(_head_rows(layer, 1), head1)

    obs = th.cat([_cartpole_observations(0), _cartpole_observations(1)])
    policy.set_training_mode(False)
    expected = _evaluated(policy, obs, th.tensor([0, 1, 1, 0]))
    model.save(tmp_path / "model")
    loaded = crl.PPO.load(tmp_path / "model")
    assert type(loaded.policy) is crl.policies.MultiHeadActorCriticPolicy and loaded.policy.n_heads == 2
    loaded.policy.set_training_mode(False)
    for got, value in zip(_evaluated(loaded.policy, obs, th.tensor([0, 1, 1, 0])), expected, strict=True):
        assert th.equal(got, value)
    PlasticityInjection(at_step=1).inject(model)
    assert isinstance(policy.action_net, InjectedHead) and isinstance(policy.value_net, InjectedHead)
    for got, value in zip(_evaluated(policy, obs, th.tensor([0, 1, 1, 0])), expected, strict=True):
        assert th.equal(got, value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(), r"MultiHeadPolicy needs policy_kwargs=\{'n_heads': N\}"),
        (dict(n_heads=0), "n_heads must be a positive int, got 0"),
        (dict(n_heads=2, use_sde=True), "does not support use_sde=True"),
        (dict(n_heads=2, two_hot=dict(low=-1, high=1, bins=11)), "two_hot"),
        (dict(n_heads=5), r"n_heads=5 leaves no observation before the task id \(observation size 5\)"),
        (
            dict(n_heads=2, first_layer="layer_norm_tanh", net_arch=dict(pi=[8], vf=[])),
            "needs at least one hidden layer in every network",
        ),
    ],
)
def test_ppo_bad_multi_head_options_are_rejected(sequence, kwargs, message) -> None:
    use_sde = kwargs.pop("use_sde", False)
    with pytest.raises(ValueError, match=message):
        crl.PPO("MultiHeadPolicy", sequence.make_vec_env(0), policy_kwargs=kwargs, use_sde=use_sde, n_steps=64)


def test_multi_head_policy_needs_observations_it_can_read_the_task_id_from() -> None:
    with pytest.raises(ValueError, match="MultiHeadPolicy needs a flat Box observation space ending with the task id"):
        crl.PPO("MultiHeadPolicy", "FrozenLake-v1", policy_kwargs=dict(n_heads=2), n_steps=64)
    frames = spaces.Box(0, 255, (36, 36, 1), np.uint8)
    for keys in ({"observation": frames}, {"observation": frames, "task_id": spaces.Box(0, 1, (3,), np.float32)}):
        with pytest.raises(ValueError, match=r"n_heads=2: MultiHeadPolicy reads the task id from the key 'task_id' "):
            crl.DQN("MultiHeadPolicy", SpacesEnv(spaces.Dict(keys)), policy_kwargs=dict(n_heads=2), buffer_size=100)


DICT_CASES = {
    "DQN": None,
    "QRDQN": None,
    "PPO_discrete": None,
    "PPO_box": spaces.Box(-1, 1, (2,), np.float32),
    "SAC": spaces.Box(-1, 1, (2,), np.float32),
    "TQC": spaces.Box(-1, 1, (2,), np.float32),
}


def _network_outputs(model: Any, obs: Any) -> list[th.Tensor]:
    """Every network's head outputs (through the direct passes where the algorithm has them)."""
    policy = model.policy
    if isinstance(model, crl.QRDQN):
        return [policy.quantile_net(obs), policy._predict(obs)]
    if isinstance(model, crl.DQN):
        return [policy.q_net(obs), policy.q_net_target(obs), policy._predict(obs)]
    if isinstance(model, crl.PPO):
        actions = policy(obs, deterministic=True)[0]
        return [actions, *policy.evaluate_actions(obs, actions), policy.predict_values(obs)]
    actions = policy.actor(obs, deterministic=True)
    critic = policy.critic(obs, actions)
    return [actions, *(critic if isinstance(critic, tuple) else [critic])]


@pytest.mark.parametrize("case", DICT_CASES)
def test_heads_read_the_task_id_key_of_dict_observations(case: str) -> None:
    """A dict of a grid and the task id is flattened and concatenated in key order: the same network as the
    flat observation ending with the id, so every head output matches it bitwise, each sample's own head."""
    algorithm, actions = case.split("_")[0], DICT_CASES[case]
    grid, code = spaces.Box(-1, 1, (2, 2, 1), np.float32), spaces.Box(0, 1, (3,), np.float32)
    split = SpacesEnv(spaces.Dict({"observation": grid, "task_id": code}), actions)
    joined = SpacesEnv(spaces.Box(-1, 1, (7,), np.float32), actions)
    settings = dict(n_steps=32, batch_size=32) if algorithm == "PPO" else dict(buffer_size=100)
    settings |= dict(seed=0, policy_kwargs=dict(n_heads=3, net_arch=[16]))
    models = [getattr(crl, algorithm)("MultiHeadPolicy", env, **settings) for env in (split, joined)]
    grids = th.as_tensor(np.random.default_rng(0).uniform(-1, 1, (9, 2, 2, 1)).astype(np.float32))
    codes = th.eye(3)[th.tensor([0, 1, 2] * 3)]
    with th.no_grad():
        ours = _network_outputs(models[0], {"observation": grids, "task_id": codes})
        flat = _network_outputs(models[1], th.cat([grids.flatten(1), codes], dim=1))
    assert len(ours) == len(flat) and all(th.equal(a, b) for a, b in zip(ours, flat, strict=True))
    models[0].learn(64)  # and it trains on them


PPO_INTERVENTIONS: dict[str, dict[str, Any]] = {
    "layer_norm": {"name": "layer_norm"},
    "normalize_and_project": {"name": "normalize_and_project"},
    "weight_decay": {"name": "weight_decay", "weight_decay": 0.1},
    "l2_init": {"name": "l2_init", "l2_init": 0.1},
    "reset": {"name": "reset", "at_steps": [128], "parts": "full"},
    "reset_head": {"name": "reset", "at_steps": [128], "parts": "head"},
    "shrink_perturb": {"name": "shrink_perturb", "at_steps": [128]},
    "redo": {"name": "redo", "every": 64, "tau": 0.5, "probe_size": 32},
    "regrama": {"name": "regrama", "every": 64, "tau": 0.5, "probe_size": 32},
    "continual_backprop": {"name": "continual_backprop", "replacement_rate": 0.1, "maturity": 4},
    "plasticity_injection": {"name": "plasticity_injection", "at_step": 128},
    "reset_optimizer": {"name": "reset_optimizer", "at_steps": [128]},
    "pfo": {"name": "pfo", "coef": 10.0},
    "weight_clipping": {"name": "weight_clipping", "kappa": 0.5},
    "parseval": {"name": "parseval", "coef": 0.01},
    "sam": {"name": "sam", "rho": 0.1},
    "trac": {"name": "trac"},
}
"""Each intervention PPO takes, set to act inside a 256-step run on task 1."""


@functools.cache
def _ppo_reference() -> dict[str, th.Tensor]:
    """The multi-head policy's parameters after the same run without interventions."""
    tasks = permuted_observations("Pendulum-v1", n_tasks=2, steps_per_task=10).tasks
    model = _ppo(TaskSequence(tasks, task_id_in_obs=True), task=1)
    model.learn(256)
    return {key: value.clone() for key, value in model.policy.state_dict().items()}


@pytest.mark.parametrize("intervention", list(PPO_INTERVENTIONS))
def test_every_ppo_intervention_acts_on_the_multi_head_policy(sequence, intervention: str) -> None:
    model = _ppo(sequence, task=1, interventions=[PPO_INTERVENTIONS[intervention]])
    model.learn(256)
    trained = {key: value.clone() for key, value in model.policy.state_dict().items()}
    reference = _ppo_reference()
    if set(trained) == set(reference):
        assert any(not th.equal(trained[key], reference[key]) for key in reference), f"{intervention} did nothing"
    else:  # new modules: LayerNorm's, an injected head's
        assert intervention in ("layer_norm", "normalize_and_project", "plasticity_injection"), sorted(
            set(trained) ^ set(reference)
        )
    assert all(th.isfinite(value).all() for value in trained.values() if value.is_floating_point())
    for task in (0, 1):  # both heads still act
        actions, _ = model.predict(_observations(task).numpy(), deterministic=True)
        assert actions.shape == (2, 1) and np.isfinite(actions).all()


def test_ppo_multi_head_policy_gets_every_metric(sequence) -> None:
    every_metric = dict(every=64, plasticity_probe_every=128, hessian_every=128, grama_every=128, probe_batch_size=32)
    model = _ppo(sequence, task=1, metrics=every_metric)
    recorder = _Recorder()
    model.set_logger(Logger(folder=None, output_formats=[recorder]))
    model.learn(256)
    logged = {key for dump in recorder.dumps for key in dump}
    expected = expected_metric_keys(["actor", "critic"], ["policy"])
    assert expected <= logged, sorted(expected - logged)
    values = model.metrics_monitor.latest
    assert all(np.isfinite(value) for value in values.values())


@pytest.mark.parametrize("algorithm", VALUE_BASED)
def test_value_based_direct_passes_match_the_module_calls(cartpoles, algorithm: str, monkeypatch) -> None:
    """Acting and both passes of a gradient step call the layers directly, with the module calls' results."""
    model = _value_model(cartpoles, algorithm)
    model.learn(100)
    policy = model.policy
    observations = th.cat([_cartpole_observations(0), _cartpole_observations(1)])
    passes = policy.q_values if algorithm == "DQN" else policy.quantiles
    networks = {False: _network(model), True: policy.q_net_target if algorithm == "DQN" else policy.quantile_net_target}
    expected = {target: network(observations) for target, network in networks.items()}
    calls = []
    for network in networks.values():  # a module call runs forward; the direct pass does not
        monkeypatch.setattr(network, "forward", lambda *args, **kwargs: calls.append(args))
    for target in (False, True):
        assert th.equal(passes(observations, target=target), expected[target])
    actions, _ = model.predict(observations.numpy(), deterministic=True)
    assert calls == []
    values = expected[False] if algorithm == "DQN" else expected[False].mean(dim=1)
    assert list(actions) == values.argmax(dim=1).tolist()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_critic_direct_passes_match_the_module_calls(sequence, algorithm: str, monkeypatch) -> None:
    """The critics' passes of a gradient step call the layers directly, with the module calls' results."""
    model = _model(sequence, algorithm, learning_starts=50, batch_size=32)
    model.learn(100)
    policy = model.policy
    policy.set_training_mode(False)  # CrossQ: BatchRenorm with its running statistics, unchanged by the passes
    observations = th.cat([_observations(0), _observations(1)])
    actions = th.tensor([[0.5], [-0.5], [0.1], [-0.9]])
    critics = {False: policy.critic} if algorithm == "CrossQ" else {False: policy.critic, True: policy.critic_target}
    expected = {target: _critic_values(critic, observations, actions) for target, critic in critics.items()}
    calls = []
    for critic in critics.values():  # a module call runs forward; the direct pass does not
        monkeypatch.setattr(critic, "forward", lambda *args, **kwargs: calls.append(args))
    for target in critics:
        outputs = policy.critic_outputs(observations, actions, target=target)
        assert all(th.equal(got, value) for got, value in zip(outputs, expected[target], strict=True))
    assert calls == []
