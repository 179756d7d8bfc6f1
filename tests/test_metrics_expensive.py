"""The expensive metrics: Hessian top eigenvalue and plasticity probe."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch as th

import crl
from crl.interventions import Intervention
from crl.metrics import (
    draw_probe_batch,
    evaluate,
    hessian_top_eigenvalue,
    network_output,
    plasticity_probe,
    training_loss_eigenvalues,
)
from crl.metrics.probe import fresh_copy, weight_copy
from crl.policies.layers import InjectedHead


def test_hessian_of_a_known_quadratic() -> None:
    # L(x) = 1/2 x^T A x with A = Q diag(lambda) Q^T: the Hessian is A, its top eigenvalue 50.
    generator = th.Generator().manual_seed(0)
    q, _ = th.linalg.qr(th.randn(6, 6, generator=generator, dtype=th.float64))
    a = q @ th.diag(th.tensor([50.0, 40.0, 10.0, 1.0, 0.5, -3.0], dtype=th.float64)) @ q.T
    x = th.randn(6, generator=generator, dtype=th.float64, requires_grad=True)
    eigenvalue = hessian_top_eigenvalue(0.5 * x @ a @ x, [x], iterations=20, generator=generator)
    assert eigenvalue == pytest.approx(50.0, rel=0.01)


def test_hessian_of_least_squares_on_a_network() -> None:
    # L(w) = mean((X w - y)^2) for a linear layer: H = 2 X^T X / N, known exactly.
    generator = th.Generator().manual_seed(1)
    features = th.randn(200, 5, generator=generator) * th.tensor([3.0, 1.0, 1.0, 0.5, 0.1])
    targets = th.randn(200, 1, generator=generator)
    layer = th.nn.Linear(5, 1, bias=False)
    loss = th.nn.functional.mse_loss(layer(features), targets)
    exact = th.linalg.eigvalsh(2 * features.T @ features / 200).max()
    estimate = hessian_top_eigenvalue(loss, list(layer.parameters()), generator=generator)
    assert estimate == pytest.approx(float(exact), rel=0.01)
    assert layer.weight.grad is None  # autograd.grad only


class _LossCheck(Intervention):
    """At the first gradient step, compares the algorithm's training_losses with train()'s own loss."""

    name = "test_training_loss_check"

    def model_post_init(self, context: Any) -> None:
        self._pairs: list[tuple[float, float]] = []

    def auxiliary_loss(self, algo: Any, step: Any) -> None:
        if not self._pairs:
            with th.no_grad():
                loss, _ = algo.training_losses(step.batch)[step.loss_name]
                trains = step.loss.detach()
            self._pairs.append((float(loss), float(trains)))
        return None


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("DQN", dict(learning_starts=100, batch_size=32)),
        ("PPO", dict(n_steps=128, batch_size=32, n_epochs=1)),
    ],
)
def test_training_losses_are_the_losses_train_minimises(name: str, kwargs: dict[str, Any]) -> None:
    check = _LossCheck()
    model = getattr(crl, name)("MlpPolicy", "CartPole-v1", seed=0, interventions=[check], **kwargs)
    model.learn(200 if name == "DQN" else 128)
    (ours, trains), *_ = check._pairs
    assert ours == pytest.approx(trains, rel=1e-5, abs=1e-6)


def _probe(model: Any, network: str, obs: np.ndarray) -> float:
    return plasticity_probe(
        model.policy,
        network,
        network_output(model.algorithm_family, network),
        th.as_tensor(obs),
        epochs=20,
        batch_size=32,
        seed=0,
    )


def test_probe_loss_is_lower_for_a_fresh_network_than_a_saturated_one() -> None:
    obs = np.random.default_rng(0).uniform(-2, 2, size=(256, 4)).astype(np.float32)
    fresh = crl.PPO("MlpPolicy", "CartPole-v1", seed=1)  # tanh hidden layers
    saturated = crl.PPO("MlpPolicy", "CartPole-v1", seed=1)
    with th.no_grad():
        for module in saturated.policy.mlp_extractor.modules():
            if isinstance(module, th.nn.Linear):
                module.weight.mul_(50.0)  # |pre-activation| >> 1: tanh saturated, gradients vanish
    state = {key: value.clone() for key, value in saturated.policy.state_dict().items()}
    rng_state = th.random.get_rng_state()

    fresh_loss = {network: _probe(fresh, network, obs) for network in ("actor", "critic")}
    saturated_loss = {network: _probe(saturated, network, obs) for network in ("actor", "critic")}
    for network in ("actor", "critic"):
        assert fresh_loss[network] < saturated_loss[network] / 2, (fresh_loss, saturated_loss)
    # The probe trains a copy: the policy and torch's random stream are as they were.
    assert all(th.equal(value, state[key]) for key, value in saturated.policy.state_dict().items())
    assert th.equal(th.random.get_rng_state(), rng_state)


def test_probe_loss_is_lower_for_a_fresh_q_network_than_a_dead_one() -> None:
    obs = np.random.default_rng(0).uniform(-2, 2, size=(256, 4)).astype(np.float32)
    fresh = crl.DQN("MlpPolicy", "CartPole-v1", seed=1)
    dead = crl.DQN("MlpPolicy", "CartPole-v1", seed=1)
    with th.no_grad():
        for module in dead.q_net.q_net[:-1]:
            if isinstance(module, th.nn.Linear):
                module.bias.fill_(-100.0)  # every ReLU unit dead: only the output bias can still learn
    assert _probe(fresh, "q_net", obs) < _probe(dead, "q_net", obs) / 2


def test_probe_and_hessian_after_a_forward_pass_with_graph() -> None:
    """SB3 policies keep their last action distribution (with its graph): the probe must still copy them."""
    model = crl.PPO("MlpPolicy", "CartPole-v1", seed=0, n_steps=64, batch_size=32, n_epochs=1)
    model.learn(64)
    batch = draw_probe_batch(model, 64, seed=0)
    eigenvalues = training_loss_eigenvalues(model, batch, iterations=5)
    assert set(eigenvalues) == {"policy"} and np.isfinite(eigenvalues["policy"])
    assert np.isfinite(_probe(model, "actor", batch.observations.numpy()))


@pytest.mark.parametrize(
    ("name", "env_id", "kwargs"),
    [
        ("DQN", "CartPole-v1", dict(learning_starts=50, train_freq=4)),
        ("PPO", "CartPole-v1", dict(n_steps=64, batch_size=32, n_epochs=1)),
        ("SAC", "Pendulum-v1", dict(learning_starts=50)),
    ],
)
def test_probe_after_a_plasticity_injection(name: str, env_id: str, kwargs: dict[str, Any]) -> None:
    """The copy the probe trains has the injected heads, which the policy's constructor does not build."""
    model = getattr(crl, name)(
        "MlpPolicy",
        env_id,
        policy_kwargs=dict(net_arch=[16, 16]),
        seed=0,
        interventions=[{"name": "plasticity_injection", "at_step": 100}],
        metrics={"every": 100, "plasticity_probe_every": 100, "probe_batch_size": 64},
        **kwargs,
    )
    model.learn(300)  # measures after the injection, right after a gradient step's forward pass with graph
    probes = {key: value for key, value in model.metrics_monitor.latest.items() if key.endswith("plasticity_probe")}
    assert set(probes) == {f"plasticity/{network}/all/plasticity_probe" for network in model.policy.network_prefixes()}
    assert all(np.isfinite(value) for value in probes.values())

    copied = weight_copy(model.policy)
    injected = [path for path, module in model.policy.named_modules() if isinstance(module, InjectedHead)]
    assert injected and injected == [path for path, m in copied.named_modules() if isinstance(m, InjectedHead)]
    holders = [path for path, module in model.policy.named_modules() if hasattr(module, "optimizer")]
    assert holders and all(copied.get_submodule(path).optimizer is None for path in holders)
    copied_parameters = dict(copied.named_parameters())
    for path, parameter in model.policy.named_parameters():
        twin = copied_parameters[path]
        assert twin is not parameter and th.equal(twin, parameter) and twin.requires_grad == parameter.requires_grad


@pytest.mark.parametrize(
    ("name", "env_id", "kwargs"),
    [
        ("DQN", "CartPole-v1", dict(learning_starts=50)),
        ("PPO", "CartPole-v1", dict(n_steps=64, batch_size=32)),
        ("SAC", "Pendulum-v1", dict(learning_starts=50)),
    ],
)
@pytest.mark.parametrize("seed", [0, 7])
def test_probe_targets_are_not_the_agents_initial_network(name: str, env_id: str, kwargs: dict, seed: int) -> None:
    """SPEC.md §1: the probe regresses a *fresh* network; the agent's own start is no new target."""
    model = getattr(crl, name)(
        "MlpPolicy",
        env_id,
        seed=seed,
        policy_kwargs=dict(net_arch=[16, 16]),
        metrics={"plasticity_probe_every": 64},
        **kwargs,
    )
    monitor_seed = model.metrics_monitor._seed(model)
    assert monitor_seed == seed  # the metrics' seed defaults to the algorithm's
    initial = model.policy.state_dict()
    fresh = fresh_copy(model.policy, monitor_seed).state_dict()
    weights = [key for key in initial if key.endswith("weight")]
    assert weights and not any(th.equal(fresh[key], initial[key]) for key in weights)
    obs = np.random.default_rng(0).uniform(-1, 1, (64, *model.observation_space.shape)).astype(np.float32)
    probes = {
        key: value
        for key, value in evaluate(model, obs, plasticity_probe=True, config={"seed": seed}).items()
        if key.endswith("plasticity_probe")
    }
    assert len(probes) == len(model.policy.network_prefixes())
    assert all(value > 0 for value in probes.values()), probes  # 0 when the target was the start
