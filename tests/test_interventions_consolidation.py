"""Consolidation toward earlier tasks: Continual World's L2, EWC and MAS (crl.interventions.consolidation)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch as th
from test_sb3_equivalence import assert_same_training

import crl
from crl.interventions import EWC, MAS, InterventionError, L2Previous
from crl.interventions.importance import REGULARISED_NETWORKS, fisher_sums, mas_sums
from crl.wrappers import TaskSequence, permuted_observations

OFF_POLICY = dict(learning_starts=50, batch_size=16, buffer_size=1000)
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "SAC": ("Pendulum-v1", {**OFF_POLICY, "policy_kwargs": dict(net_arch=[16, 16])}),
    "TQC": ("Pendulum-v1", {**OFF_POLICY, "policy_kwargs": dict(net_arch=[16], n_quantiles=3, n_critics=2)}),
    "CrossQ": ("Pendulum-v1", {**OFF_POLICY, "policy_kwargs": dict(net_arch=[16])}),
    "DQN": ("CartPole-v1", {**OFF_POLICY, "policy_kwargs": dict(net_arch=[16])}),
    "QRDQN": ("CartPole-v1", {**OFF_POLICY, "policy_kwargs": dict(net_arch=[16], n_quantiles=4)}),
    "PPO": ("CartPole-v1", dict(n_steps=64, batch_size=32, n_epochs=1, policy_kwargs=dict(net_arch=[16]))),
    "PPO_continuous": ("Pendulum-v1", dict(n_steps=64, batch_size=32, n_epochs=1, policy_kwargs=dict(net_arch=[16]))),
}


def _model(case: str, interventions: list[Any] | None = None, seed: int = 0) -> Any:
    env_id, kwargs = CASES[case]
    algorithm = getattr(crl, case.split("_")[0])
    return algorithm("MlpPolicy", env_id, interventions=interventions or [], seed=seed, device="cpu", **kwargs)


def _batch(model: Any, size: int = 12) -> tuple[th.Tensor, th.Tensor]:
    rng = np.random.default_rng(1)
    observations = th.as_tensor(rng.uniform(-1, 1, (size, *model.observation_space.shape)), dtype=th.float32)
    if hasattr(model.action_space, "n"):
        actions = th.as_tensor(rng.integers(0, model.action_space.n, (size, 1)))
    else:
        actions = th.as_tensor(rng.uniform(-1, 1, (size, *model.action_space.shape)), dtype=th.float32)
    return observations, actions


def multi_head_sac(interventions: list[Any]) -> Any:
    """SAC with a head for each of two tasks, on task 0 of a Pendulum sequence with task ids."""
    tasks = permuted_observations("Pendulum-v1", n_tasks=2, steps_per_task=10).tasks
    env = TaskSequence(tasks, task_id_in_obs=True).make_vec_env(0)
    kwargs = dict(OFF_POLICY, policy_kwargs=dict(n_heads=2, net_arch=[16]))
    return crl.SAC("MultiHeadPolicy", env, interventions=interventions, seed=0, **kwargs)


def _named(model: Any, prefix: str) -> dict[str, th.nn.Parameter]:
    return {name: p for name, p in model.policy.named_parameters() if name.startswith(prefix)}


def _per_sample_gradients(output: th.Tensor, parameters: dict[str, th.nn.Parameter]) -> dict[str, th.Tensor]:
    """d output / d parameter by plain autograd (zeros where the output does not depend on it)."""
    gradients = th.autograd.grad(output, list(parameters.values()), retain_graph=True, allow_unused=True)
    return {
        name: th.zeros_like(p) if g is None else g for (name, p), g in zip(parameters.items(), gradients, strict=True)
    }


# --- exact values --------------------------------------------------------------------------------


def test_a_linear_q_network_has_the_fisher_and_mas_of_its_formula() -> None:
    """Q(s, a) = W_a . s + b_a: EWC's Omega of W_a is mean_n [a_n = a] s_n^2, of b_a the share of
    samples with a_n = a; MAS's is mean_n [a_n = a] |2 Q(s_n, a) s_n| (and |2 Q| for b_a)."""
    model = _model("DQN")
    model.policy.q_net.q_net = th.nn.Sequential(th.nn.Linear(4, 2))
    observations, actions = _batch(model)
    parameters = _named(model, "q_net.q_net.")
    fisher = fisher_sums(model.policy, REGULARISED_NETWORKS["DQN"].policy_outputs, parameters, observations, actions)
    mas = mas_sums(model.policy, REGULARISED_NETWORKS["DQN"].policy_outputs, parameters, observations, actions)
    chosen = th.nn.functional.one_hot(actions[:, 0], 2).float()  # (n, 2)
    with th.no_grad():
        q = model.policy.q_net.q_net(observations).gather(1, actions)  # (n, 1)
    th.testing.assert_close(fisher["q_net.q_net.0.weight"], chosen.T @ observations.square())
    th.testing.assert_close(fisher["q_net.q_net.0.bias"], chosen.sum(0))
    th.testing.assert_close(mas["q_net.q_net.0.weight"], chosen.T @ (2 * q * observations).abs())
    th.testing.assert_close(mas["q_net.q_net.0.bias"], (chosen * (2 * q).abs()).sum(0))


def test_sac_actor_fisher_is_continual_worlds_closed_form() -> None:
    """Per sample: sum_j ((d tanh mu_j)^2 + 2 (d sigma_j)^2) / (sigma_j^2 + 1e-6), clipped below at 1e-5."""
    model = _model("SAC")
    observations, actions = _batch(model)
    parameters = _named(model, "actor.")
    ours = fisher_sums(model.policy, REGULARISED_NETWORKS["SAC"].policy_outputs, parameters, observations, actions)
    expected = {name: th.zeros_like(p) for name, p in parameters.items()}
    for n in range(len(observations)):
        mean, log_std, _ = model.policy.actor.get_action_dist_params(observations[n : n + 1])
        mu, sigma = th.tanh(mean)[0], log_std.exp()[0]
        sample = {name: th.zeros_like(p) for name, p in parameters.items()}
        for j in range(len(mu)):
            d_mu, d_sigma = _per_sample_gradients(mu[j], parameters), _per_sample_gradients(sigma[j], parameters)
            for name in sample:
                sample[name] += (d_mu[name] ** 2 + 2 * d_sigma[name] ** 2) / (sigma[j].detach() ** 2 + 1e-6)
        for name in sample:
            expected[name] += sample[name].clamp(min=1e-5)
    for name in parameters:
        th.testing.assert_close(ours[name], expected[name], rtol=1e-4, atol=1e-7)


def test_critic_fisher_and_mas_are_each_q_networks_own() -> None:
    """Continual World's critics: (d Q_k)^2 and |d Q_k^2| on Q-network k's parameters."""
    model = _model("SAC")
    observations, actions = _batch(model)
    parameters = _named(model, "critic.")
    critic = REGULARISED_NETWORKS["SAC"].critic_outputs
    assert critic is not None
    fisher = fisher_sums(model.policy, critic, parameters, observations, actions)
    mas = mas_sums(model.policy, critic, parameters, observations, actions)
    for index, q_net in enumerate(model.policy.critic.q_networks):
        own = {name: p for name, p in parameters.items() if name.startswith(f"critic.qf{index}.")}
        expected_fisher = {name: th.zeros_like(p) for name, p in own.items()}
        expected_mas = {name: th.zeros_like(p) for name, p in own.items()}
        for n in range(len(observations)):
            q = q_net(th.cat([observations[n : n + 1], actions[n : n + 1]], dim=1))[0, 0]
            d_q, d_q2 = _per_sample_gradients(q, own), _per_sample_gradients(q**2, own)
            for name in own:
                expected_fisher[name] += d_q[name] ** 2
                expected_mas[name] += d_q2[name].abs()
        for name in own:
            th.testing.assert_close(fisher[name], expected_fisher[name], rtol=1e-4, atol=1e-7)
            th.testing.assert_close(mas[name], expected_mas[name], rtol=1e-4, atol=1e-7)


def test_categorical_fisher_weighs_each_action_by_its_probability() -> None:
    """PPO on discrete actions: sum_a p_a (d log p_a)^2 per sample, clipped below at 1e-5."""
    model = _model("PPO")
    observations, actions = _batch(model)
    parameters = {
        name: p
        for name, p in model.policy.named_parameters()
        if not name.startswith(("value_net", "mlp_extractor.value"))
    }
    ours = fisher_sums(model.policy, REGULARISED_NETWORKS["PPO"].policy_outputs, parameters, observations, actions)
    expected = {name: th.zeros_like(p) for name, p in parameters.items()}
    for n in range(len(observations)):
        log_p = th.log_softmax(
            model.policy.action_net(model.policy.mlp_extractor.forward_actor(observations[n : n + 1])), 1
        )[0]
        sample = {name: th.zeros_like(p) for name, p in parameters.items()}
        for a in range(len(log_p)):
            gradients = _per_sample_gradients(log_p[a], parameters)
            for name in sample:
                sample[name] += log_p[a].exp().detach() * gradients[name] ** 2
        for name in sample:
            expected[name] += sample[name].clamp(min=1e-5)
    for name in parameters:
        th.testing.assert_close(ours[name], expected[name], rtol=1e-4, atol=1e-7)


def test_mas_of_a_gaussian_actor_differentiates_mean_and_log_std_norms() -> None:
    model = _model("SAC")
    observations, actions = _batch(model)
    parameters = _named(model, "actor.")
    ours = mas_sums(model.policy, REGULARISED_NETWORKS["SAC"].policy_outputs, parameters, observations, actions)
    expected = {name: th.zeros_like(p) for name, p in parameters.items()}
    for n in range(len(observations)):
        mean, log_std, _ = model.policy.actor.get_action_dist_params(observations[n : n + 1])
        norm = th.tanh(mean).square().sum() + log_std.square().sum()
        for name, gradient in _per_sample_gradients(norm, parameters).items():
            expected[name] += gradient.abs()
    for name in parameters:
        th.testing.assert_close(ours[name], expected[name], rtol=1e-4, atol=1e-7)


# --- the intervention ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("method", [L2Previous, EWC, MAS])
def test_every_algorithm_consolidates_at_a_task_end_and_pulls_toward_it(case: str, method: type) -> None:
    critic = REGULARISED_NETWORKS[case.split("_")[0]].critic_outputs is not None
    intervention = method(coef=1.0, critic=critic, importance_batches=2, importance_batch_size=16)
    model = _model(case, [intervention])
    model.learn(128)
    model.end_task(0)
    anchor, importance = intervention._anchor, intervention._importance
    parameters = dict(model.policy.named_parameters())
    assert set(anchor) == set(importance) and anchor
    for name, value in anchor.items():
        assert th.equal(value, parameters[name]) and value is not parameters[name]
        assert importance[name].shape == value.shape and (importance[name] >= 0).all()
    assert all(float(importance[name].sum()) > 0 for name in importance)
    if critic:  # the critic's parameters are regularised too
        assert any("critic" in name or "value" in name for name in importance)
    assert not any("target" in name for name in importance)
    # The penalty is coef * sum Omega (theta - theta*)^2 for each loss's own parameters.
    model.learn(128, reset_num_timesteps=False)
    parameters = dict(model.policy.named_parameters())
    with th.no_grad():
        expected = sum(float((importance[n] * (parameters[n] - anchor[n]).square()).sum()) for n in importance)
    penalties = [intervention.auxiliary_loss(model, _step(loss)) for loss in _losses(case)]
    assert sum(float(p.detach()) for p in penalties if p is not None) == pytest.approx(expected, rel=1e-5)
    assert expected > 0


def _losses(case: str) -> list[str]:
    family = case.split("_")[0]
    return {"DQN": ["q_net"], "QRDQN": ["quantile_net"], "PPO": ["policy"]}.get(family, ["critic", "actor"])


def _step(loss_name: str) -> Any:
    from crl.hooks import GradientStep

    return GradientStep(index=0, batch=None, loss_name=loss_name)


@pytest.mark.parametrize("method", [L2Previous, EWC, MAS])
def test_before_the_first_task_ends_training_is_unchanged(method: type) -> None:
    reference = _model("SAC")
    reference.learn(200)
    regularised = _model("SAC", [method(critic=True)])
    regularised.learn(200)
    assert_same_training(reference, regularised)


def test_a_strong_coefficient_keeps_the_parameters_at_the_anchor() -> None:
    def moved(interventions: list[Any]) -> float:
        model = _model("DQN", interventions)
        model.learn(200)
        model.end_task(0)
        before = {name: p.detach().clone() for name, p in model.policy.q_net.named_parameters()}
        model.learn(400, reset_num_timesteps=False)
        return sum(float((p - before[name]).norm()) for name, p in model.policy.q_net.named_parameters())

    free, held = moved([]), moved([L2Previous(coef=1e4)])
    assert held < 0.05 * free


def test_importance_adds_up_over_tasks_and_the_anchor_is_the_last_tasks() -> None:
    intervention = L2Previous()
    model = _model("DQN", [intervention])
    model.learn(100)
    model.end_task(0)
    model.learn(100, reset_num_timesteps=False)
    model.end_task(1)
    assert all(th.equal(value, th.full_like(value, 2.0)) for value in intervention._importance.values())
    parameters = dict(model.policy.named_parameters())
    assert all(th.equal(value, parameters[name]) for name, value in intervention._anchor.items())

    ewc = EWC(importance_batches=1, importance_batch_size=8)
    model = _model("DQN", [ewc])
    model.learn(100)
    model.end_task(0)
    first = {name: value.clone() for name, value in ewc._importance.items()}
    state = np.random.get_state()
    model.end_task(0)  # the same parameters and buffer, another draw: first + this draw's importance
    np.random.set_state(state)
    batches = ewc._draw_batches(model)
    _, reached = ewc._regularised_parameters(model, batches[0])
    second = ewc.task_importance(model, reached, batches)
    for name, value in ewc._importance.items():
        th.testing.assert_close(value, first[name] + second[name])


def test_critic_false_leaves_the_critics_alone_and_the_loss_unchanged() -> None:
    intervention = EWC(importance_batches=1, importance_batch_size=16)
    model = _model("SAC", [intervention])
    model.learn(100)
    model.end_task(0)
    assert intervention._importance and all(name.startswith("actor.") for name in intervention._importance)
    assert intervention.auxiliary_loss(model, _step("critic")) is None
    assert intervention.auxiliary_loss(model, _step("actor")) is not None


def test_task_heads_are_not_regularised() -> None:
    intervention = EWC(critic=True, importance_batches=1, importance_batch_size=16)
    model = multi_head_sac([intervention])
    model.learn(100)
    model.end_task(0)
    heads = tuple(f"{path}." for path in model.policy.task_heads())
    regularised = set(intervention._importance)
    assert regularised and not any(name.startswith(heads) for name in regularised)
    trained = {name for name, p in model.policy.named_parameters() if "target" not in name}
    assert trained - regularised == {name for name in trained if name.startswith(heads)}
    assert not any(value.requires_grad for value in intervention._importance.values())  # no graph to the heads
    model.learn(100, reset_num_timesteps=False)  # the penalty's backward passes
    assert model.logger.name_to_value["interventions/ewc/penalty"] > 0


def test_an_injected_head_is_regularised_from_the_next_task_end() -> None:
    intervention = L2Previous()
    model = _model("DQN", [intervention, crl.interventions.PlasticityInjection(at_task=1)])
    model.learn(100)
    model.end_task(0)
    assert {"q_net.q_net.2.weight", "q_net.q_net.2.bias"} <= set(intervention._importance)
    model.start_task(1)  # injects: the trained head becomes the frozen ``old`` branch
    model.learn(100, reset_num_timesteps=False)
    thetas, _, _ = intervention.optimizer_terms(model, model.policy.optimizer)
    penalised = {id(theta) for theta in thetas}
    head = model.policy.q_net.q_net[2]
    assert not penalised & {id(p) for p in head.parameters()}  # the new head is free, the old one frozen
    assert penalised == {id(p) for p in model.policy.q_net.q_net[0].parameters()}
    model.end_task(1)
    assert {"q_net.q_net.2.new.weight", "q_net.q_net.2.new.bias"} <= set(intervention._importance)
    assert th.equal(intervention._importance["q_net.q_net.2.new.weight"], th.ones_like(head.new.weight))
    assert not any(".old." in name or "new_frozen" in name for name in intervention._importance)
    first_layer = model.policy.q_net.q_net[0].weight
    assert th.equal(intervention._importance["q_net.q_net.0.weight"], th.full_like(first_layer, 2.0))


def test_save_load_keeps_the_anchor_and_importance(tmp_path) -> None:
    intervention = MAS(importance_batches=1, importance_batch_size=8)
    model = _model("DQN", [intervention])
    model.learn(100)
    model.end_task(0)
    model.save(tmp_path / "model")
    loaded = crl.DQN.load(tmp_path / "model", env=model.get_env())
    restored = loaded.interventions[0]
    for key in ("_anchor", "_importance"):
        original, kept = getattr(intervention, key), getattr(restored, key)
        assert set(original) == set(kept) and all(th.equal(original[name], kept[name]) for name in original)
    loaded.learn(100, reset_num_timesteps=False)
    assert restored._penalties == [] and loaded.logger.name_to_value.get("interventions/mas/penalty", 0) > 0


@pytest.mark.parametrize(
    ("case", "intervention", "message"),
    [
        ("DQN", EWC(critic=True), r"intervention 'ewc': critic=True, but DQN has no critic .*leave critic=False"),
        ("QRDQN", L2Previous(critic=True), r"intervention 'l2_previous': critic=True, but QRDQN has no critic"),
    ],
)
def test_a_critic_that_does_not_exist_is_refused(case: str, intervention: Any, message: str) -> None:
    with pytest.raises(InterventionError, match=message):
        _model(case, [intervention])


def test_gsde_and_unsupported_action_spaces_are_refused() -> None:
    with pytest.raises(InterventionError, match=r"intervention 'mas': use_sde=True is not supported"):
        crl.SAC("MlpPolicy", "Pendulum-v1", use_sde=True, interventions=["mas"])
    with pytest.raises(InterventionError, match=r"intervention 'ewc': PPO's action space MultiDiscrete"):
        crl.PPO("MlpPolicy", _multi_discrete_env(), interventions=["ewc"])
    crl.PPO("MlpPolicy", _multi_discrete_env(), interventions=["l2_previous"])  # uniform importance reads no outputs


def _multi_discrete_env() -> Any:
    import gymnasium as gym

    class MultiDiscreteEnv(gym.Env):
        observation_space = gym.spaces.Box(-1, 1, (3,))
        action_space = gym.spaces.MultiDiscrete([2, 3])

        def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
            return np.zeros(3, dtype=np.float32), {}

        def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
            return np.zeros(3, dtype=np.float32), 0.0, True, False, {}

    return MultiDiscreteEnv()


def test_invalid_parameters_name_the_key_and_value() -> None:
    with pytest.raises(
        InterventionError, match=r"intervention 'ewc': parameter coef=0.0: Input should be greater than 0"
    ):
        crl.interventions.make_intervention({"name": "ewc", "coef": 0.0})
    with pytest.raises(InterventionError, match=r"intervention 'mas' has no parameter\(s\) \['lambda'\]"):
        crl.interventions.make_intervention({"name": "mas", "lambda": 1.0})


def test_learn_continual_consolidates_at_every_task_boundary() -> None:
    sequence = permuted_observations("CartPole-v1", n_tasks=3, steps_per_task=150)
    intervention = L2Previous(coef=1.0)
    model = crl.DQN("MlpPolicy", sequence.make_vec_env(0), interventions=[intervention], seed=0, **OFF_POLICY)
    crl.learn_continual(model, sequence, eval_every=150, n_eval_episodes=1)
    # three task ends: Omega = 3 on every parameter of the Q-network
    assert intervention._importance and all(
        th.equal(v, th.full_like(v, 3.0)) for v in intervention._importance.values()
    )
