"""The single-file DQN baseline's training loop, timed as a reference for ``bench/overhead.py``'s throughput table.

Issue 10 measures crl's DQN against "a minimal single-file loop" with the popular single-file DQN
baseline's hyperparameters (CleanRL's ``dqn.py``): that loop, written here the way such a script
writes it, so that the table shows where crl and plain SB3 stand against it on the same machine and
in the same run. It keeps what that script keeps: a gymnasium ``SyncVectorEnv`` of one env, SB3's
``ReplayBuffer``, an epsilon-greedy argmax of the Q-network, a gradient step every ``train_freq`` steps
from ``learning_starts`` on with the mean squared TD error (no gradient clipping, no logger, no
callbacks), and a hard target update every ``target_update_interval`` steps.

``python bench/single_file_dqn.py`` times one run of ``dqn_cartpole``'s length.
"""

from __future__ import annotations

import itertools
import random
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3.common.buffers import ReplayBuffer
from torch import nn
from torch.nn import functional as F


def q_network(observation_size: int, n_actions: int, net_arch: list[int]) -> nn.Sequential:
    sizes = [observation_size, *net_arch]
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(sizes[-1], n_actions))


def timed_single_file_dqn(env_id: str, steps: int, seed: int, hyperparameters: dict[str, Any]) -> float:
    """Wall time in seconds of the loop over ``steps`` environment steps (set-up not included).

    :param hyperparameters: ``bench/overhead.py``'s DQN hyperparameters (SB3's names)
    """
    h = hyperparameters
    random.seed(seed)
    np.random.seed(seed)
    th.manual_seed(seed)
    envs = gym.vector.SyncVectorEnv([lambda: gym.make(env_id)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    observation_size = int(np.prod(envs.single_observation_space.shape or ()))
    n_actions = int(envs.single_action_space.n)  # type: ignore[attr-defined]
    q_net = q_network(observation_size, n_actions, h["policy_kwargs"]["net_arch"])
    q_target = q_network(observation_size, n_actions, h["policy_kwargs"]["net_arch"])
    q_target.load_state_dict(q_net.state_dict())
    optimizer = th.optim.Adam(q_net.parameters(), lr=h["learning_rate"])
    replay = ReplayBuffer(
        h["buffer_size"],
        envs.single_observation_space,
        envs.single_action_space,
        "cpu",
        handle_timeout_termination=False,
    )
    exploration_steps = h["exploration_fraction"] * steps
    obs, _ = envs.reset(seed=seed)

    start = time.perf_counter()
    for step in range(steps):
        epsilon = max(1.0 + (h["exploration_final_eps"] - 1.0) * step / exploration_steps, h["exploration_final_eps"])
        if random.random() < epsilon:
            actions = np.array([envs.single_action_space.sample()])
        else:
            actions = th.argmax(q_net(th.Tensor(obs)), dim=1).numpy()
        next_obs, rewards, terminations, truncations, infos = envs.step(actions)
        # with same-step autoreset, next_obs of an ended episode is the next one's first observation
        real_next_obs = next_obs.copy()
        for index, truncated in enumerate(truncations):
            if truncated:
                real_next_obs[index] = infos["final_obs"][index]
        replay.add(obs, real_next_obs, actions, rewards, terminations, [infos])
        obs = next_obs

        if step > h["learning_starts"] and step % h["train_freq"] == 0:
            batch = replay.sample(h["batch_size"])
            with th.no_grad():
                next_q_max, _ = q_target(batch.next_observations).max(dim=1)
                td_target = batch.rewards.flatten() + h["gamma"] * next_q_max * (1 - batch.dones.flatten())
            q_taken = q_net(batch.observations).gather(1, batch.actions).squeeze()
            loss = F.mse_loss(td_target, q_taken)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if step % h["target_update_interval"] == 0:
            q_target.load_state_dict(q_net.state_dict())
    elapsed = time.perf_counter() - start
    envs.close()
    return elapsed


if __name__ == "__main__":
    from overhead import CONFIGS  # bench/ is on sys.path when this runs as a script

    th.set_num_threads(1)
    config = CONFIGS["dqn_cartpole"]
    seconds = timed_single_file_dqn("CartPole-v1", config.steps, 0, config.hyperparameters)
    print(f"single-file DQN, {config.steps:,} steps: {seconds:.2f} s ({config.steps / seconds:,.0f} steps/s)")
