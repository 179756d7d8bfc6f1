"""The metrics monitor during training: stable names in SB3's logger, and training left untouched."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch as th
from conftest import SpacesEnv
from gymnasium import spaces
from stable_baselines3.common.logger import KVWriter, Logger, configure
from stable_baselines3.common.utils import ConstantSchedule
from test_sb3_equivalence import CASES, assert_same_training

import crl
from crl.continual import learn_continual
from crl.metrics import (
    MetricsConfig,
    MetricsError,
    activation_kind,
    dead_units,
    dormant_ratio,
    fau,
    feature_metrics,
    feature_norm,
    gram_singular_values,
    metric_name,
    suite,
)
from crl.metrics.functions import inactive_count, rank_metrics_from_singular_values
from crl.policies import ActorCriticCnnPolicy, ActorCriticPolicy, DQNPolicy
from crl.wrappers import permuted_observations

# Every metric on, at a short cadence: the strictest check that measuring changes nothing.
ALL_ON = dict(every=500, plasticity_probe_every=1000, hessian_every=1000, grama_every=1000, probe_batch_size=256)
NETWORKS = {"DQN": ["q_net"], "PPO": ["actor", "critic"], "SAC": ["actor", "qf0", "qf1"]}
LOSSES = {"DQN": ["q_net"], "PPO": ["policy"], "SAC": ["critic", "actor"]}
BOX = spaces.Box(-1.0, 1.0, (4,), np.float32)
IMAGE = spaces.Box(0, 255, (4, 44, 44), np.uint8)
DISCRETE = spaces.Discrete(3)
LR = ConstantSchedule(1e-3)
LAYER_METRICS = ["srank", "effective_rank", "pca_rank", "feature_rank", "dormant_ratio", "dead_units", "fau"]


class _Recorder(KVWriter):
    """An in-memory SB3 output format: every dump's key-values."""

    def __init__(self) -> None:
        self.dumps: list[dict[str, Any]] = []

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        self.dumps.append(dict(key_values))


def expected_metric_keys(networks: list[str], losses: list[str]) -> set[str]:
    """The keys a run with every metric on logs for its two-hidden-layer ``networks`` and its ``losses``."""
    expected = {
        f"plasticity/{network}/{layer}/{metric}"
        for network in networks
        for layer in ("layer0", "layer1", "all")
        for metric in ([*LAYER_METRICS, "grama_ratio"] if layer != "all" else ["grama_ratio"])
    }
    expected |= {
        f"plasticity/{network}/all/{metric}"
        for network in networks
        for metric in ("dormant_ratio", "dead_units", "fau", "weight_magnitude", "plasticity_probe")
    }
    expected |= {
        f"plasticity/{network}/penultimate/{metric}"
        for network in networks
        for metric in ("srank", "effective_rank", "pca_rank", "feature_rank", "feature_norm")
    }
    return expected | {
        f"plasticity/{loss}/all/{metric}" for loss in losses for metric in ("grad_norm", "hessian_top_eig")
    }


def _train(name: str, **extra: Any) -> tuple[Any, _Recorder]:
    env_id, steps, kwargs = CASES[name]
    model = getattr(crl, name)("MlpPolicy", env_id, seed=3, device="cpu", **kwargs, **extra)
    recorder = _Recorder()
    model.set_logger(Logger(folder=None, output_formats=[recorder]))
    model.learn(steps)
    return model, recorder


@pytest.mark.parametrize("name", list(CASES))
def test_metrics_do_not_change_training_and_reach_the_logger(name: str) -> None:
    reference, _ = _train(name)
    monitored, recorder = _train(name, metrics=ALL_ON)
    assert_same_training(reference, monitored)

    logged = {key for dump in recorder.dumps for key in dump}
    expected = expected_metric_keys(NETWORKS[name], LOSSES[name])
    assert expected <= logged, sorted(expected - logged)
    # weight_change needs a previous measurement: PPO's 2048 steps of 256-step rollouts measure several times
    assert all(f"plasticity/{net}/all/weight_change" in logged for net in NETWORKS[name])
    values = monitored.metrics_monitor.latest
    assert all(np.isfinite(value) for value in values.values())
    assert all(0 <= values[f"plasticity/{net}/all/fau"] <= 1 for net in NETWORKS[name])
    assert all(values[f"plasticity/{loss}/all/grad_norm"] > 0 for loss in LOSSES[name])


def test_cadence_and_csv_output(tmp_path: Path) -> None:
    """Measurements at the first train() after each multiple of `every` once the buffer holds a probe batch;
    the CSV format receives them."""
    metrics = {"every": 250, "probe_batch_size": 200}
    model = crl.DQN("MlpPolicy", "CartPole-v1", seed=0, learning_starts=100, metrics=metrics)
    measured_at: list[int] = []
    monitor = model.metrics_monitor
    assert monitor is not None
    original = monitor.measure

    def measure(algo: Any) -> dict[str, float]:
        measured_at.append(algo.num_timesteps)
        return original(algo)

    monitor.measure = measure  # type: ignore[method-assign]
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(1000, log_interval=1)
    # train() runs every 4 steps once past learning_starts: at 104, 108, ..., 1000; the first
    # measurement waits for 200 transitions in the buffer
    assert measured_at == [200, 252, 500, 752, 1000]
    rows = list(csv.DictReader((tmp_path / "progress.csv").open()))
    column = [row["plasticity/q_net/all/dormant_ratio"] for row in rows]
    assert sum(bool(value) for value in column) == len(measured_at)
    assert monitor.latest_timesteps == 1000


def test_grad_norm_is_the_updates_mean_norm_before_clipping(monkeypatch: pytest.MonkeyPatch) -> None:
    """grad_norm is the mean over the measured update's minibatches of the norm before clipping."""
    norms: list[float] = []
    compute_gradients = crl.algorithms.base.compute_gradients

    def computing(optimizer: th.optim.Optimizer, loss: th.Tensor) -> None:
        compute_gradients(optimizer, loss)
        # taken here, between backward() and the clipping, not from what the monitor reads
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(float(th.nn.utils.get_total_norm(grads)))

    monkeypatch.setattr(crl.algorithms.base, "compute_gradients", computing)
    model = crl.PPO(
        "MlpPolicy",
        "CartPole-v1",
        seed=0,
        n_steps=128,
        batch_size=32,
        n_epochs=2,
        max_grad_norm=1e-3,  # every step clips: a norm read after the clipping would be 1e-3
        metrics={"every": 10_000},
    )
    model.learn(128)
    assert len(norms) == 8 and min(norms) > 1e-2
    assert model.metrics_monitor.latest["plasticity/policy/all/grad_norm"] == pytest.approx(np.mean(norms))


def test_the_first_measurement_waits_for_a_whole_probe_batch_in_the_replay_buffer() -> None:
    """SB3's default learning_starts=100 would otherwise fix 101 random-policy transitions as the probe batch."""
    model = crl.SAC("MlpPolicy", "Pendulum-v1", seed=0, policy_kwargs=dict(net_arch=[16, 16]), metrics={"every": 5000})
    model.learn(1100)
    monitor = model.metrics_monitor
    assert monitor.probe_batch.observations.shape == (1024, 3) and monitor.latest_timesteps == 1024
    assert monitor.measurements == 1


def test_probe_batch_is_fixed_and_survives_save_and_load(tmp_path: Path) -> None:
    env_id, _, kwargs = CASES["SAC"]
    model = crl.SAC("MlpPolicy", env_id, seed=1, **kwargs, metrics={"every": 100, "probe_batch_size": 64})
    model.learn(300)
    monitor = model.metrics_monitor
    first = monitor.probe_batch
    assert first.observations.shape == (64, 3) and first.actions.shape == (64, 1)
    # distinct transitions, drawn once: later measurements reuse the same batch
    assert len({tuple(row.tolist()) for row in first.observations}) == 64
    model.learn(200, reset_num_timesteps=False)
    assert monitor.probe_batch is first and monitor.latest_timesteps == 500
    model.save(tmp_path / "model.zip")

    loaded = crl.SAC.load(tmp_path / "model.zip", env=model.get_env())
    assert loaded._hooks.hooks[-1] is loaded.metrics_monitor
    assert loaded.metrics_monitor.latest == monitor.latest
    loaded.learn(200, reset_num_timesteps=False)
    assert loaded.metrics_monitor.latest_timesteps == 700
    assert th.equal(loaded.metrics_monitor.probe_batch.observations, first.observations)
    # weight_change is measured against the weights saved with the model's last measurement
    assert "plasticity/actor/all/weight_change" in loaded.metrics_monitor.latest


def test_the_cadences_go_on_over_a_task_sequence() -> None:
    """The continual loop restarts ``num_timesteps`` at every task; the measurements keep the model's lifetime clock."""
    sequence = permuted_observations(n_tasks=3, steps_per_task=512)
    metrics = {"every": 1000, "plasticity_probe_every": 1000, "probe_batch_size": 64}
    model = crl.PPO("MlpPolicy", sequence.make_vec_env(0, seed=0), seed=0, n_steps=256, batch_size=64, metrics=metrics)
    measured: list[tuple[int, bool]] = []
    measure = model.metrics_monitor.measure

    def spy(algo: Any) -> dict[str, float]:
        values = measure(algo)
        measured.append((algo.lifetime_timesteps, "plasticity/actor/all/plasticity_probe" in values))
        return values

    model.metrics_monitor.measure = spy  # type: ignore[method-assign]
    learn_continual(model, sequence, eval_every=10_000, n_eval_episodes=1)
    # train() runs every 256 steps and each task's first one at num_timesteps 256: the baseline at
    # 256, then the first train() at or after 1,000 steps of the sequence (in the second task)
    assert measured == [(256, True), (1024, True)]
    assert model.metrics_monitor.latest_timesteps == 1024


def test_bad_settings_fail_at_construction() -> None:
    with pytest.raises(MetricsError, match=r"no key\(s\) \['evry'\]; allowed keys: every: int > 0 = 10000"):
        crl.PPO("MlpPolicy", "CartPole-v1", metrics={"evry": 100})
    with pytest.raises(MetricsError, match=r"metrics key hessian_every=0: .*greater than 0 \(allowed: int > 0 or None"):
        crl.DQN("MlpPolicy", "CartPole-v1", metrics={"hessian_every": 0})
    with pytest.raises(MetricsError, match="metrics must be a MetricsConfig, a mapping"):
        crl.DQN("MlpPolicy", "CartPole-v1", metrics=100)  # type: ignore[arg-type]
    assert crl.SAC("MlpPolicy", "Pendulum-v1", metrics=MetricsConfig(every=7)).metrics_monitor.config.every == 7


def test_the_whole_suite_measures_dict_observations() -> None:
    every = {"every": 32, "plasticity_probe_every": 32, "hessian_every": 32, "hessian_iterations": 2, "grama_every": 32}
    env = SpacesEnv(spaces.Dict({"a": spaces.Box(-1, 1, (3,), np.float32), "b": spaces.Box(-1, 1, (2,), np.float32)}))
    model = crl.DQN("MultiInputPolicy", env, buffer_size=100, learning_starts=16, metrics=every)
    model.learn(128)  # from step 100: a full buffer
    for metric in ("layer0/srank", "all/plasticity_probe", "all/hessian_top_eig", "all/grama_ratio"):
        assert np.isfinite(model.metrics_monitor.latest[f"plasticity/q_net/{metric}"])


def _metrics_one_network_at_a_time(policy: Any, obs: th.Tensor, tau: float) -> dict[str, float]:
    """``feature_metrics`` from the single-purpose functions, each network on its own."""
    features = policy.hidden_features(obs)
    hidden = policy.hidden_layers(list(features))
    expected: dict[str, float] = {}
    for network, by_layer in features.items():
        posts = [by_layer[layer.name].post for layer in hidden[network]]
        kinds = [activation_kind(layer.activation) for layer in hidden[network]]
        pooled_dormant, dormant = dormant_ratio(posts, tau)
        for index, (layer, post) in enumerate(zip(hidden[network], posts, strict=True)):
            per_layer = {
                **rank_metrics_from_singular_values(gram_singular_values(post), post.shape[0]),
                "dormant_ratio": dormant[index],
                "dead_units": dead_units([post]),
                "fau": fau([post], kinds[index]),
                "feature_norm": feature_norm(post),
            }
            expected.update({metric_name(network, layer.name, key): value for key, value in per_layer.items()})
        pooled = {"dormant_ratio": pooled_dormant, "dead_units": dead_units(posts), "fau": fau(posts, kinds)}
        expected.update({metric_name(network, "all", key): value for key, value in pooled.items()})
        last = by_layer[hidden[network][-1].name]
        representation = {
            **rank_metrics_from_singular_values(gram_singular_values(last.pre), last.pre.shape[0]),
            "feature_norm": feature_norm(last.pre),
        }
        expected.update({metric_name(network, "penultimate", key): value for key, value in representation.items()})
    return expected


@pytest.mark.parametrize(
    "make",
    [
        # a NatureCNN shared by actor and critic, with LayerNorm and CReLU: its layers are measured once
        lambda: ActorCriticCnnPolicy(
            IMAGE, DISCRETE, LR, layer_norm="pre", activation="crelu", net_arch=dict(pi=[12], vf=[6, 5])
        ),
        lambda: ActorCriticPolicy(BOX, DISCRETE, LR),  # tanh units, judged by saturation
        lambda: DQNPolicy(BOX, DISCRETE, LR, net_arch=[6, 5]),
    ],
    ids=["ppo_shared_cnn", "ppo_tanh", "dqn"],
)
def test_feature_metrics_equal_each_networks_metrics_from_the_single_functions(
    make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    th.manual_seed(0)
    policy = make()
    space = policy.observation_space
    generator = th.Generator().manual_seed(1)
    if space.dtype == np.uint8:
        obs = th.randint(0, 256, (32, *space.shape), dtype=th.uint8, generator=generator)
    else:
        obs = th.randn(32, *space.shape, generator=generator) * 3
    for tau in (0.025, 0.6):  # 0.6 makes some units dormant
        measured = feature_metrics(policy, obs, dormant_tau=tau)
        expected = _metrics_one_network_at_a_time(policy, obs, tau)
        assert list(measured) == list(expected)
        assert measured == expected  # bit for bit
    measured_layers: list[th.Tensor] = []
    monkeypatch.setattr(suite, "inactive_count", lambda h, kind: measured_layers.append(h) or inactive_count(h, kind))
    feature_metrics(policy, obs)
    paths = {layer.path for layers in policy.hidden_layers().values() for layer in layers}
    assert len(measured_layers) == len(paths)  # a layer of two networks (the shared CNN) is measured once
    assert any(0 < value < 1 for key, value in measured.items() if key.endswith("/all/dormant_ratio"))
