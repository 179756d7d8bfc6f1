"""SB3's replay buffer without its redundant copies: writing a transition, drawing a minibatch."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize

from crl.wrappers.vec_env import copy_observation


def sample_replay(buffer: ReplayBuffer, batch_size: int, env: VecNormalize | None = None) -> ReplayBufferSamples:
    """``buffer.sample(batch_size, env)``, the same minibatch, with the drawn arrays wrapped rather than copied.

    SB3's ``ReplayBuffer`` gathers a minibatch with NumPy's integer-array indexing, which already makes
    new arrays, then copies each of the five into a tensor (``th.tensor``): about 3 us per array on
    CartPole, and two copies of 0.9 MB per batch of 32 stacked Atari frames. Here the same random
    draws (batch indices, then env indices) select the same entries, and ``th.from_numpy`` wraps the
    new arrays: equal tensors of the same dtypes and strides, which share memory with nothing but the
    arrays made for them. The memory-saving layout (``optimize_memory_usage``, SB3's usual Atari
    setting) reads a transition's next observation from the following slot, as SB3 does. A subclass
    of ``ReplayBuffer``, a buffer whose sampling methods were replaced on the instance, a buffer on
    another device and a ``VecNormalize`` env get the buffer's ``sample``.
    """
    if not _plain_sb3_buffer(buffer) or env is not None:
        return buffer.sample(batch_size, env=env)
    batch_indices = _batch_indices(buffer, batch_size)
    env_indices = np.random.randint(0, high=buffer.n_envs, size=(batch_size,))
    entries = (batch_indices, env_indices)
    if buffer.optimize_memory_usage:
        next_observations = buffer.observations[(batch_indices + 1) % buffer.buffer_size, env_indices]
    else:
        next_observations = buffer.next_observations[entries]
    # Episode ends by time limit are not terminal (the timeouts are all False unless handled)
    dones = buffer.dones[entries] * (1 - buffer.timeouts[entries])
    return ReplayBufferSamples(
        observations=th.from_numpy(buffer.observations[entries]),
        actions=th.from_numpy(buffer.actions[entries]),
        next_observations=th.from_numpy(next_observations),
        dones=th.from_numpy(dones.reshape(-1, 1)),
        rewards=th.from_numpy(buffer.rewards[entries].reshape(-1, 1)),
    )


def _batch_indices(buffer: ReplayBuffer, batch_size: int) -> np.ndarray:
    """The slots of a minibatch's transitions, drawn as SB3's ``sample`` draws them."""
    if not buffer.optimize_memory_usage:
        upper_bound = buffer.buffer_size if buffer.full else buffer.pos
        return np.random.randint(0, upper_bound, size=batch_size)
    # The slot at pos holds the newest transition's next observation: no stored transition starts there
    if buffer.full:
        return (np.random.randint(1, buffer.buffer_size, size=batch_size) + buffer.pos) % buffer.buffer_size
    return np.random.randint(0, buffer.pos, size=batch_size)


def _plain_sb3_buffer(buffer: ReplayBuffer) -> bool:
    """Whether ``buffer.sample`` is SB3's ``ReplayBuffer.sample``, on the CPU."""
    return _sb3s_own_buffer(buffer, ("sample", "_get_samples")) and buffer.device.type == "cpu"


def _sb3s_own_buffer(buffer: ReplayBuffer, methods: tuple[str, ...]) -> bool:
    """Whether ``buffer`` is SB3's own ``ReplayBuffer``, ``methods`` not replaced on it."""
    return type(buffer) is ReplayBuffer and vars(buffer).keys().isdisjoint(methods)


def add_transition(
    buffer: ReplayBuffer,
    obs: np.ndarray,
    new_obs: np.ndarray,
    action: np.ndarray,
    reward: np.ndarray,
    dones: np.ndarray,
    infos: list[dict[str, Any]],
) -> None:
    """What SB3's ``_store_transition`` adds: ``buffer.add(obs, next_obs, action, reward, dones, infos)``.

    ``next_obs`` is ``new_obs`` with the last observation of each ended episode in its row (the vec
    env has already reset it: ``infos[i]["terminal_observation"]``). SB3 deep-copies ``new_obs`` to
    write those rows, and its ``add`` copies each of the five arrays once more (``np.array``) before
    assigning it into the buffer, which copies it again. Here each array is assigned once, and the
    ended episodes' rows are written into the buffer's row of next observations (in the memory-saving
    layout, the following slot of observations, after this step's observations, as SB3 writes them):
    the same entries (``_store_transition`` of a CartPole step: 3.9 against 6.0 us,
    ``bench/hot_path.py``). A subclass of ``ReplayBuffer``, an ``add`` replaced on the instance, a
    ``Discrete`` observation space and arrays that are not plain NumPy arrays of the buffer's
    observation dtype take SB3's way.
    """
    if not _adds_plainly(buffer, obs, new_obs, action, reward, dones):
        next_obs = copy_observation(new_obs)
        _write_terminal_observations(next_obs, dones, infos)
        buffer.add(obs, next_obs, action, reward, dones, infos)
        return
    pos = buffer.pos
    buffer.observations[pos] = obs
    if buffer.optimize_memory_usage:
        next_observations = buffer.observations[(pos + 1) % buffer.buffer_size]
    else:
        next_observations = buffer.next_observations[pos]
    next_observations[...] = new_obs
    _write_terminal_observations(next_observations, dones.tolist(), infos)
    buffer.actions[pos] = action.reshape((buffer.n_envs, buffer.action_dim))
    buffer.rewards[pos] = reward
    buffer.dones[pos] = dones
    if buffer.handle_timeout_termination:
        buffer.timeouts[pos] = np.array([info.get("TimeLimit.truncated", False) for info in infos])
    buffer.pos += 1
    if buffer.pos == buffer.buffer_size:
        buffer.full = True
        buffer.pos = 0


def _write_terminal_observations(next_obs: np.ndarray, dones: Any, infos: list[dict[str, Any]]) -> None:
    """Row ``i`` of ``next_obs`` becomes env ``i``'s last observation where its episode ended.

    The vec env has already reset that env: ``next_obs`` holds the next episode's first observation,
    the ended episode's last one is in the info dict.
    """
    for i, done in enumerate(dones):
        if done and infos[i].get("terminal_observation") is not None:
            next_obs[i] = infos[i]["terminal_observation"]


def _adds_plainly(buffer: ReplayBuffer, obs: Any, new_obs: Any, action: Any, reward: Any, dones: Any) -> bool:
    """Whether assigning the arrays stores what SB3's ``add`` of their copies stores.

    SB3 writes an ended episode's last observation into a copy of ``new_obs`` first, i.e. casts it to
    ``new_obs``'s dtype: writing it into the buffer directly is the same when that is the buffer's.
    """
    ndarray = np.ndarray
    return (
        _sb3s_own_buffer(buffer, ("add",))
        and not isinstance(buffer.observation_space, spaces.Discrete)
        # Written out rather than all(...) over a generator: 0.7 us per environment step
        and type(obs) is ndarray
        and type(new_obs) is ndarray
        and type(action) is ndarray
        and type(reward) is ndarray
        and type(dones) is ndarray
        and new_obs.dtype == buffer.observations.dtype
        and not new_obs.dtype.hasobject
    )
