"""sb3-contrib's QR-DQN and TQC on crl's mechanism: every intervention, every metric, the loop and the curricula.

``tests/test_qrdqn.py`` and ``tests/test_tqc.py`` check each algorithm against sb3-contrib bitwise;
this file checks that the rest of crl treats them as it treats DQN and SAC.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.logger import Logger
from test_metrics_monitor import _Recorder, expected_metric_keys
from test_sb3_equivalence import assert_same_training

import crl
from crl.config import ConfigError
from crl.config.build import build_model, build_sequence
from crl.config.curriculum import load_curriculum
from crl.continual import loop
from crl.interventions.base import InterventionError, registered_interventions
from crl.wrappers import make_sequence

CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "QRDQN": (
        "CartPole-v1",
        dict(
            learning_starts=100,
            train_freq=4,
            target_update_interval=100,
            batch_size=32,
            policy_kwargs=dict(net_arch=[32, 32], n_quantiles=5),
        ),
    ),
    "TQC": (
        "Pendulum-v1",
        dict(learning_starts=100, batch_size=32, policy_kwargs=dict(net_arch=[32, 32], n_critics=2, n_quantiles=5)),
    ),
    "CrossQ": ("Pendulum-v1", dict(learning_starts=100, batch_size=32, policy_kwargs=dict(net_arch=[32, 32]))),
}
STEPS = 500
NETWORKS = {"QRDQN": ["quantile_net"], "TQC": ["actor", "qf0", "qf1"], "CrossQ": ["actor", "qf0", "qf1"]}
LOSSES = {"QRDQN": ["quantile_net"], "TQC": ["critic", "actor"], "CrossQ": ["critic", "actor"]}
REFUSED = {
    ("CrossQ", "layer_norm"): "policy option layer_norm='pre' is not supported by CrossQ with batch_norm=True",
    (
        "CrossQ",
        "normalize_and_project",
    ): "policy option layer_norm='pre' is not supported by CrossQ with batch_norm=True",
    ("CrossQ", "redo"): "intervention 'redo' cannot recycle units of CrossQPolicy",
    ("CrossQ", "regrama"): "intervention 'regrama' cannot recycle units of CrossQPolicy",
    ("CrossQ", "continual_backprop"): "intervention 'continual_backprop' cannot recycle units of CrossQPolicy",
}
"""CrossQ's BatchRenorm layers: LayerNorm would normalise twice; recycling would change the Q-values."""

INTERVENTIONS: dict[str, dict[str, Any]] = {
    "layer_norm": {"name": "layer_norm"},
    "normalize_and_project": {"name": "normalize_and_project"},
    "weight_decay": {"name": "weight_decay", "weight_decay": 0.1},
    "l2_init": {"name": "l2_init", "l2_init": 0.1},
    "reset": {"name": "reset", "at_steps": [300], "parts": "full"},
    "reset_head": {"name": "reset", "at_steps": [300], "parts": "head", "head_layers": 2},
    "shrink_perturb": {"name": "shrink_perturb", "at_steps": [300]},
    "shrink_perturb_soft": {"name": "shrink_perturb", "after_every_update": True, "shrink": 0.99, "perturb": 0.01},
    "redo": {"name": "redo", "every": 200, "tau": 0.5, "probe_size": 32},
    "regrama": {"name": "regrama", "every": 200, "tau": 0.5, "probe_size": 32},
    "continual_backprop": {"name": "continual_backprop", "replacement_rate": 0.1, "maturity": 20},
    "plasticity_injection": {"name": "plasticity_injection", "at_step": 300},
    "reset_optimizer": {"name": "reset_optimizer", "at_steps": [300]},
    "adaptive_replay_ratio": {"name": "adaptive_replay_ratio", "check_every": 2},
    "weight_clipping": {"name": "weight_clipping", "kappa": 0.5},
    "parseval": {"name": "parseval", "coef": 0.01},
    "sam": {"name": "sam", "rho": 0.1},
    "trac": {"name": "trac"},
}
"""Each intervention set to act inside a 500-step run (``reset_head`` and ``redo`` also reach hidden layers)."""
NOT_COVERED = {
    "pfo": "PPO only",
    "random_shift": "image observations: tested on QR-DQN's CnnPolicy below",
    **dict.fromkeys(
        ["l2_previous", "ewc", "mas"], "act at task ends: every algorithm in test_interventions_consolidation"
    ),
    "agem": "acts after a task end: every algorithm in test_interventions_agem",
    "packnet": "acts at task ends: every algorithm in test_interventions_packnet",
    "clonex": "acts after a task end: SAC, TQC and CrossQ in test_interventions_clonex",
}


def _model(name: str, **extra: Any) -> Any:
    env_id, kwargs = CASES[name]
    kwargs = {**kwargs, **extra, "policy_kwargs": {**kwargs["policy_kwargs"], **extra.get("policy_kwargs", {})}}
    return getattr(crl, name)("MlpPolicy", env_id, seed=3, device="cpu", **kwargs)


def _trained(name: str, **extra: Any) -> tuple[Any, _Recorder]:
    model = _model(name, **extra)
    recorder = _Recorder()
    model.set_logger(Logger(folder=None, output_formats=[recorder]))
    model.learn(STEPS)
    return model, recorder


def _parameters(model: Any) -> dict[str, th.Tensor]:
    return {key: value.clone() for key, value in model.policy.state_dict().items()}


@functools.cache
def _reference_parameters(name: str) -> dict[str, th.Tensor]:
    """The parameters after a run without interventions (one run per algorithm and test process)."""
    return _parameters(_trained(name)[0])


def test_the_matrix_covers_every_registered_intervention() -> None:
    covered = {spec["name"] for spec in INTERVENTIONS.values()} | set(NOT_COVERED)
    shipped = {name for name, cls in registered_interventions().items() if cls.__module__.startswith("crl.")}
    assert covered == shipped


@pytest.mark.parametrize("name", list(CASES))
def test_every_metric_leaves_training_alone_and_reaches_the_logger(name: str) -> None:
    reference, _ = _trained(name)
    every_metric = dict(every=200, plasticity_probe_every=400, hessian_every=400, grama_every=400, probe_batch_size=128)
    monitored, recorder = _trained(name, metrics=every_metric)
    assert_same_training(reference, monitored)

    logged = {key for dump in recorder.dumps for key in dump}
    expected = expected_metric_keys(NETWORKS[name], LOSSES[name])
    expected |= {f"plasticity/{network}/all/weight_change" for network in NETWORKS[name]}
    assert expected <= logged, sorted(expected - logged)
    values = monitored.metrics_monitor.latest
    assert all(np.isfinite(value) for value in values.values())
    assert all(values[f"plasticity/{loss}/all/grad_norm"] > 0 for loss in LOSSES[name])


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("intervention", list(INTERVENTIONS))
def test_every_intervention_acts_on_the_contrib_algorithms(name: str, intervention: str) -> None:
    if (name, intervention) in REFUSED:
        with pytest.raises((ValueError, InterventionError), match=re.escape(REFUSED[name, intervention])):
            _model(name, interventions=[INTERVENTIONS[intervention]])
        return
    reference = _reference_parameters(name)
    model, _ = _trained(name, interventions=[INTERVENTIONS[intervention]])
    trained = _parameters(model)
    if set(trained) == set(reference):
        assert any(not th.equal(trained[key], reference[key]) for key in reference), f"{intervention} did nothing"
    else:  # new modules (LayerNorm, an injected head): the architecture changed
        assert intervention in ("layer_norm", "normalize_and_project", "plasticity_injection"), sorted(
            set(trained) ^ set(reference)
        )
    assert all(th.isfinite(value).all() for value in trained.values() if value.is_floating_point())
    model.predict(model.observation_space.sample(), deterministic=True)


@pytest.mark.parametrize("name", ["QRDQN", "TQC"])  # CrossQ has no target network
def test_a_full_reset_gives_the_target_network_the_fresh_weights(name: str, monkeypatch) -> None:
    model = _model(name, interventions=[{"name": "reset", "at_steps": [300], "parts": "full"}])
    online_name, target_name = next(iter(model.policy.target_networks().items()))
    reset_class = type(model.interventions[0])
    original = reset_class.apply
    synced: list[bool] = []

    def apply_and_compare(self: Any, algo: Any, reason: str) -> None:
        original(self, algo, reason)
        online = getattr(algo.policy, online_name).state_dict()
        target = getattr(algo.policy, target_name).state_dict()
        synced.append(all(th.equal(online[key], target[key]) for key in online))

    monkeypatch.setattr(reset_class, "apply", apply_and_compare)
    before = _parameters(model)
    model.learn(400)
    assert synced == [True]
    assert any(not th.equal(before[key], value) for key, value in _parameters(model).items())


def test_spectral_norm_and_random_shift_on_image_observations(image_env) -> None:
    model = crl.QRDQN(
        "CnnPolicy",
        image_env((36, 36, 1)),
        seed=0,
        learning_starts=50,
        batch_size=8,
        buffer_size=200,
        policy_kwargs=dict(spectral_norm="all", n_quantiles=3),
        interventions=["random_shift", "layer_norm"],
    )
    before = _parameters(model)
    model.learn(120)
    after = _parameters(model)
    assert any("parametrizations" in key for key in after)
    assert any(not th.equal(before[key], after[key]) for key in before)


def test_learn_continual_evaluates_qr_dqn_greedily_and_tqc_stochastically(monkeypatch, tmp_path: Path) -> None:
    chosen: list[bool] = []
    original = loop.TaskEvaluator.__init__

    def record(self, sequence, n_eval_episodes, deterministic, *args, **kwargs) -> None:
        chosen.append(deterministic)
        original(self, sequence, n_eval_episodes, deterministic, *args, **kwargs)

    monkeypatch.setattr(loop.TaskEvaluator, "__init__", record)
    sequence = make_sequence("cartpole_permuted", n_tasks=2, steps_per_task=300)
    model = crl.QRDQN("MlpPolicy", sequence.make_vec_env(0, seed=0), seed=0, learning_starts=100)
    result = crl.learn_continual(model, sequence, eval_every=300, n_eval_episodes=1)
    assert result.performance.shape[0] == 2 and model.lifetime_timesteps == 600
    sequence = build_sequence(load_curriculum(_curriculum(tmp_path, "TQC", "{}")))
    model = crl.TQC("MlpPolicy", sequence.make_vec_env(0, seed=0), seed=0, learning_starts=100)
    crl.learn_continual(model, sequence, eval_every=400, n_eval_episodes=1)
    assert chosen == [True, False]


def test_offline_metrics_give_tqc_critics_the_actors_actions() -> None:
    model, _ = _trained("TQC")
    observations = np.stack([model.observation_space.sample() for _ in range(16)])
    values = crl.metrics.evaluate(model, observations, plasticity_probe=True)
    assert {"plasticity/qf1/layer1/srank", "plasticity/qf1/all/plasticity_probe"} <= set(values)
    with th.no_grad():
        actions = model.actor(th.as_tensor(observations), deterministic=True).numpy()
    assert values == crl.metrics.evaluate(model, observations, actions=actions, plasticity_probe=True)


SEQUENCES = {
    "QRDQN": "{preset: cartpole_permuted, options: {n_tasks: 2}, steps_per_task: 300}",
    "TQC": "{tasks: [{env: Pendulum-v1, kwargs: {g: 10.0}}, {env: Pendulum-v1, kwargs: {g: 4.0}}], "
    "steps_per_task: 200}",
}


def _curriculum(directory: Path, algorithm: str, options: str, hyperparameters: str = "{}") -> Path:
    path = directory / "c.yaml"
    path.write_text(
        f"algorithm: {algorithm}\npolicy_options: {options}\nhyperparameters: {hyperparameters}\n"
        f"interventions: [layer_norm, redo]\nsequence: {SEQUENCES[algorithm]}\n"
    )
    return path


@pytest.mark.parametrize(
    ("algorithm", "options", "hyperparameters"),
    [
        ("QRDQN", "{net_arch: [16], n_quantiles: 7}", "{exploration_fraction: 0.5}"),
        ("TQC", "{net_arch: [16], n_quantiles: 7, n_critics: 3}", "{top_quantiles_to_drop_per_net: 1}"),
    ],
)
def test_curricula_build_the_contrib_algorithms(
    tmp_path: Path, algorithm: str, options: str, hyperparameters: str
) -> None:
    curriculum = load_curriculum(_curriculum(tmp_path, algorithm, options, hyperparameters))
    model = build_model(curriculum, build_sequence(curriculum), seed=0)
    assert type(model) is getattr(crl, algorithm)
    quantiles = model.policy.n_quantiles if algorithm == "QRDQN" else model.critic.n_quantiles
    assert quantiles == 7
    assert [intervention.name for intervention in model.interventions] == ["layer_norm", "redo"]


def test_a_curriculum_names_the_contrib_hyperparameters(tmp_path: Path) -> None:
    path = _curriculum(tmp_path, "TQC", "{}", "{top_quantiles_to_drop: 2}")
    with pytest.raises(ConfigError, match=r"unknown key 'hyperparameters.top_quantiles_to_drop' \(did you mean "
                       r"'top_quantiles_to_drop_per_net'\?\); TQC takes: "):  # fmt: skip
        load_curriculum(path)
