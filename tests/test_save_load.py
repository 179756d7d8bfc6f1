"""A LayerNorm run of each algorithm trains, saves, loads in a new process and predicts the same actions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from torch import nn

import crl
from crl.hooks import GradientStep
from crl.interventions import Intervention, LayerNorm

RUNS = {
    "DQN": ("CartPole-v1", 600, dict(learning_starts=100)),
    "PPO": ("CartPole-v1", 256, dict(n_steps=128, batch_size=64)),
    "SAC": ("Pendulum-v1", 300, dict(learning_starts=100, policy_kwargs=dict(net_arch=[32, 32]))),
}

_LOAD_AND_PREDICT = """
import json, sys
import gymnasium as gym
import numpy as np
import crl
from torch import nn
model = getattr(crl, sys.argv[1]).load(sys.argv[2], device="cpu")
obs = np.array(json.loads(sys.argv[3]), dtype=np.float32)
actions, _ = model.predict(obs, deterministic=True)
norms = sum(isinstance(m, nn.LayerNorm) for m in model.policy.modules())
print(json.dumps({"actions": actions.tolist(), "layer_norms": norms, "interventions": repr(model.interventions)}))
"""


@pytest.mark.parametrize("name", list(RUNS))
def test_layer_norm_model_round_trips_through_a_new_process(name: str, tmp_path: Path) -> None:
    env_id, steps, kwargs = RUNS[name]
    model = getattr(crl, name)("MlpPolicy", env_id, seed=0, interventions=[LayerNorm()], **kwargs)
    model.learn(steps)
    path = tmp_path / "model.zip"
    model.save(path)

    obs = np.stack([model.observation_space.sample() for _ in range(16)])
    expected, _ = model.predict(obs, deterministic=True)
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_AND_PREDICT, name, str(path), json.dumps(obs.tolist())],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,  # crl must import from anywhere, not only from the repository
    )
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    np.testing.assert_array_equal(np.array(loaded["actions"]), expected)
    assert loaded["layer_norms"] == sum(isinstance(m, nn.LayerNorm) for m in model.policy.modules()) > 0
    assert loaded["interventions"] == "[LayerNorm(placement='pre')]"


class _CountUpdates(Intervention):
    """Counts optimizer steps in private state, which must survive save/load."""

    name = "test_count_updates"

    def model_post_init(self, context) -> None:
        self._updates = 0
        self._setups = 0

    def on_setup(self, algo) -> None:
        self._setups += 1

    def after_optimizer_step(self, algo, step: GradientStep) -> None:
        self._updates += 1


def test_intervention_state_survives_save_and_load(tmp_path: Path) -> None:
    model = crl.DQN("MlpPolicy", "CartPole-v1", seed=0, learning_starts=50, interventions=[_CountUpdates()])
    model.learn(300)
    counted = model.interventions[0]._updates
    assert counted == model._n_updates > 0
    model.save(tmp_path / "model.zip")

    loaded = crl.DQN.load(tmp_path / "model.zip", env=model.get_env())
    restored = loaded.interventions[0]
    assert restored._updates == counted
    assert restored._setups == 2  # once at construction, once when the loaded model was set up
    loaded.learn(200, reset_num_timesteps=False)
    assert restored._updates == loaded._n_updates
    for key, value in model.policy.state_dict().items():
        assert value.shape == loaded.policy.state_dict()[key].shape
    assert not th.equal(model.policy.q_net.q_net[0].weight, loaded.policy.q_net.q_net[0].weight)


def test_layer_norm_cnn_policy_trains_on_a_real_atari_game(tmp_path: Path) -> None:
    import ale_py
    import gymnasium as gym
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    gym.register_envs(ale_py)

    env = VecFrameStack(make_atari_env("ALE/Breakout-v5", n_envs=1, seed=0), n_stack=4)
    model = crl.DQN(
        "CnnPolicy", env, seed=0, buffer_size=500, learning_starts=100, interventions=[LayerNorm()], device="cpu"
    )
    model.learn(200)
    norms = [m for m in model.policy.q_net.modules() if isinstance(m, nn.LayerNorm)]
    assert [tuple(n.normalized_shape) for n in norms] == [(32, 20, 20), (64, 9, 9), (64, 7, 7), (512,)]
    features = model.policy.hidden_features(model.replay_buffer.observations[:8, 0])
    assert features["q_net"]["layer3"].post.shape == (8, 512)
    model.save(tmp_path / "atari.zip")
    loaded = crl.DQN.load(tmp_path / "atari.zip", device="cpu")
    obs = model.replay_buffer.observations[:8, 0]
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])


def test_a_model_saved_by_an_earlier_version_loads_and_trains() -> None:
    # Saved at 42b81e7 (crl 0.1.0): its interventions lack the owner, and ReDo counted its checks by
    # the step of the last one (_last_check 200 with every=100: two checks done).
    path = Path(__file__).parent / "data" / "dqn_l2_init_redo_0.1.0-42b81e7.zip"
    model = crl.DQN.load(path, env=gym.make("CartPole-v1"))
    l2_init, redo = model.interventions
    assert l2_init._owner == redo._owner == model._intervention_owner
    assert redo._checks_done == 2 and not hasattr(redo, "_last_check")
    model.learn(120, reset_num_timesteps=False)
    assert redo._checks_done == 3
