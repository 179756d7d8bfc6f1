"""Weight clipping: the bounds, the clip after each optimizer step, which layers, and its effect on training."""

from __future__ import annotations

import math

import pytest
import torch as th
from stable_baselines3.dqn.policies import DQNPolicy as SB3DQNPolicy
from test_sb3_equivalence import CASES, assert_same_training
from torch import nn

import crl
from crl.hooks import GradientStep
from crl.interventions import InterventionError, PlasticityInjection, WeightClipping
from crl.interventions.weight_clipping import fraction_at_bound, init_bound

DQN_KWARGS = dict(learning_starts=50, train_freq=1, seed=0)


def test_the_bound_is_that_of_torchs_default_initialisation() -> None:
    assert init_bound(nn.Linear(4, 64)) == 1 / math.sqrt(4)
    assert init_bound(nn.Conv2d(4, 32, kernel_size=8)) == 1 / math.sqrt(4 * 8 * 8)
    th.manual_seed(0)
    for layer in (nn.Linear(16, 300), nn.Conv2d(3, 200, kernel_size=3)):
        bound = init_bound(layer)  # the extremes of a large draw come close to it, never past it
        for parameter in (layer.weight, layer.bias):
            assert 0.95 * bound < parameter.abs().max() <= bound


def _step(model, clipping: WeightClipping, optimizer: th.optim.Optimizer) -> None:
    clipping.after_optimizer_step(model, GradientStep(0, None, optimizer=optimizer))


def test_every_weight_and_bias_is_clipped_to_kappa_times_its_layers_bound() -> None:
    clipping = WeightClipping(kappa=2.0)
    model = crl.DQN("MlpPolicy", "CartPole-v1", interventions=[clipping], **DQN_KWARGS)
    th.manual_seed(1)
    with th.no_grad():
        for parameter in model.q_net.parameters():
            parameter.normal_(0.0, 1.0)  # well past every bound
    before = {name: p.detach().clone() for name, p in model.q_net.named_parameters()}
    _step(model, clipping, model.policy.optimizer)
    fan_ins = {"q_net.0": 4, "q_net.2": 64, "q_net.4": 64}
    for name, parameter in model.q_net.named_parameters():
        bound = 2.0 * (1.0 / math.sqrt(fan_ins[name.rpartition(".")[0]]))
        expected = before[name].clamp(-bound, bound)
        assert th.equal(parameter, expected), name
        assert (parameter.abs() == th.tensor(bound)).any(), name
        if name.endswith("weight"):  # a N(0, 1) draw puts some entries inside the bound, which stay
            assert (parameter.abs() < bound).any(), name


def test_the_fraction_at_the_bound_counts_the_clipped_entries() -> None:
    parameters = [th.tensor([[0.5, -0.5], [0.1, 0.7]]), th.tensor([-0.3, 0.2, 0.29])]
    bounds = [0.5, 0.3]
    th._foreach_clamp_max_(parameters, bounds)
    th._foreach_clamp_min_(parameters, [-bound for bound in bounds])
    assert fraction_at_bound(parameters, bounds) == 4 / 7  # 0.5, -0.5, 0.7 -> 0.5 and -0.3; not 0.29


def test_a_large_kappa_trains_exactly_like_sb3() -> None:
    env_id, steps, kwargs = CASES["DQN"]
    reference = crl.DQN("MlpPolicy", env_id, seed=3, device="cpu", **kwargs).learn(steps)
    clipping = WeightClipping(kappa=1e6, log_every=1)
    clipped = crl.DQN("MlpPolicy", env_id, seed=3, device="cpu", interventions=[clipping], **kwargs)
    assert_same_training(reference, clipped.learn(steps))
    assert clipped.logger.name_to_value["interventions/weight_clipping/at_bound"] == 0.0


def _assert_within_bounds(module: nn.Module, kappa: float) -> int:
    """The number of layers checked; fails if a Linear's weight or bias is past its bound."""
    layers = [m for m in module.modules() if isinstance(m, nn.Linear)]
    for layer in layers:
        bound = th.tensor(kappa * init_bound(layer))
        assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound
    return len(layers)


@pytest.mark.parametrize(
    ("algorithm", "env_id", "kwargs", "networks"),
    [
        (
            crl.DQN,
            "CartPole-v1",
            dict(learning_starts=50, train_freq=1, target_update_interval=100),
            ["q_net", "q_net_target"],
        ),
        (crl.PPO, "Pendulum-v1", dict(n_steps=128, batch_size=64), ["mlp_extractor", "action_net", "value_net"]),
        (crl.SAC, "Pendulum-v1", dict(learning_starts=50, batch_size=32), ["actor", "critic", "critic_target"]),
    ],
)
def test_training_keeps_every_layer_inside_its_bounds(algorithm, env_id, kwargs, networks) -> None:
    clipping = WeightClipping(kappa=1.0, log_every=1)
    model = algorithm("MlpPolicy", env_id, seed=0, interventions=[clipping], **kwargs).learn(300)
    assert all(_assert_within_bounds(getattr(model.policy, network), 1.0) for network in networks)
    assert 0.0 < model.logger.name_to_value["interventions/weight_clipping/at_bound"] < 1.0
    if algorithm is crl.PPO:  # not a layer's weight: log_std keeps its own values
        assert model.policy.log_std.requires_grad


def test_hidden_leaves_the_output_layers_alone() -> None:
    clipping = WeightClipping(kappa=1.0, layers="hidden")
    model = crl.SAC("MlpPolicy", "Pendulum-v1", seed=0, interventions=[clipping], learning_starts=50)
    with th.no_grad():
        for parameter in model.policy.parameters():
            parameter.fill_(5.0)
    _step(model, clipping, model.actor.optimizer)
    _step(model, clipping, model.critic.optimizer)
    heads = {"actor.mu", "actor.log_std", "critic.qf0.4", "critic.qf1.4"}
    for name, module in model.policy.named_modules():
        if isinstance(module, nn.Linear) and not name.startswith("critic_target"):
            expected = 5.0 if name in heads else init_bound(module)
            assert th.equal(module.weight, th.full_like(module.weight, expected)), name


def test_an_injected_head_is_clipped_and_its_frozen_branches_are_not() -> None:
    clipping = WeightClipping(kappa=0.5)
    injection = PlasticityInjection(at_step=100)
    model = crl.DQN("MlpPolicy", "CartPole-v1", interventions=[injection, clipping], **DQN_KWARGS).learn(100)
    head = model.q_net.q_net[4]
    assert type(head).__name__ == "InjectedHead"
    with th.no_grad():
        for parameter in head.parameters():
            parameter.fill_(1.0)
    _step(model, clipping, model.policy.optimizer)
    bound = th.tensor(0.5 * init_bound(head.new))
    assert th.equal(head.new.weight, bound.expand_as(head.new.weight))
    assert th.equal(head.old.weight, th.ones_like(head.old.weight))
    assert th.equal(head.new_frozen.weight, th.ones_like(head.new_frozen.weight))


def test_at_bound_is_logged_every_log_every_steps(monkeypatch) -> None:
    clipping = WeightClipping(kappa=0.5, log_every=100)
    logged: list[int] = []
    monkeypatch.setattr(WeightClipping, "record", lambda self, algo, key, value: logged.append(algo.num_timesteps))
    crl.DQN("MlpPolicy", "CartPole-v1", interventions=[clipping], **DQN_KWARGS).learn(400)
    assert logged == [100, 200, 300, 400]  # training starts at 50: the first log at the first train() past 100


def test_bad_parameters_and_policies_are_refused_before_training() -> None:
    with pytest.raises(
        InterventionError, match=r"intervention 'weight_clipping': parameter kappa=0.0: Input should be greater than 0"
    ):
        crl.DQN("MlpPolicy", "CartPole-v1", interventions=[{"name": "weight_clipping", "kappa": 0.0}])
    with pytest.raises(InterventionError, match=r"parameter layers='head': Input should be 'all' or 'hidden'"):
        WeightClipping(layers="head")
    with pytest.raises(
        InterventionError, match=r"with layers='hidden' finds the output layers of a crl policy, but policy="
    ):
        crl.DQN(SB3DQNPolicy, "CartPole-v1", interventions=[WeightClipping(layers="hidden")])
    crl.DQN(SB3DQNPolicy, "CartPole-v1", interventions=[WeightClipping()])  # "all" needs no crl policy
