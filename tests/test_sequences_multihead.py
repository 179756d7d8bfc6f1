"""Multi-head SAC policies: the task id in the observation selects the output head."""

from __future__ import annotations

import pytest
import torch as th
from torch import nn

import crl
from crl.policies import MultiHeadSACPolicy
from crl.wrappers import TaskSequence, permuted_observations


@pytest.fixture(scope="module")
def sequence() -> TaskSequence:
    return TaskSequence(permuted_observations("Pendulum-v1", n_tasks=2, steps_per_task=10).tasks, task_id_in_obs=True)


def _model(sequence: TaskSequence, **policy_kwargs) -> crl.SAC:
    kwargs = dict(n_heads=2, net_arch=[16, 16], **policy_kwargs)
    return crl.SAC(MultiHeadSACPolicy, sequence.make_vec_env(0, seed=0), policy_kwargs=kwargs, seed=0)


def _observations(task: int) -> th.Tensor:
    base = th.tensor([[0.3, -0.2, 0.5], [0.1, 0.9, -1.0]])
    return th.cat([base, nn.functional.one_hot(th.tensor([task, task]), 2).float()], dim=1)


def test_heads_are_chosen_by_the_task_id(sequence) -> None:
    policy = _model(sequence).policy
    actions = th.tensor([[0.5], [-0.5]])
    before = {
        task: (policy.actor(_observations(task), deterministic=True), policy.critic(_observations(task), actions))
        for task in (0, 1)
    }
    with th.no_grad():  # move only head 1 of the actor's mean and of the first critic
        policy.actor.mu.bias[1] += 1.0
        policy.critic.qf0[-1].bias[1] += 1.0
    after = {
        task: (policy.actor(_observations(task), deterministic=True), policy.critic(_observations(task), actions))
        for task in (0, 1)
    }
    th.testing.assert_close(after[0][0], before[0][0])
    th.testing.assert_close(after[0][1][0], before[0][1][0])
    assert not th.allclose(after[1][0], before[1][0])
    th.testing.assert_close(after[1][1][0], before[1][1][0] + 1.0)
    th.testing.assert_close(after[1][1][1], before[1][1][1])  # the second critic is untouched


def test_only_the_selected_head_gets_gradients(sequence) -> None:
    policy = _model(sequence).policy
    q_values, _ = policy.critic(_observations(1), th.zeros(2, 1))
    q_values.sum().backward()
    gradient = policy.critic.qf0[-1].weight.grad
    assert th.count_nonzero(gradient[0]) == 0 and th.count_nonzero(gradient[1]) > 0


def test_continual_world_first_layer(sequence) -> None:
    policy = _model(sequence, activation_fn=nn.LeakyReLU, first_layer="layer_norm_tanh").policy
    for stack in (policy.actor.latent_pi, policy.critic.qf0, policy.critic_target.qf1):
        assert [type(module) for module in stack][:5] == [nn.Linear, nn.LayerNorm, nn.Tanh, nn.Linear, nn.LeakyReLU]
    assert policy.critic.qf0[-1].out_features == 2 and policy.actor.mu.out_features == 2
    features = policy.hidden_features(_observations(0).numpy())
    assert list(features["actor"]) == ["layer0", "layer1"]
    # the first layer's pre-activation is the LayerNorm's output: zero mean per sample
    th.testing.assert_close(features["actor"]["layer0"].pre.mean(dim=1), th.zeros(2), atol=1e-6, rtol=0)


def _head_rows(layer: nn.Module, head: int, n_heads: int = 2) -> th.Tensor:
    """The raw (trained) weight rows of one head of a stacked output layer."""
    raw = layer.parametrizations.weight.original
    return raw.view(n_heads, -1, raw.shape[1])[head].detach().clone()


@pytest.mark.parametrize("option", ["head", "all"])
def test_spectral_norm_normalises_each_head_on_its_own(sequence, option: str) -> None:
    """One sigma for the stacked heads would let task 1's updates move task 0's head."""
    model = crl.SAC(
        MultiHeadSACPolicy,
        sequence.make_vec_env(1, seed=0),  # task 1 only: head 1 is selected
        policy_kwargs=dict(n_heads=2, net_arch=[16, 16], spectral_norm=option),
        learning_starts=50,
        seed=0,
    )
    policy = model.policy
    heads = [policy.actor.mu, policy.actor.log_std, policy.critic.qf0[-1], policy.critic.qf1[-1]]
    before = [(_head_rows(layer, 0), _head_rows(layer, 1)) for layer in heads]
    model.learn(150)
    for layer, (head0, head1) in zip(heads, before, strict=True):
        assert th.equal(_head_rows(layer, 0), head0)  # task 0's head is untouched
        assert not th.equal(_head_rows(layer, 1), head1)
    policy.set_training_mode(False)
    with th.no_grad():  # each head's normalised weight has spectral norm 1
        for layer in [*heads, policy.critic_target.qf0[-1]]:
            for block in layer.weight.view(2, -1, layer.weight.shape[1]):
                assert float(th.linalg.matrix_norm(block, ord=2)) == pytest.approx(1.0, abs=1e-3)


def test_multi_head_policy_survives_save_and_load(sequence, tmp_path) -> None:
    model = _model(sequence, first_layer="layer_norm_tanh")
    model.save(tmp_path / "model")
    loaded = crl.SAC.load(tmp_path / "model")
    assert isinstance(loaded.policy, MultiHeadSACPolicy) and loaded.policy.n_heads == 2
    observations = _observations(1)
    th.testing.assert_close(
        loaded.policy.actor(observations, deterministic=True), model.policy.actor(observations, deterministic=True)
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(n_heads=0), "n_heads must be a positive int, got 0"),
        (dict(n_heads=True), "n_heads must be a positive int, got True"),
        (
            dict(n_heads=2, first_layer="layer_norm_tanh", net_arch=[]),
            r"first_layer='layer_norm_tanh' needs at least one hidden layer in the actor and the critics, "
            r"got net_arch=\[\]",
        ),
        (
            dict(n_heads=2, first_layer="layer_norm_tanh", net_arch=dict(pi=[8], qf=[])),
            "needs at least one hidden layer",
        ),
        (dict(n_heads=5), r"n_heads=5 leaves no observation before the task id \(observation size 5\)"),
        (dict(n_heads=2, first_layer="relu"), "first_layer='relu' is not allowed"),
        (dict(n_heads=2, first_layer="layer_norm_tanh", layer_norm="pre"), "use it without layer_norm"),
        (dict(n_heads=2, use_sde=True), "does not support use_sde=True"),
    ],
)
def test_bad_options_are_rejected(sequence, kwargs, message) -> None:
    env = sequence.make_vec_env(0)
    with pytest.raises(ValueError, match=message):
        use_sde = kwargs.pop("use_sde", False)
        crl.SAC(MultiHeadSACPolicy, env, policy_kwargs=kwargs, use_sde=use_sde)
