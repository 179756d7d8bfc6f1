"""Sharpness-aware minimisation: the perturbation, the loss computed again, SAM's update by hand, and refusals."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch as th
from stable_baselines3.dqn.policies import DQNPolicy as SB3DQNPolicy
from test_sb3_equivalence import assert_same_training
from torch.nn import functional as F

import crl
from crl.algorithms import off_policy
from crl.hooks import GradientStep
from crl.interventions import PFO, SAM, Intervention, InterventionError, L2Init
from crl.interventions.sam import sharpness_aware_perturbation

ALGORITHMS: dict[str, tuple[str, dict[str, Any]]] = {
    "DQN": ("CartPole-v1", dict(learning_starts=100, train_freq=4, gradient_steps=2, batch_size=32)),
    "QRDQN": ("CartPole-v1", dict(learning_starts=100, train_freq=4, batch_size=32)),
    "PPO": ("CartPole-v1", dict(n_steps=128, batch_size=64, n_epochs=2)),
    "SAC": ("Pendulum-v1", dict(learning_starts=100, batch_size=32, policy_kwargs=dict(net_arch=[32]))),
    "TQC": ("Pendulum-v1", dict(learning_starts=100, batch_size=32, policy_kwargs=dict(net_arch=[32]))),
    "CrossQ": ("Pendulum-v1", dict(learning_starts=100, batch_size=32, policy_kwargs=dict(net_arch=[32]))),
}
LOSSES = {"DQN": ["q_net"], "QRDQN": ["quantile_net"], "PPO": ["policy"]}


def _model(name: str, interventions: list[Any] | None = None) -> Any:
    env_id, kwargs = ALGORITHMS[name]
    return getattr(crl, name)("MlpPolicy", env_id, seed=3, device="cpu", interventions=interventions, **kwargs)


def test_the_perturbation_is_rho_times_the_normalised_gradient() -> None:
    parameters = [th.tensor([1.0, -2.0]), th.tensor([3.0])]
    gradients = [th.tensor([3.0, 0.0]), th.tensor([4.0])]  # ||g|| = 5
    epsilon = sharpness_aware_perturbation(parameters, gradients, rho=0.5)
    assert th.allclose(epsilon[0], th.tensor([0.3, 0.0])) and th.allclose(epsilon[1], th.tensor([0.4]))
    # ASAM: T g = (3, 0, 12), ||T g|| = sqrt(153); eps = rho T^2 g / ||T g|| = 0.5 (3, 0, 36) / sqrt(153)
    adaptive = sharpness_aware_perturbation(parameters, gradients, rho=0.5, adaptive=True)
    scale = 0.5 / math.sqrt(153.0)
    assert th.allclose(adaptive[0], th.tensor([3.0 * scale, 0.0])) and th.allclose(adaptive[1], th.tensor([36 * scale]))
    assert sum(float(e.square().sum()) for e in epsilon) == pytest.approx(0.25)  # ||eps|| = rho
    zero = sharpness_aware_perturbation(parameters, [th.zeros(2), th.zeros(1)], rho=0.5)
    assert all(not e.any() for e in zero)


class _RecomputeInPlace(Intervention):
    """Computes every loss again at unchanged parameters and checks that nothing differs."""

    name = "test_recompute_in_place"

    def model_post_init(self, context: Any) -> None:
        self._checked: dict[str, int] = {}

    def replace_gradients(self, algo: Any, step: GradientStep) -> None:
        assert step.recompute_gradients is not None and step.optimizer is not None and step.loss is not None
        parameters = [p for group in step.optimizer.param_groups for p in group["params"]]
        first = [None if p.grad is None else p.grad.clone() for p in parameters]
        first_loss, first_norm, first_features = step.loss, step.clipped_grad_norm, step.features
        loss = step.recompute_gradients()
        assert th.equal(loss, first_loss), step.loss_name
        for parameter, gradient in zip(parameters, first, strict=True):
            assert (parameter.grad is None) == (gradient is None) and (
                gradient is None or th.equal(parameter.grad, gradient)
            ), step.loss_name
        assert step.loss is first_loss and step.features == first_features
        if first_norm is not None:
            assert th.equal(step.clipped_grad_norm, first_norm)
        self._checked[step.loss_name] = self._checked.get(step.loss_name, 0) + 1


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_the_loss_computed_again_at_the_same_parameters_is_the_same_and_training_unchanged(name: str) -> None:
    """Same batch, targets and actor noise (replayed, torch's stream left alone): the same loss, the same
    gradients, and training bitwise as without the hook."""
    reference = _model(name).learn(400)
    checker = _RecomputeInPlace()
    checked = _model(name, interventions=[checker]).learn(400)
    assert_same_training(reference, checked)
    assert set(checker._checked) == set(LOSSES.get(name, ["critic", "actor"]))


def _fixed_batch(model: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    batch = model.replay_buffer.sample(32, model._vec_normalize_env)
    monkeypatch.setattr(off_policy, "sample_replay", lambda *args: batch)
    return batch


def _dqn_loss(policy: Any, batch: Any, gamma: float) -> th.Tensor:
    with th.no_grad():
        next_q = policy.q_net_target(batch.next_observations).max(dim=1).values.reshape(-1, 1)
        targets = batch.rewards + (1 - batch.dones) * gamma * next_q
    q = policy.q_net(batch.observations).gather(1, batch.actions.long())
    return F.smooth_l1_loss(q, targets)


def test_a_dqn_step_is_sams_update_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    rho = 0.1
    model = crl.DQN("MlpPolicy", "CartPole-v1", learning_starts=100, seed=0, interventions=[SAM(rho=rho)])
    model.learn(200)
    batch = _fixed_batch(model, monkeypatch)
    by_hand = copy.deepcopy(model.policy)
    plain = copy.deepcopy(model.policy)
    model.train(gradient_steps=1, batch_size=32)

    parameters = list(by_hand.q_net.parameters())
    loss = _dqn_loss(by_hand, batch, model.gamma)
    g = th.autograd.grad(loss, parameters)
    g_norm = th.sqrt(sum(gi.square().sum() for gi in g))
    theta = [p.detach().clone() for p in parameters]
    with th.no_grad():
        for p, gi in zip(parameters, g, strict=True):
            p.add_(rho * gi / g_norm)
    loss_at_epsilon = _dqn_loss(by_hand, batch, model.gamma)
    by_hand.optimizer.zero_grad()
    loss_at_epsilon.backward()
    th.nn.utils.clip_grad_norm_(parameters, model.max_grad_norm)
    with th.no_grad():
        for p, t in zip(parameters, theta, strict=True):
            p.copy_(t)
    by_hand.optimizer.step()

    plain.optimizer.zero_grad()
    _dqn_loss(plain, batch, model.gamma).backward()
    th.nn.utils.clip_grad_norm_(list(plain.q_net.parameters()), model.max_grad_norm)
    plain.optimizer.step()

    for sam_p, hand_p in zip(model.q_net.parameters(), parameters, strict=True):
        assert th.allclose(sam_p, hand_p, rtol=0, atol=1e-6)
    # SAM's step is not the plain one (Adam's normalised step may coincide entry by entry)
    sam_step = th.cat([(p - t).flatten() for p, t in zip(model.q_net.parameters(), theta, strict=True)])
    plain_step = th.cat([(p - t).flatten() for p, t in zip(plain.q_net.parameters(), theta, strict=True)])
    assert (sam_step - plain_step).abs().max() > 1e-5
    sharpness = model.logger.name_to_value["interventions/sam/sharpness"]
    assert sharpness == pytest.approx(float(loss_at_epsilon.detach() - loss.detach()), rel=1e-4) and sharpness > 0


class _GrabGradients(Intervention):
    """Keeps the gradients the optimizer of DQN's Q-network receives."""

    name = "test_grab_gradients"

    def model_post_init(self, context: Any) -> None:
        self._gradients: dict[str, th.Tensor] = {}

    def after_backward(self, algo: Any, step: GradientStep) -> None:
        self._gradients = {name: p.grad.clone() for name, p in algo.q_net.named_parameters()}


def test_asam_moves_each_parameter_in_proportion_to_its_square(monkeypatch: pytest.MonkeyPatch) -> None:
    """ASAM's neighbourhood scales with |theta|: a zero bias is not perturbed, so its gradient is SAM's at the
    weights' perturbation only; checked through the gradient the optimizer receives."""
    rho = 0.5
    grab = _GrabGradients()
    asam = SAM(rho=rho, adaptive=True)
    model = crl.DQN("MlpPolicy", "CartPole-v1", learning_starts=100, seed=0, interventions=[asam, grab])
    model.learn(200)
    batch = _fixed_batch(model, monkeypatch)
    by_hand = copy.deepcopy(model.policy)
    model.train(gradient_steps=1, batch_size=32)
    seen = grab._gradients

    named = dict(by_hand.q_net.named_parameters())
    g = th.autograd.grad(_dqn_loss(by_hand, batch, model.gamma), list(named.values()))
    t_g_norm = th.sqrt(sum((p.abs() * gi).square().sum() for p, gi in zip(named.values(), g, strict=True)))
    with th.no_grad():
        for p, gi in zip(named.values(), g, strict=True):
            p.add_(rho * p.square() * gi / t_g_norm)
    by_hand.optimizer.zero_grad()
    _dqn_loss(by_hand, batch, model.gamma).backward()
    th.nn.utils.clip_grad_norm_(list(named.values()), model.max_grad_norm)
    for name, parameter in named.items():
        assert th.allclose(seen[name], parameter.grad, rtol=0, atol=1e-6), name


def test_penalties_log_the_first_pass_only(monkeypatch: pytest.MonkeyPatch) -> None:
    l2_init = L2Init(l2_init=0.5)
    model = crl.DQN("MlpPolicy", "CartPole-v1", learning_starts=100, seed=0, interventions=[l2_init, SAM(rho=1.0)])
    model.learn(200)
    _fixed_batch(model, monkeypatch)
    theta_0 = l2_init._theta_0
    assert theta_0 is not None
    trained = {name: p.detach() for name, p in model.policy.named_parameters() if "target" not in name}
    expected = 0.25 * sum(float((p - theta_0[name]).square().sum()) for name, p in trained.items())
    model.train(gradient_steps=1, batch_size=32)
    assert model.logger.name_to_value["interventions/l2_init/penalty"] == pytest.approx(expected, rel=1e-4)


def test_losses_limits_sam_to_the_losses_named(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"critic": 0, "actor": 0}
    for method, loss in (("_recorded_critic_loss", "critic"), ("_actor_loss_again", "actor")):
        original = getattr(crl.SAC, method)

        def counting(self: Any, *args: Any, _original: Any = original, _loss: str = loss) -> th.Tensor:
            calls[_loss] += 1
            return _original(self, *args)

        monkeypatch.setattr(crl.SAC, method, counting)
    model = _model("SAC", interventions=[SAM(losses=["critic"])])
    model.learn(150)
    assert model._n_updates > 0
    assert calls == {"critic": 2 * model._n_updates, "actor": 0}  # the first pass and SAM's second one


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(InterventionError, match="rho"):
        SAM(rho=0.0)
    with pytest.raises(InterventionError, match="losses"):
        SAM(losses=[])
    with pytest.raises(
        InterventionError,
        match=r"losses=\['actor'\] names \['actor'\], which DQN does not optimise; its losses are \['q_net'\]",
    ):
        crl.DQN("MlpPolicy", "CartPole-v1", interventions=[SAM(losses=["actor"])])


def test_sam_works_with_an_sb3_policy_and_with_a_term_that_reads_features() -> None:
    """With SB3's own DQN policy; and with PFO, whose term reads the features the second pass records again
    (the first pass's graph is freed by then)."""
    dqn = crl.DQN(SB3DQNPolicy, "CartPole-v1", learning_starts=100, seed=0, interventions=[SAM()])
    assert dqn.learn(200).logger.name_to_value["interventions/sam/sharpness"] != 0.0
    ppo = _model("PPO", interventions=[PFO(coef=10.0), SAM(rho=0.5)])
    ppo.learn(128)
    logged = ppo.logger.name_to_value
    assert logged["interventions/pfo/loss"] > 0.0 and logged["interventions/sam/sharpness"] != 0.0
