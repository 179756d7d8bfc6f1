"""With no interventions, crl's algorithms train bitwise like SB3's (this guards every train() change)."""

from __future__ import annotations

import numpy as np
import pytest
import sb3_contrib
import stable_baselines3 as sb3
import torch as th
from conftest import SpacesEnv
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer

import crl
from crl.hooks import GradientStep
from crl.interventions import Intervention

CASES = {
    "DQN": (
        "CartPole-v1",
        3000,
        dict(learning_starts=500, train_freq=4, gradient_steps=2, target_update_interval=250, batch_size=32),
    ),
    "PPO": ("CartPole-v1", 2048, dict(n_steps=256, batch_size=64, n_epochs=4)),
    "SAC": (
        "Pendulum-v1",
        800,
        dict(learning_starts=200, batch_size=64, policy_kwargs=dict(net_arch=[64, 64])),
    ),
}


def _train(algo_class: type, name: str, **extra):
    env_id, steps, kwargs = CASES[name]
    model = algo_class("MlpPolicy", env_id, seed=3, device="cpu", **kwargs, **extra)
    model.learn(steps)
    return model


def assert_same_training(reference, candidate) -> None:
    ref_params, cand_params = reference.policy.state_dict(), candidate.policy.state_dict()
    assert list(ref_params) == list(cand_params)
    for key, value in ref_params.items():
        assert th.equal(value, cand_params[key]), f"parameter {key} differs"
    assert reference.num_timesteps == candidate.num_timesteps
    assert reference._n_updates == candidate._n_updates


@pytest.mark.parametrize("name", list(CASES))
def test_identical_to_sb3_without_interventions(name: str) -> None:
    reference = _train(getattr(sb3, name), name)
    candidate = _train(getattr(crl, name), name)
    assert_same_training(reference, candidate)


def test_dqn_with_the_memory_saving_replay_layout_trains_like_sb3s(monkeypatch: pytest.MonkeyPatch) -> None:
    """SB3's usual Atari setting (one array of observations) takes crl's replay path, past a wrap-around."""
    memory_saving = dict(
        buffer_size=1000, optimize_memory_usage=True, replay_buffer_kwargs=dict(handle_timeout_termination=False)
    )
    reference = _train(sb3.DQN, "DQN", **memory_saving)
    for method in ("add", "sample"):  # crl's path calls neither
        monkeypatch.setattr(ReplayBuffer, method, None)
    candidate = _train(crl.DQN, "DQN", **memory_saving)
    assert candidate.replay_buffer.full and candidate.replay_buffer.optimize_memory_usage
    assert_same_training(reference, candidate)


class _Observer(Intervention):
    """Fires every hook, records features and reads gradient norms, but changes nothing."""

    name = "test_observer"
    needs_features = True

    def model_post_init(self, context) -> None:
        self._calls: dict[str, int] = {}
        self._feature_keys: set[str] = set()
        self._grad_norms: list[float] = []

    def _count(self, hook: str) -> None:
        self._calls[hook] = self._calls.get(hook, 0) + 1

    def on_step(self, algo) -> None:
        self._count("on_step")

    def on_train_start(self, algo) -> None:
        self._count("on_train_start")

    def before_gradient_step(self, algo, step: GradientStep) -> None:
        self._count("before_gradient_step")

    def auxiliary_loss(self, algo, step: GradientStep):
        self._count(f"auxiliary_loss/{step.loss_name}")
        self._feature_keys.update(step.features)
        return None

    def after_backward(self, algo, step: GradientStep) -> None:
        self._grad_norms.append(step.grad_norm)

    def after_optimizer_step(self, algo, step: GradientStep) -> None:
        self._count(f"after_optimizer_step/{step.loss_name}")


@pytest.mark.parametrize("name", list(CASES))
def test_observing_hooks_change_nothing(name: str) -> None:
    """Hooks that only read (features, gradient norms) leave training bitwise unchanged."""
    reference = _train(getattr(sb3, name), name)
    observer = _Observer()
    candidate = _train(getattr(crl, name), name, interventions=[observer])
    assert_same_training(reference, candidate)

    env_steps = candidate.num_timesteps // candidate.n_envs
    assert observer._calls["on_step"] == env_steps
    n_steps = observer._calls["before_gradient_step"]
    assert n_steps > 0
    losses = {"DQN": ["q_net"], "PPO": ["policy"], "SAC": ["critic", "actor"]}[name]
    for loss in losses:
        assert observer._calls[f"auxiliary_loss/{loss}"] == n_steps
        assert observer._calls[f"after_optimizer_step/{loss}"] == n_steps
    networks = {"DQN": {"q_net"}, "PPO": {"actor", "critic"}, "SAC": {"actor", "qf0", "qf1"}}[name]
    assert observer._feature_keys == networks
    assert len(observer._grad_norms) == n_steps * len(losses)
    assert all(norm > 0 for norm in observer._grad_norms)


DICT_CASES = {
    "DQN": dict(buffer_size=300, learning_starts=50, train_freq=4, gradient_steps=2, target_update_interval=50),
    "PPO": dict(n_steps=64, batch_size=32, n_epochs=2),
    "SAC": dict(buffer_size=300, learning_starts=50),
    "QRDQN": dict(buffer_size=300, learning_starts=50, train_freq=4, target_update_interval=50),
    "TQC": dict(buffer_size=300, learning_starts=50),
}


@pytest.mark.parametrize("name", list(DICT_CASES))
def test_identical_to_sb3_on_dict_observations(name: str) -> None:
    """Frames, a vector and a discrete key: SB3's CombinedExtractor, its dict buffers and preprocessing."""

    def env() -> SpacesEnv:
        frames = spaces.Box(0, 255, (36, 36, 2), np.uint8)
        keys = {"frames": frames, "mode": spaces.Discrete(3), "position": spaces.Box(-1, 1, (2,), np.float32)}
        return SpacesEnv(spaces.Dict(keys), spaces.Box(-1, 1, (2,), np.float32) if name in ("SAC", "TQC") else None)

    settings = {"PPO": {}}.get(name, {"batch_size": 16})
    policy_kwargs = dict(features_extractor_kwargs=dict(cnn_output_dim=16), net_arch=[16])
    reference_class = getattr(sb3, name, None) or getattr(sb3_contrib, name)
    kwargs = dict(seed=3, device="cpu", policy_kwargs=policy_kwargs, **DICT_CASES[name], **settings)
    # Each model trains right after its construction, which seeds the global random generators.
    models = [
        algo_class("MultiInputPolicy", env(), **kwargs).learn(200)
        for algo_class in (reference_class, getattr(crl, name))
    ]
    assert_same_training(*models)
