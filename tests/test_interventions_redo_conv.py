"""ReDo across NatureCNN's conv -> linear boundary, on a real ALE game (SPEC.md §6)."""

from __future__ import annotations

import ale_py
import gymnasium as gym
import pytest
import torch as th
from stable_baselines3.common.env_util import make_atari_env
from stable_baselines3.common.vec_env import VecFrameStack

import crl
from crl.interventions import ReDo
from crl.metrics import unit_scores

gym.register_envs(ale_py)


def test_redo_recycles_dead_conv_channels_and_zeroes_their_flattened_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    env = VecFrameStack(make_atari_env("ALE/Breakout-v5", n_envs=1, seed=0), n_stack=4)
    model = crl.DQN("CnnPolicy", env, buffer_size=500, learning_starts=100, train_freq=4, seed=0)
    model.learn(160)
    cnn = model.policy.q_net.features_extractor.cnn
    last_conv, linear = cnn[4], model.policy.q_net.features_extractor.linear[0]
    dead = th.tensor([3, 17, 40])
    with th.no_grad():  # channels that are zero on every input: ReLU of -1
        last_conv.weight[dead] = 0.0
        last_conv.bias[dead] = -1.0
    probe = th.as_tensor(model.replay_buffer.observations[:64, 0]).float()
    monkeypatch.setattr("crl.interventions.redo.probe_batch", lambda algo, size: (probe, None))
    outputs = model.q_net(probe)
    # linear units silent on the probe are recycled too: their rows (incoming weights) become fresh
    silent_linear = unit_scores(model.policy.hidden_features(probe)["q_net"]["layer3"].post) <= 0.0
    positions = linear.weight.shape[1] // last_conv.out_channels  # 7 x 7 after the flatten

    recycled = ReDo(tau=0.0).recycle(model)

    assert recycled >= len(dead)
    assert th.all(last_conv.bias[dead] == 0) and th.all(last_conv.weight[dead].abs().sum(dim=(1, 2, 3)) > 0)
    columns = (dead[:, None] * positions + th.arange(positions)).flatten()
    kept_rows = ~silent_linear
    assert kept_rows.sum() > 100  # the check below covers many rows
    assert th.all(linear.weight[kept_rows][:, columns] == 0)
    state = model.policy.optimizer.state[linear.weight]
    for moment in (state["exp_avg"], state["exp_avg_sq"]):
        assert th.all(moment[:, columns] == 0)
    # the recycled channels were silent, and their outgoing columns are zero: the Q-values are unchanged
    assert th.equal(model.q_net(probe), outputs)
    target_conv = model.policy.q_net_target.features_extractor.cnn[4]
    assert th.equal(target_conv.weight[dead], last_conv.weight[dead])


def test_recycling_one_networks_units_zeroes_them_in_every_network_that_reads_the_shared_extractor(
    image_env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PPO's actor and critic share the CNN: ReDo(networks=["critic"]) recycles its last layer's units,
    # and the actor's head reads them as well as the critic's (it kept reading them before).
    model = crl.PPO("CnnPolicy", image_env((36, 36, 1)), n_steps=32, batch_size=32, seed=0)
    policy = model.policy
    probe = th.rand(16, 1, 36, 36)
    monkeypatch.setattr("crl.interventions.redo.probe_batch", lambda algo, size: (probe, None))
    linear = policy.features_extractor.linear[0]
    with th.no_grad():  # units 0..3 of the shared linear layer silent on every input
        linear.weight[:4] = 0.0
        linear.bias[:4] = -1.0
    ReDo(tau=0.0, networks=["critic"]).recycle(model)
    for head in (policy.action_net, policy.value_net):
        assert th.all(head.weight[:, :4] == 0)
    assert th.all(linear.bias[:4] == 0)


def test_an_injection_into_one_network_takes_only_its_head_from_a_shared_extractor(image_env) -> None:
    # PPO's CnnPolicy with net_arch=[]: both heads read the shared CNN's last layer; the actor's is action_net.
    model = crl.PPO("CnnPolicy", image_env((36, 36, 1)), n_steps=32, batch_size=32, seed=0)
    actor_only = crl.interventions.PlasticityInjection(at_step=10, networks=["actor"])
    both = crl.interventions.PlasticityInjection(at_step=10)
    assert actor_only._head_paths(model) == [("action_net", 1)]
    assert sorted(both._head_paths(model)) == [("action_net", 1), ("value_net", 1)]
