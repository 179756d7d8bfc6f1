"""Spectral normalisation of chosen layers: selection, the normalised weights' norms, targets, save/load."""

from __future__ import annotations

import pytest
import torch as th
from torch import nn
from torch.nn.utils import parametrize

import crl
from crl.config import ConfigError
from crl.config.build import build_model, build_sequence
from crl.config.curriculum import validate_curriculum
from crl.metrics import draw_probe_batch, training_loss_eigenvalues
from crl.policies.spectral_norm import weight_layer_groups


def _normalised(module: nn.Module) -> dict[str, nn.Module]:
    return {path: layer for path, layer in module.named_modules() if parametrize.is_parametrized(layer, "weight")}


def _top_singular_values(module: nn.Module) -> dict[str, float]:
    """``sigma_max`` of each normalised layer's weight as the network computes with it (eval mode)."""
    with th.no_grad():
        return {
            path: float(th.linalg.matrix_norm(layer.weight.flatten(1), ord=2))
            for path, layer in _normalised(module).items()
        }


def test_layer_groups_of_each_algorithm() -> None:
    dqn = crl.DQN("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[8, 8]))
    assert weight_layer_groups(dqn.policy) == {"hidden": ["q_net.q_net.0", "q_net.q_net.2"], "head": ["q_net.q_net.4"]}
    ppo = crl.PPO("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[8]))
    assert weight_layer_groups(ppo.policy) == {
        "hidden": ["mlp_extractor.policy_net.0", "mlp_extractor.value_net.0"],
        "head": ["action_net", "value_net"],
    }
    sac = crl.SAC("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(net_arch=[8]))
    assert weight_layer_groups(sac.policy) == {
        "hidden": ["actor.latent_pi.0", "critic.qf0.0", "critic.qf1.0"],
        "head": ["actor.mu", "actor.log_std", "critic.qf0.2", "critic.qf1.2"],
    }


@pytest.mark.parametrize(
    ("option", "online"),
    [
        ("hidden", ["q_net.q_net.0", "q_net.q_net.2"]),
        ("head", ["q_net.q_net.4"]),
        ("all", ["q_net.q_net.0", "q_net.q_net.2", "q_net.q_net.4"]),
        (["q_net.q_net.2"], ["q_net.q_net.2"]),
    ],
)
def test_the_option_selects_layers_and_their_target_twins(option, online: list[str]) -> None:
    model = crl.DQN("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[8, 8], spectral_norm=option))
    assert sorted(_normalised(model.policy)) == sorted(
        [*online, *(path.replace("q_net.", "q_net_target.", 1) for path in online)]
    )


def test_the_option_leaves_the_initial_weights_and_the_random_stream_alone() -> None:
    plain = crl.DQN("MlpPolicy", "CartPole-v1", seed=0, policy_kwargs=dict(net_arch=[8]))
    after_plain = th.rand(3)
    normalised = crl.DQN("MlpPolicy", "CartPole-v1", seed=0, policy_kwargs=dict(net_arch=[8], spectral_norm="all"))
    assert th.equal(th.rand(3), after_plain)  # the power-iteration vectors were drawn on a forked generator
    for index in (0, 2):
        assert th.equal(normalised.q_net.q_net[index].parametrizations.weight.original, plain.q_net.q_net[index].weight)


RUNS = {
    "DQN": ("CartPole-v1", 1000, dict(learning_starts=200, train_freq=1, target_update_interval=100)),
    "PPO": ("CartPole-v1", 2048, dict(n_steps=256, batch_size=64, n_epochs=4)),
    "SAC": ("Pendulum-v1", 600, dict(learning_starts=100)),
}


@pytest.mark.parametrize("name", list(RUNS))
def test_normalised_weights_have_unit_spectral_norm_after_training(name: str) -> None:
    env_id, steps, kwargs = RUNS[name]
    model = getattr(crl, name)(
        "MlpPolicy", env_id, seed=0, policy_kwargs=dict(net_arch=[32, 32], spectral_norm="all"), **kwargs
    )
    raw_before = {
        path: layer.parametrizations.weight.original.clone() for path, layer in _normalised(model.policy).items()
    }
    model.learn(steps)
    model.policy.set_training_mode(False)
    sigmas = _top_singular_values(model.policy)  # target networks included: they estimate their own norms
    assert len(sigmas) == {"DQN": 6, "PPO": 6, "SAC": 16}[name]
    assert all(abs(sigma - 1) <= 0.05 for sigma in sigmas.values()), sigmas
    # Training moved the raw weights (the optimizer holds the parametrized originals).
    for path, layer in _normalised(model.policy).items():
        if "target" not in path:
            assert not th.equal(layer.parametrizations.weight.original, raw_before[path]), path


def test_power_iteration_runs_only_while_training() -> None:
    """Target networks iterate during train() like the online ones; acting changes no estimate."""
    model = crl.SAC(
        "MlpPolicy", "Pendulum-v1", seed=0, learning_starts=50, policy_kwargs=dict(net_arch=[8], spectral_norm="all")
    )
    model.learn(60)
    buffers = {key: value.clone() for key, value in model.policy.state_dict().items() if key.endswith(("_u", "_v"))}
    assert any("critic_target" in key for key in buffers)
    model.predict(model.observation_space.sample(), deterministic=True)
    model.policy.hidden_features(th.zeros(4, 3))
    assert all(th.equal(model.policy.state_dict()[key], value) for key, value in buffers.items())
    model.policy.set_training_mode(True)
    model.critic_target(th.zeros(4, 3), th.zeros(4, 1))
    changed = [key for key, value in buffers.items() if not th.equal(model.policy.state_dict()[key], value)]
    assert changed and all(key.startswith("critic_target.") for key in changed)


def test_metrics_leave_a_normalised_run_unchanged() -> None:
    """The monitor's measurements (Hessian included: it runs the target network) never step an estimate."""
    runs = []
    for metrics in (None, dict(every=100, hessian_every=100, probe_batch_size=64, hessian_iterations=2)):
        model = crl.DQN(
            "MlpPolicy",
            "CartPole-v1",
            seed=0,
            learning_starts=100,
            target_update_interval=50,
            policy_kwargs=dict(net_arch=[16], spectral_norm="all"),
            metrics=metrics,
        )
        model.learn(400)
        runs.append(model.policy.state_dict())
    assert all(th.equal(value, runs[1][key]) for key, value in runs[0].items())


def test_the_hessian_leaves_a_normalised_policy_in_training_mode_unchanged(monkeypatch) -> None:
    """Called in training mode, the Hessian's forward passes would step every power iteration."""
    model = crl.DQN(
        "MlpPolicy", "CartPole-v1", seed=0, learning_starts=50, policy_kwargs=dict(net_arch=[8], spectral_norm="all")
    )
    model.learn(80)
    batch = draw_probe_batch(model, 32, seed=0)
    model.policy.set_training_mode(True)
    state = {key: value.clone() for key, value in model.policy.state_dict().items()}
    training_loss_eigenvalues(model, batch, iterations=2)
    assert all(th.equal(value, state[key]) for key, value in model.policy.state_dict().items())
    assert model.policy.training and model.policy.q_net.training

    def failing(batch: object) -> None:
        raise RuntimeError("loss failed")

    monkeypatch.setattr(model, "training_losses", failing)
    with pytest.raises(RuntimeError, match="loss failed"):
        training_loss_eigenvalues(model, batch, iterations=2)
    assert model.policy.training and model.policy.q_net.training  # restored on error too


def test_spectral_norm_survives_save_and_load(tmp_path) -> None:
    model = crl.PPO(
        "MlpPolicy", "CartPole-v1", seed=0, n_steps=64, batch_size=32, policy_kwargs=dict(spectral_norm="hidden")
    )
    model.learn(64)
    model.save(tmp_path / "model.zip")
    loaded = crl.PPO.load(tmp_path / "model.zip")
    assert sorted(_normalised(loaded.policy)) == sorted(_normalised(model.policy)) != []
    for key, value in model.policy.state_dict().items():
        assert th.equal(value, loaded.policy.state_dict()[key]), key  # power-iteration vectors included
    model.policy.set_training_mode(False)
    loaded.policy.set_training_mode(False)
    obs = th.rand(5, 4)
    assert th.equal(model.policy.predict_values(obs), loaded.policy.predict_values(obs))


def test_an_unknown_module_path_is_rejected_naming_the_weight_layers() -> None:
    with pytest.raises(
        ValueError,
        match=r"spectral_norm names \['q_net.q_net.1'\], which are not weight layers .*"
        r"weight layers: \['q_net.q_net.0', 'q_net.q_net.2'\]",
    ):
        crl.DQN("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[8], spectral_norm=["q_net.q_net.1"]))
    with pytest.raises(ValueError, match=r"policy option spectral_norm='everything' is not allowed"):
        crl.DQN("MlpPolicy", "CartPole-v1", policy_kwargs=dict(spectral_norm="everything"))
    with pytest.raises(
        ValueError, match=r"spectral_norm=\['q_net.q_net.0', 'q_net.q_net.0'\] names \['q_net.q_net.0'\] more than once"
    ):
        crl.DQN("MlpPolicy", "CartPole-v1", policy_kwargs=dict(spectral_norm=["q_net.q_net.0", "q_net.q_net.0"]))


CURRICULUM = {
    "algorithm": "SAC",
    "policy_options": {"net_arch": [16], "spectral_norm": "head"},
    "sequence": {"preset": "cartpole_physics", "options": {"n_tasks": 2}, "steps_per_task": 100},
}


def test_a_curriculum_takes_the_option() -> None:
    curriculum = validate_curriculum({**CURRICULUM, "sequence": {"tasks": [{"env": "Pendulum-v1", "budget": 100}]}})
    model = build_model(curriculum, build_sequence(curriculum), seed=0)
    assert sorted(_normalised(model.policy.actor)) == ["log_std", "mu"]


def test_a_bad_curriculum_value_fails_with_one_line() -> None:
    data = {**CURRICULUM, "policy_options": {"spectral_norm": "heads"}}
    with pytest.raises(
        ConfigError,
        match=r"^c.yaml: key 'policy_options.spectral_norm' = 'heads': Input should be "
        r"'hidden', 'head' or 'all'",
    ):
        validate_curriculum(data, source="c.yaml")
    curriculum = validate_curriculum(
        {
            **data,
            "policy_options": {"spectral_norm": ["actor.mu", "critic.qf9.0"]},
            "sequence": {"tasks": [{"env": "Pendulum-v1", "budget": 100}]},
        }
    )
    with pytest.raises(ConfigError, match=r"^curriculum: SAC: policy option spectral_norm names \['critic.qf9.0'\]"):
        build_model(curriculum, build_sequence(curriculum), seed=0)
