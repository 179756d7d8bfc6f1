"""TRAC: the scale tuner's arithmetic, the hooks against a transcription of the paper's Algorithm 1, entries
another intervention rewrites, refusals, and training with every algorithm."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch as th
from torch import nn

import crl
from crl.hooks import GradientStep
from crl.interventions import TRAC, InterventionError, ReDo
from crl.interventions.trac import ScaleTuner


def _erfi(z: float) -> float:
    """The imaginary error function by its power series ``2/sqrt(pi) sum z^(2n+1) / (n! (2n+1))``."""
    return 2 / math.sqrt(math.pi) * sum(z ** (2 * n + 1) / (math.factorial(n) * (2 * n + 1)) for n in range(60))


def _tuner(*betas: float) -> ScaleTuner:
    return ScaleTuner(np.array(betas), s_init=1e-8, eps=1e-8)


def test_the_tuner_bets_by_erfi_of_the_discounted_sum_over_its_deviation() -> None:
    tuner = _tuner(0.9, 0.99)
    # h = 0: v stays 0 and sigma = beta * 1e-8, so each argument is beta * 1e-8 / (0 + 1e-8) = beta
    first = 1e-8 / _erfi(1 / math.sqrt(2)) * (_erfi(0.9) + _erfi(0.99))
    assert tuner.update(0.0) == pytest.approx(first, rel=1e-12)
    # h = -1 (the gradient agrees with the accumulated update): v = 1, sigma = beta^2 1e-8 + 1
    second = sum(_erfi((b * b * 1e-8 + 1) / (math.sqrt(2) + 1e-8)) for b in (0.9, 0.99))
    assert tuner.update(-1.0) == pytest.approx(1e-8 / _erfi(1 / math.sqrt(2)) * second, rel=1e-12)
    # h > 0 (it disagrees) drives the bets negative: S < 0 is applied as 0
    assert tuner.update(5.0) == 0.0 and tuner.scale < 0


def test_the_tuner_says_why_when_erfi_overflows() -> None:
    tuner = _tuner(1.0)  # sigma = t, v = t: the argument sqrt(t / 2) passes 26.6, where erfi leaves float64
    with pytest.raises(FloatingPointError, match=r"TRAC's scale is inf after h = -1.0: the gradients have agreed"):
        for _ in range(2000):
            tuner.update(-1.0)


def _driver(net: nn.Module, optimizer: th.optim.Optimizer, trac: TRAC):
    policy = nn.Module()
    policy.net = net
    algo = SimpleNamespace(policy=policy, interventions=[trac], lifetime_timesteps=0)

    def step(loss: th.Tensor, index: int = 0) -> None:
        optimizer.zero_grad()
        loss.backward()
        hooks = GradientStep(index, None, loss_name="loss", optimizer=optimizer)
        trac.after_backward(algo, hooks)  # type: ignore[arg-type]
        optimizer.step()
        trac.after_optimizer_step(algo, hooks)  # type: ignore[arg-type]

    return step


def test_a_parameter_free_step_size_reaches_a_far_minimum_and_follows_it_when_it_moves() -> None:
    weight = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(weight.weight)
    trac = TRAC()
    step = _driver(weight, th.optim.SGD(weight.parameters(), lr=0.01), trac)
    for index in range(100):
        step(0.5 * (weight.weight.sum() - 3.0) ** 2, index)
    # plain SGD at lr 0.01 would still be 3 * 0.99^100 = 1.1 away; S has grown from ~1e-7 to ~2
    assert float(weight.weight.detach()) == pytest.approx(3.0, abs=1e-3)
    assert trac._tuners["loss"].scale == pytest.approx(2.0, abs=0.1)
    for index in range(1500):
        step(0.5 * (weight.weight.sum() + 2.0) ** 2, index)
    assert float(weight.weight.detach()) == pytest.approx(-2.0, abs=0.1)  # from 5 away


def _mlp() -> nn.Sequential:
    th.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))


def test_the_hooks_compute_algorithm_1() -> None:
    inputs, targets = th.randn(32, 3, generator=th.Generator().manual_seed(1)), th.randn(32, 2)
    net, transcribed = _mlp(), _mlp()
    step = _driver(net, th.optim.Adam(net.parameters(), lr=1e-2), TRAC())

    # Algorithm 1, transcribed: theta = theta_ref + S x, x the sum of the base optimizer's updates
    optimizer = th.optim.Adam(transcribed.parameters(), lr=1e-2)
    theta_ref = [p.detach().clone() for p in transcribed.parameters()]
    x = [th.zeros_like(p) for p in transcribed.parameters()]
    betas = np.array([0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999])
    variance, sigma = np.zeros(6), np.full(6, 1e-8)
    for index in range(60):
        step(nn.functional.mse_loss(net(inputs), targets), index)

        optimizer.zero_grad()
        nn.functional.mse_loss(transcribed(inputs), targets).backward()
        theta_t = [p.detach().clone() for p in transcribed.parameters()]
        h = sum(float((x_i * p.grad).sum()) for x_i, p in zip(x, transcribed.parameters(), strict=True))
        optimizer.step()
        with th.no_grad():
            for x_i, p, before in zip(x, transcribed.parameters(), theta_t, strict=True):
                x_i += p - before
            variance = betas**2 * variance + h * h
            sigma = betas * sigma - h
            s = sum(1e-8 / _erfi(1 / math.sqrt(2)) * _erfi(a) for a in sigma / (np.sqrt(2 * variance) + 1e-8))
            for p, ref, x_i in zip(transcribed.parameters(), theta_ref, x, strict=True):
                p.copy_(ref + max(s, 0.0) * x_i)
    assert s > 0.1  # the scale has grown by orders of magnitude: the comparison is not of two fixed networks
    for ours, theirs in zip(net.parameters(), transcribed.parameters(), strict=True):
        assert th.allclose(ours, theirs, atol=1e-6, rtol=1e-5)


def test_entries_another_intervention_rewrites_restart_there_and_the_rest_keep_their_sums() -> None:
    net = _mlp()
    trac = TRAC()
    step = _driver(net, th.optim.Adam(net.parameters(), lr=1e-2), trac)
    inputs, targets = th.randn(16, 3), th.randn(16, 2)
    for index in range(20):
        step(nn.functional.mse_loss(net(inputs), targets), index)
    weight, reference, iterate = net[0].weight, trac._references["net.0.weight"], trac._iterates["net.0.weight"]
    kept_reference, kept_iterate = reference[1:].clone(), iterate[1:].clone()
    with th.no_grad():
        weight[0] = 7.0  # as ReDo gives a unit fresh incoming weights
    step(nn.functional.mse_loss(net(inputs), targets))
    assert th.equal(reference[0], th.full((3,), 7.0)) and th.equal(reference[1:], kept_reference)
    scale = trac._applied["net.0.weight"]
    assert th.allclose(weight[0], 7.0 + scale * iterate[0]) and float(iterate[0].abs().max()) < 0.02  # one update
    assert not th.equal(iterate[1:], kept_iterate) and (iterate[1:] - kept_iterate).abs().max() < 0.02


@pytest.mark.parametrize(("others", "checks"), [([], 1), (["sam"], 150)])
def test_nothing_restarts_while_only_trac_writes(others, checks, monkeypatch) -> None:
    """Only the first step compares values, unless someone else writes the parameters: SAM perturbs them
    and copies them back at every step, and then every step compares, and finds them as TRAC left them."""
    compared = []
    restart = TRAC._restart_changed_entries
    monkeypatch.setattr(TRAC, "_restart_changed_entries", lambda self, t, c: (compared.append(1), restart(self, t, c)))
    trac = TRAC()
    model = crl.DQN("MlpPolicy", "CartPole-v1", learning_starts=50, train_freq=1, seed=0, interventions=[trac, *others])
    initial = {name: p.detach().clone() for name, p in model.policy.named_parameters() if "target" not in name}
    model.learn(200)
    assert len(compared) == checks
    assert trac._references.keys() == initial.keys()
    for name, reference in trac._references.items():
        assert th.equal(reference, initial[name]), name
        wanted = th.add(reference, trac._iterates[name], alpha=trac._applied[name])  # as TRAC wrote it
        assert th.equal(model.policy.get_parameter(name), wanted), name


def test_redo_recycled_units_restart_in_trac() -> None:
    trac = TRAC()
    redo = ReDo(every=100, tau=0.9, probe_size=64)
    model = crl.DQN("MlpPolicy", "CartPole-v1", learning_starts=50, train_freq=1, seed=0, interventions=[redo, trac])
    initial = model.q_net.q_net[0].weight.detach().clone()
    model.learn(160)  # ReDo acted at 100 steps
    reference = trac._references["q_net.q_net.0.weight"]
    restarted = (reference != initial).any(dim=1)
    assert 0 < int(restarted.sum()) < len(restarted)  # only the recycled units moved their reference


def test_units_continual_backprop_replaces_after_trac_restart_in_trac() -> None:
    trac = TRAC()
    cbp = {"name": "continual_backprop", "maturity": 20, "replacement_rate": 0.05}
    model = crl.DQN("MlpPolicy", "CartPole-v1", learning_starts=50, train_freq=1, seed=0, interventions=[trac, cbp])
    initial = model.q_net.q_net[0].weight.detach().clone()
    model.learn(200)
    restarted = (trac._references["q_net.q_net.0.weight"] != initial).any(dim=1)  # the replaced units' rows
    assert 0 < int(restarted.sum()) < len(restarted)


@pytest.mark.parametrize(
    ("algorithm", "env_id", "kwargs", "losses"),
    [
        (crl.DQN, "CartPole-v1", dict(learning_starts=50, train_freq=1), ["q_net"]),
        (crl.PPO, "Pendulum-v1", dict(n_steps=128, batch_size=64), ["policy"]),
        (crl.SAC, "Pendulum-v1", dict(learning_starts=50, batch_size=32), ["critic", "actor"]),
    ],
)
def test_every_algorithm_trains_its_networks_through_trac(algorithm, env_id, kwargs, losses) -> None:
    trac = TRAC(log_every=100)
    model = algorithm("MlpPolicy", env_id, seed=0, interventions=[trac], **kwargs)
    model.learn(300)
    assert sorted(trac._tuners) == sorted(losses)
    for loss in losses:
        scale = model.logger.name_to_value[f"interventions/trac/scale/{loss}"]
        assert scale == trac._tuners[loss].scale and scale > 1e-4  # grown from ~1e-7
    names = {name for name, p in model.policy.named_parameters() if p.requires_grad}
    trained = {name for name in names if "target" not in name}
    if algorithm is crl.SAC:
        assert "log_ent_coef" not in trac._references  # its own optimizer, not a loss of the policy
    assert set(trac._references) == trained
    for name in trained:  # every trained parameter has left its reference
        assert not th.equal(model.policy.get_parameter(name), trac._references[name]), name


def test_conflicting_interventions_and_bad_parameters_are_refused() -> None:
    for other in ("normalize_and_project", "weight_clipping"):
        reason = "both rewrite the parameters after every optimizer step, and the result would depend on which"
        with pytest.raises(InterventionError, match=f"'trac' cannot be combined with '{other}': {reason}"):
            crl.DQN("MlpPolicy", "CartPole-v1", interventions=[other, "trac"])
    with pytest.raises(InterventionError, match="'trac' cannot be combined with 'packnet': TRAC's rescaling"):
        crl.DQN("MlpPolicy", "CartPole-v1", interventions=["trac", {"name": "packnet", "n_tasks": 2}])
    soft = {"name": "shrink_perturb", "after_every_update": True, "shrink": 0.99, "perturb": 0.01}
    with pytest.raises(
        InterventionError, match="'trac' cannot be combined with 'shrink_perturb': with after_every_update=True"
    ):
        crl.DQN("MlpPolicy", "CartPole-v1", interventions=["trac", soft])
    crl.DQN("MlpPolicy", "CartPole-v1", interventions=["trac", "shrink_perturb"])  # at task boundaries: composes
    cbp = {"name": "continual_backprop", "maturity": 20, "replacement_rate": 0.01}
    with pytest.raises(InterventionError, match=r"list 'trac' before 'continual_backprop'.*replaces units after"):
        crl.DQN("MlpPolicy", "CartPole-v1", interventions=[cbp, "trac"])
    with pytest.raises(InterventionError, match=r"betas.*needs one or more discount factors in \(0, 1\], got \[\]"):
        TRAC(betas=[])
    with pytest.raises(InterventionError, match=r"betas.*got \[0.9, 1.5\]"):
        TRAC(betas=[0.9, 1.5])
    with pytest.raises(InterventionError, match="s_init"):
        TRAC(s_init=0.0)


def test_a_loaded_model_goes_on_from_the_saved_sums_without_restarting_an_entry(tmp_path) -> None:
    model = crl.SAC("MlpPolicy", "Pendulum-v1", learning_starts=50, batch_size=32, seed=0, interventions=["trac"])
    model.learn(150)
    model.save(tmp_path / "model.zip")
    loaded = crl.SAC.load(tmp_path / "model.zip", env=model.get_env())
    trac = loaded.interventions[0]
    assert trac._tuners == model.interventions[0]._tuners and trac._tuners["critic"].scale > 0
    references = {name: reference.clone() for name, reference in trac._references.items()}
    loaded.learn(50, reset_num_timesteps=False)
    # the first step after load compares values: every parameter is where theta_ref + S x puts it
    for name, reference in trac._references.items():
        assert th.equal(reference, references[name]), name
