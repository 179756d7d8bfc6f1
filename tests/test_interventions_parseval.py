"""Parseval regularisation: the term on constructed matrices, its gradient, the layers of each loss, its effect."""

from __future__ import annotations

import math

import pytest
import torch as th
from stable_baselines3.dqn.policies import DQNPolicy as SB3DQNPolicy

import crl
from crl.hooks import GradientStep
from crl.interventions import InterventionError, Parseval
from crl.interventions.parseval import parseval_penalty


@pytest.mark.parametrize(
    ("weight", "expected"),
    [
        (math.sqrt(2.0) * th.eye(3), 0.0),  # orthogonal rows of squared norm s: nothing to correct
        (th.eye(2), 2.0),  # W W^T - 2 I = -I
        (th.tensor([[1.0, 1.0], [0.0, 1.0]]), 3.0),  # [[2, 1], [1, 1]] - 2 I = [[0, 1], [1, -1]]
        (th.tensor([[1.0, 1.0, 0.0]]), 0.0),  # one row of squared norm 2
        (th.ones(2, 1, 2, 2), 2 * 2.0**2 + 2 * 4.0**2),  # a conv kernel: rows of four ones, gram 4 everywhere
    ],
)
def test_the_term_on_constructed_matrices(weight: th.Tensor, expected: float) -> None:
    assert parseval_penalty([weight], 2.0, [1.0]).item() == pytest.approx(expected, abs=1e-6)


def test_the_term_sums_layers_with_their_width_factors_and_its_gradient_is_the_closed_form() -> None:
    th.manual_seed(0)
    w1, w2 = th.randn(4, 3, requires_grad=True), th.randn(2, 4, requires_grad=True)
    penalty = parseval_penalty([w1, w2], 1.5, [0.25, 3.0])
    expected = 0.25 * (w1 @ w1.T - 1.5 * th.eye(4)).norm() ** 2 + 3.0 * (w2 @ w2.T - 1.5 * th.eye(2)).norm() ** 2
    th.testing.assert_close(penalty, expected)
    penalty.backward()
    with th.no_grad():  # d/dW ||W W^T - s I||_F^2 = 4 (W W^T - s I) W
        th.testing.assert_close(w1.grad, 0.25 * 4 * (w1 @ w1.T - 1.5 * th.eye(4)) @ w1)
        th.testing.assert_close(w2.grad, 3.0 * 4 * (w2 @ w2.T - 1.5 * th.eye(2)) @ w2)


def _independent_penalty(weights: list[th.Tensor], coef: float) -> th.Tensor:
    return coef * sum((64 / w.shape[0]) ** 2 * (w @ w.T - 2.0 * th.eye(w.shape[0])).square().sum() for w in weights)


def test_dqn_regularises_its_hidden_layers_only() -> None:
    parseval = Parseval(coef=0.01)
    model = crl.DQN("MlpPolicy", "CartPole-v1", learning_starts=50, seed=0, interventions=[parseval])
    model.learn(200)
    penalty = parseval.auxiliary_loss(model, GradientStep(0, None, loss_name="q_net"))
    hidden = [model.q_net.q_net[0].weight, model.q_net.q_net[2].weight]  # not the Q-value layer q_net.4
    th.testing.assert_close(penalty, _independent_penalty(hidden, 0.01))
    assert model.logger.name_to_value["interventions/parseval/penalty"] > 0


def test_sac_regularises_each_loss_over_the_layers_its_optimizer_trains() -> None:
    parseval = Parseval(reference_width=None)
    kwargs = dict(learning_starts=50, policy_kwargs=dict(net_arch=[32, 16]))
    model = crl.SAC("MlpPolicy", "Pendulum-v1", seed=0, interventions=[parseval], **kwargs).learn(100)
    critic = parseval.auxiliary_loss(model, GradientStep(0, None, loss_name="critic"))
    actor = parseval.auxiliary_loss(model, GradientStep(0, None, loss_name="actor"))
    critic_hidden = [model.critic.q_networks[i][j].weight for i in (0, 1) for j in (0, 2)]
    actor_hidden = [model.actor.latent_pi[0].weight, model.actor.latent_pi[2].weight]  # not mu, log_std
    factor = {32: (64 / 32) ** 2, 16: (64 / 16) ** 2}  # undone: reference_width=None applies coef unscaled
    th.testing.assert_close(critic, sum(_independent_penalty([w], 1e-3) / factor[w.shape[0]] for w in critic_hidden))
    th.testing.assert_close(actor, sum(_independent_penalty([w], 1e-3) / factor[w.shape[0]] for w in actor_hidden))


def _gram_errors(model: crl.DQN) -> list[float]:
    hidden = [model.q_net.q_net[0].weight.detach(), model.q_net.q_net[2].weight.detach()]
    return [float((w @ w.T - 2.0 * th.eye(w.shape[0])).norm()) for w in hidden]


def test_the_regulariser_makes_the_hidden_rows_orthogonal() -> None:
    kwargs = dict(learning_starts=50, train_freq=1, learning_rate=1e-3, seed=0)
    plain = crl.DQN("MlpPolicy", "CartPole-v1", **kwargs).learn(600)
    regularised = crl.DQN("MlpPolicy", "CartPole-v1", interventions=[Parseval(coef=0.01)], **kwargs).learn(600)
    (plain_first, plain_second), (first, second) = _gram_errors(plain), _gram_errors(regularised)
    assert plain_second > 10.0 and second < 0.1  # torch's uniform init has rows of squared norm 1/3, not 2
    # The 64 x 4 first layer has rank 4: W W^T - 2 I keeps 60 eigenvalues -2, the error's floor
    assert first == pytest.approx(2 * math.sqrt(60), rel=1e-3) and first < plain_first


def test_bad_parameters_and_policies_are_refused_before_training() -> None:
    with pytest.raises(
        InterventionError, match=r"intervention 'parseval': parameter coef=-1.0: Input should be greater than 0"
    ):
        crl.PPO("MlpPolicy", "CartPole-v1", interventions=[{"name": "parseval", "coef": -1.0}])
    with pytest.raises(InterventionError, match=r"parameter reference_width=0: Input should be greater than 0"):
        Parseval(reference_width=0)
    with pytest.raises(InterventionError, match=r"intervention 'parseval' reads the networks of a crl policy"):
        crl.DQN(SB3DQNPolicy, "CartPole-v1", interventions=["parseval"])
