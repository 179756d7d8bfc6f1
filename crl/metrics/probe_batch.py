"""Drawing the fixed probe batch from an algorithm's buffer without touching training's random streams.

SB3's ``sample()`` draws from numpy's global generator, which also drives training's minibatches:
a metric that called it would change training. Here the buffer indices come from a private
``numpy.random.Generator``; SB3's own ``_get_samples`` then builds the batch (so n-step returns,
timeouts, VecNormalize and dict observations are handled as in training), with the global
generator's state saved and restored around it, since it draws env indices for multi-env buffers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from stable_baselines3.common.buffers import ReplayBuffer, RolloutBuffer

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm


@contextlib.contextmanager
def isolated_global_numpy(seed: int) -> Iterator[None]:
    """numpy's global generator seeded with ``seed`` inside the block, and as it was after it."""
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        np.random.set_state(state)


def draw_probe_batch(algo: BaseAlgorithm, size: int, seed: int) -> Any:
    """Up to ``size`` distinct transitions of the algorithm's buffer, as SB3's samples of that buffer.

    Off-policy algorithms draw from the replay buffer (``ReplayBufferSamples``: observations, actions,
    next observations, rewards, dones); PPO from the rollout that ``train()`` just used
    (``RolloutBufferSamples``, with advantages and returns), so call it after ``train()``.

    :param algo: an SB3 algorithm with a ``replay_buffer`` or a ``rollout_buffer``
    :param size: the wanted number of samples (fewer if the buffer holds fewer)
    :param seed: seed of the private generator that picks the samples
    """
    rng = np.random.default_rng(seed)
    replay = getattr(algo, "replay_buffer", None)
    if isinstance(replay, ReplayBuffer):
        indices = _replay_indices(replay, size, rng)
        with isolated_global_numpy(seed):
            return replay._get_samples(indices, env=algo._vec_normalize_env)  # type: ignore[attr-defined]
    rollout = getattr(algo, "rollout_buffer", None)
    if isinstance(rollout, RolloutBuffer):
        if not rollout.generator_ready:
            raise RuntimeError("the probe batch is drawn from a rollout that train() has used (flattened)")
        total = rollout.buffer_size * rollout.n_envs
        indices = np.sort(rng.choice(total, size=min(size, total), replace=False))
        return rollout._get_samples(indices)
    raise TypeError(
        f"{type(algo).__name__} has neither a replay buffer nor a rollout buffer to draw a probe batch from"
    )


def probe_batch_ready(algo: BaseAlgorithm, size: int) -> bool:
    """Whether the algorithm's buffer holds ``size`` samples, or as many as it ever will if fewer.

    A rollout is whole whenever ``train()`` runs; a replay buffer fills during the first steps, and
    a probe batch drawn at the first update (SB3's ``learning_starts`` is 100 by default) would be
    those few random-policy transitions for the whole run.
    """
    replay = getattr(algo, "replay_buffer", None)
    if not isinstance(replay, ReplayBuffer):
        return True
    # What _replay_indices can draw from, counted rather than listed: this runs at every train() until then.
    capacity = replay.buffer_size - 1 if replay.optimize_memory_usage else replay.buffer_size
    return replay.full or replay.pos >= min(size, capacity)


def _replay_indices(buffer: ReplayBuffer, size: int, rng: np.random.Generator) -> np.ndarray:
    """Distinct valid indices, as ``ReplayBuffer.sample`` would allow them."""
    if not buffer.full:
        candidates = np.arange(buffer.pos)
    elif buffer.optimize_memory_usage:
        # The slot at `pos` holds a next observation that was overwritten (see ReplayBuffer.sample).
        candidates = (np.arange(1, buffer.buffer_size) + buffer.pos) % buffer.buffer_size
    else:
        candidates = np.arange(buffer.buffer_size)
    if len(candidates) == 0:
        raise RuntimeError("the replay buffer is empty: no probe batch can be drawn")
    return np.sort(rng.choice(candidates, size=min(size, len(candidates)), replace=False))
