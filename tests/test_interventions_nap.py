"""Normalize-and-Project: the LayerNorm it inserts, the projection onto the initial norms, what it leaves
free, its cadence, and its effect on training."""

from __future__ import annotations

import math

import pytest
import torch as th
from stable_baselines3.dqn.policies import DQNPolicy as SB3DQNPolicy
from torch import nn

import crl
from crl.hooks import GradientStep
from crl.interventions import InterventionError, NormalizeAndProject, PlasticityInjection
from crl.interventions.nap import ProjectedGroups, group_norm, project, projected_groups

DQN_KWARGS = dict(learning_starts=50, train_freq=1, seed=0)


def _step(model, nap: NormalizeAndProject, optimizer: th.optim.Optimizer, loss_name: str = "q_net") -> None:
    nap.after_optimizer_step(model, GradientStep(0, None, loss_name=loss_name, optimizer=optimizer))


def _norms(model) -> dict[str, float]:
    names = {p: name for name, p in model.policy.named_parameters()}
    return {names[g[0]]: group_norm(g) for g in projected_groups(model.policy, affine=True)}


def test_project_puts_each_group_on_its_sphere_and_keeps_its_direction() -> None:
    weight, bias, gain = th.tensor([[3.0, 0.0], [0.0, 4.0]]), th.tensor([0.0, 0.0]), th.tensor([2.0, 0.0])
    groups = ProjectedGroups([(weight, bias), (gain,)], radii=[1.0, 3.0])
    assert project(groups) == [5.0, 2.0]
    assert th.equal(weight, th.tensor([[0.6, 0.0], [0.0, 0.8]]))  # (W, b) / 5: norm 1
    assert th.equal(gain, th.tensor([3.0, 0.0]))
    zero = th.zeros(3)
    project(ProjectedGroups([(zero,)], radii=[1.0]))  # no direction to keep: stays at zero, no nan
    assert th.equal(zero, th.zeros(3))


def test_layer_norm_goes_before_every_hidden_activation_and_post_is_refused() -> None:
    model = crl.DQN("MlpPolicy", "CartPole-v1", interventions=["normalize_and_project"], **DQN_KWARGS)
    kinds = [type(m).__name__ for m in model.q_net.q_net]
    assert kinds == ["Linear", "LayerNorm", "ReLU", "Linear", "LayerNorm", "ReLU", "Linear"]
    both = crl.DQN("MlpPolicy", "CartPole-v1", interventions=["layer_norm", "normalize_and_project"], **DQN_KWARGS)
    assert [type(m).__name__ for m in both.q_net.q_net] == kinds
    for post in (
        dict(policy_kwargs=dict(layer_norm="post")),
        dict(interventions=[{"name": "layer_norm", "placement": "post"}]),
    ):
        interventions = [*post.pop("interventions", []), "normalize_and_project"]
        with pytest.raises(InterventionError, match=r"needs LayerNorm before each hidden activation .*got "):
            crl.DQN("MlpPolicy", "CartPole-v1", interventions=interventions, **post, **DQN_KWARGS)


def test_the_radii_are_the_norms_at_construction_weight_and_bias_together() -> None:
    model = crl.DQN("MlpPolicy", "CartPole-v1", interventions=["normalize_and_project"], **DQN_KWARGS)
    first, norm = model.q_net.q_net[0], model.q_net.q_net[1]
    expected = math.sqrt(float(first.weight.detach().square().sum() + first.bias.detach().square().sum()))
    radii = model.interventions[0]._radii
    assert radii["q_net.q_net.0.weight"] == pytest.approx(expected, rel=1e-6)
    assert radii["q_net.q_net.1.weight"] == pytest.approx(math.sqrt(64))  # gain 1, offset 0
    assert "q_net.q_net.6.weight" not in radii  # the output layer is free
    assert set(radii) == {
        "q_net.q_net.0.weight",
        "q_net.q_net.1.weight",
        "q_net.q_net.3.weight",
        "q_net.q_net.4.weight",
    }
    assert norm.weight.numel() == 64


def test_projecting_scaled_hidden_layers_restores_their_norms_and_keeps_the_outputs() -> None:
    nap = NormalizeAndProject(affine=False)
    model = crl.DQN("MlpPolicy", "CartPole-v1", interventions=[nap], **DQN_KWARGS)
    obs = th.randn(32, 4, generator=th.Generator().manual_seed(0))
    before = model.q_net(obs).detach()
    head = model.q_net.q_net[6].weight.detach().clone()
    with th.no_grad():
        for index, scale in ((0, 3.0), (3, 0.2)):  # LayerNorm follows: outputs unchanged
            model.q_net.q_net[index].weight.mul_(scale)
            model.q_net.q_net[index].bias.mul_(scale)
        model.q_net.q_net[6].weight.mul_(2.0)  # the output layer: not projected
    _step(model, nap, model.policy.optimizer)
    for index in (0, 3):
        layer = model.q_net.q_net[index]
        assert group_norm((layer.weight, layer.bias)) == pytest.approx(nap._radii[f"q_net.q_net.{index}.weight"], 1e-6)
    assert th.equal(model.q_net.q_net[6].weight, 2.0 * head)
    with th.no_grad():
        model.q_net.q_net[6].weight.copy_(head)
    th.testing.assert_close(model.q_net(obs), before, atol=1e-5, rtol=1e-5)  # up to LayerNorm's eps
    norms, radii = nap._growth["q_net"]
    assert [norm / radius for norm, radius in zip(norms, radii, strict=True)] == pytest.approx([3.0, 0.2], rel=1e-5)


def test_the_layer_norm_gain_and_offset_are_projected_together() -> None:
    nap = NormalizeAndProject()
    model = crl.DQN("MlpPolicy", "CartPole-v1", interventions=[nap], **DQN_KWARGS)
    norm = model.q_net.q_net[4]
    with th.no_grad():
        norm.weight.fill_(3.0)
        norm.bias.fill_(4.0)
    _step(model, nap, model.policy.optimizer)
    assert th.allclose(norm.weight, th.full((64,), 0.6)) and th.allclose(norm.bias, th.full((64,), 0.8))
    unprojected = NormalizeAndProject(affine=False)
    other = crl.DQN("MlpPolicy", "CartPole-v1", interventions=[unprojected], **DQN_KWARGS)
    with th.no_grad():
        other.q_net.q_net[4].weight.fill_(3.0)
    _step(other, unprojected, other.policy.optimizer)
    assert th.equal(other.q_net.q_net[4].weight, th.full((64,), 3.0))


def test_every_counts_the_steps_of_each_loss() -> None:
    nap = NormalizeAndProject(every=3)
    model = crl.SAC("MlpPolicy", "Pendulum-v1", interventions=[nap], learning_starts=50, seed=0)
    first = model.critic.qf0[0]
    actor_first = model.actor.latent_pi[0]
    for _ in range(2):
        with th.no_grad():
            first.weight.mul_(2.0)
            actor_first.weight.mul_(2.0)
        _step(model, nap, model.critic.optimizer, "critic")
        _step(model, nap, model.actor.optimizer, "actor")
    radius = nap._radii["critic.qf0.0.weight"]
    assert group_norm((first.weight, first.bias)) > 3 * radius  # two steps of each loss: no projection yet
    _step(model, nap, model.critic.optimizer, "critic")
    assert group_norm((first.weight, first.bias)) == pytest.approx(radius, rel=1e-6)
    assert group_norm((actor_first.weight, actor_first.bias)) > 3 * nap._radii["actor.latent_pi.0.weight"]
    _step(model, nap, model.actor.optimizer, "actor")  # each optimizer projects only what it trains
    assert group_norm((actor_first.weight, actor_first.bias)) == pytest.approx(
        nap._radii["actor.latent_pi.0.weight"], rel=1e-6
    )


@pytest.mark.parametrize(
    ("algorithm", "env_id", "kwargs"),
    [
        (crl.DQN, "CartPole-v1", dict(learning_starts=50, train_freq=1, target_update_interval=100)),
        (crl.PPO, "Pendulum-v1", dict(n_steps=128, batch_size=64)),
        (crl.SAC, "Pendulum-v1", dict(learning_starts=50, batch_size=32)),
    ],
)
def test_training_keeps_every_group_on_its_sphere_where_layer_norm_alone_lets_it_move(algorithm, env_id, kwargs):
    nap = NormalizeAndProject(log_every=100)
    model = algorithm("MlpPolicy", env_id, seed=0, interventions=[nap], **kwargs).learn(400)
    norms = _norms(model)
    assert set(norms) == set(nap._radii) and len(norms) >= 4
    for name, norm in norms.items():
        assert norm == pytest.approx(nap._radii[name], rel=1e-5), name
    growth = model.logger.name_to_value["interventions/normalize_and_project/growth"]
    assert growth != 1.0 and growth == pytest.approx(1.0, abs=0.05)
    plain = algorithm("MlpPolicy", env_id, seed=0, interventions=["layer_norm"], **kwargs).learn(400)
    drift = max(abs(norm / nap._radii[name] - 1) for name, norm in _norms(plain).items())
    assert drift > 1e-3  # same seed, same initial norms: without the projection the norms move


def test_ppo_log_std_and_the_output_layers_train_freely() -> None:
    nap = NormalizeAndProject()
    model = crl.PPO("MlpPolicy", "Pendulum-v1", n_steps=128, batch_size=64, seed=0, interventions=[nap])
    with th.no_grad():
        model.policy.log_std.fill_(3.0)
        model.policy.action_net.weight.mul_(5.0)
        model.policy.value_net.bias.fill_(7.0)
    heads = [p.detach().clone() for p in (model.policy.log_std, model.policy.action_net.weight)]
    _step(model, nap, model.policy.optimizer, "policy")
    assert th.equal(model.policy.log_std, heads[0]) and th.equal(model.policy.action_net.weight, heads[1])
    assert th.equal(model.policy.value_net.bias, th.full((1,), 7.0))


def test_conv_layers_of_a_shared_cnn_are_projected_without_changing_the_outputs(image_env) -> None:
    nap = NormalizeAndProject(affine=False)
    model = crl.PPO("CnnPolicy", image_env((36, 36, 1)), n_steps=32, batch_size=32, seed=0, interventions=[nap])
    cnn = model.policy.features_extractor.cnn
    convs = [m for m in cnn if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3 and all(f"features_extractor.cnn.{list(cnn).index(c)}.weight" in nap._radii for c in convs)
    obs = th.randint(0, 256, (4, 1, 36, 36), generator=th.Generator().manual_seed(0)).float()
    before = model.policy.predict_values(obs).detach()
    with th.no_grad():
        for conv in convs:
            conv.weight.mul_(4.0)
            conv.bias.mul_(4.0)
    _step(model, nap, model.policy.optimizer, "policy")
    for conv in convs:
        radius = nap._radii[f"features_extractor.cnn.{list(cnn).index(conv)}.weight"]
        assert group_norm((conv.weight, conv.bias)) == pytest.approx(radius, rel=1e-6)
    th.testing.assert_close(model.policy.predict_values(obs), before, atol=1e-4, rtol=1e-4)


def test_a_hidden_layer_taken_into_an_injected_head_is_head_from_then_on() -> None:
    nap = NormalizeAndProject()
    injection = PlasticityInjection(at_step=100, head_layers=2)
    model = crl.DQN("MlpPolicy", "CartPole-v1", interventions=[injection, nap], **DQN_KWARGS).learn(100)
    head = model.q_net.q_net[3]
    assert type(head).__name__ == "InjectedHead"
    new_hidden = head.new[0]
    with th.no_grad():
        new_hidden.weight.mul_(3.0)
        model.q_net.q_net[0].weight.mul_(3.0)
    scaled = new_hidden.weight.detach().clone()
    _step(model, nap, model.policy.optimizer)
    assert th.equal(new_hidden.weight, scaled)
    first = model.q_net.q_net[0]
    assert group_norm((first.weight, first.bias)) == pytest.approx(nap._radii["q_net.q_net.0.weight"], rel=1e-6)


def test_the_radii_are_saved_with_the_model(tmp_path) -> None:
    model = crl.DQN("MlpPolicy", "CartPole-v1", interventions=["normalize_and_project"], **DQN_KWARGS).learn(200)
    radii = dict(model.interventions[0]._radii)
    model.save(tmp_path / "nap.zip")
    loaded = crl.DQN.load(tmp_path / "nap.zip")
    assert loaded.interventions[0]._radii == radii
    with th.no_grad():
        loaded.q_net.q_net[0].weight.mul_(3.0)
    _step(loaded, loaded.interventions[0], loaded.policy.optimizer)
    layer = loaded.q_net.q_net[0]
    assert group_norm((layer.weight, layer.bias)) == pytest.approx(radii["q_net.q_net.0.weight"], rel=1e-6)


def test_bad_parameters_and_policies_are_refused_before_training() -> None:
    with pytest.raises(
        InterventionError,
        match=r"intervention 'normalize_and_project': parameter every=0: Input should be greater than 0",
    ):
        crl.DQN("MlpPolicy", "CartPole-v1", interventions=[{"name": "normalize_and_project", "every": 0}])
    with pytest.raises(InterventionError, match=r"reads the networks of a crl policy, but policy="):
        crl.DQN(SB3DQNPolicy, "CartPole-v1", interventions=["normalize_and_project"])
    with pytest.raises(
        InterventionError, match=r"projects the weights of hidden layers \['q_net.q_net.0', 'q_net.q_net.3'\], which "
    ):
        crl.DQN(
            "MlpPolicy",
            "CartPole-v1",
            policy_kwargs=dict(spectral_norm="hidden"),
            interventions=["normalize_and_project"],
        )
    crl.DQN(
        "MlpPolicy", "CartPole-v1", policy_kwargs=dict(spectral_norm="head"), interventions=["normalize_and_project"]
    )


@pytest.mark.parametrize(
    ("algorithm", "env_id", "kwargs"),
    [
        ("QRDQN", "CartPole-v1", dict(learning_starts=50, train_freq=1)),
        ("TQC", "Pendulum-v1", dict(learning_starts=50, batch_size=32)),
        ("CrossQ", "Pendulum-v1", dict(learning_starts=50, batch_size=32, policy_kwargs=dict(batch_norm=False))),
    ],
)
def test_the_contrib_algorithms_keep_every_group_on_its_sphere(algorithm: str, env_id: str, kwargs: dict) -> None:
    nap = NormalizeAndProject()
    model = getattr(crl, algorithm)("MlpPolicy", env_id, seed=0, interventions=[nap], **kwargs).learn(200)
    norms = _norms(model)
    assert set(norms) == set(nap._radii) and len(norms) >= 4
    for name, norm in norms.items():
        assert norm == pytest.approx(nap._radii[name], rel=1e-5), name
