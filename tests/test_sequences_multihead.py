"""Multi-head policies (SAC, TQC, CrossQ, DQN, QR-DQN): the task id in the observation selects the output head."""

from __future__ import annotations

import pytest
import torch as th
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
