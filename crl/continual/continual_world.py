"""Continual World's reference SAC (Wolczyk et al. 2021) as a crl preset, for ``cw10`` / ``cw20``.

``reference_sac(sequence)`` builds the benchmark's agent and ``REFERENCE_PROTOCOL`` holds the loop
options of its protocol::

    sequence = make_sequence("cw10")
    model = reference_sac(sequence, seed=0)
    result = learn_continual(model, sequence, eval_every=20_000, **REFERENCE_PROTOCOL)

The agent: actor and critics of 4 x 256 units, LayerNorm + tanh after the first layer and leaky ReLU
(slope 0.2, TensorFlow's default, which CW used) after the others, one output head per task; Adam with
lr 1e-3, batch 128, gamma 0.99, polyak 0.995 (tau 0.005), 50 updates every 50 steps from step 1000
of each task, uniformly random actions for the first 10k steps of each task, replay buffer (1M) and
optimizer state reset at every task switch, and a fresh entropy temperature per task (CW learns one
per task; a task's temperature is only trained while the task is). Remaining differences from CW's
TensorFlow code: torch's default initialisation instead of Glorot-uniform, and SB3's SAC update
order (critic then actor within a gradient step, as CW's).
"""

from __future__ import annotations

from typing import Any

import torch as th
from torch import nn

from crl.algorithms import SAC
from crl.optim import clear_optimizer_state
from crl.policies.multihead import MultiHeadSACPolicy
from crl.wrappers.sequence import TaskSequence

REFERENCE_PROTOCOL: dict[str, Any] = dict(
    n_eval_episodes=10,
    deterministic_eval=False,
    reset_replay_buffer=True,
    reset_optimizers=True,
)
"""Options of :func:`crl.continual.learn_continual` for the CW protocol (10 stochastic evaluation episodes)."""


class TFLeakyReLU(nn.LeakyReLU):
    """Leaky ReLU with TensorFlow's default negative slope 0.2 (``tf.nn.leaky_relu``, used by CW)."""

    def __init__(self) -> None:
        super().__init__(negative_slope=0.2)


class ContinualWorldSAC(SAC):
    """crl's SAC with two per-task behaviours of Continual World's agent.

    Takes every argument of :class:`crl.SAC`, plus:

    :param random_steps: uniformly random actions for this many environment steps at the start of
        each ``learn()`` call (each task), while updates start after ``learning_starts`` (CW: 10000 and 1000)
    """

    def __init__(self, *args: Any, random_steps: int = 10_000, **kwargs: Any) -> None:
        if random_steps < 0:
            raise ValueError(f"random_steps must be >= 0, got {random_steps}")
        self.random_steps = random_steps
        super().__init__(*args, **kwargs)

    def _setup_model(self) -> None:
        super()._setup_model()
        # The temperature every task starts from (SB3's "auto": 1.0; "auto_0.1": 0.1).
        self._initial_log_ent_coef = None if self.log_ent_coef is None else self.log_ent_coef.detach().clone()

    def _excluded_save_params(self) -> list[str]:
        # Recomputed by _setup_model, which load() runs as well.
        return [*super()._excluded_save_params(), "_initial_log_ent_coef"]

    def _sample_action(self, learning_starts: int, action_noise: Any = None, n_envs: int = 1) -> Any:
        # SB3 uses learning_starts both for random actions and for the first update; CW separates them.
        return super()._sample_action(max(learning_starts, self.random_steps), action_noise, n_envs)

    def start_task(self, task_id: int) -> None:
        """Start a task with a fresh entropy temperature and temperature-optimizer state."""
        if self._initial_log_ent_coef is not None and self.ent_coef_optimizer is not None:
            with th.no_grad():
                self.log_ent_coef.copy_(self._initial_log_ent_coef)  # type: ignore[union-attr]
            clear_optimizer_state(self.ent_coef_optimizer)
        super().start_task(task_id)


def reference_sac(sequence: TaskSequence, seed: int | None = None, **overrides: Any) -> ContinualWorldSAC:
    """Continual World's reference SAC on ``sequence`` (which must append the one-hot task id).

    :param sequence: a Continual World sequence (``make_sequence("cw10")``)
    :param seed: the run's seed
    :param overrides: any :class:`ContinualWorldSAC` argument to change (e.g. ``buffer_size`` in tests)
    """
    if not sequence.task_id_in_obs:
        raise ValueError(
            f"reference_sac needs a sequence with task_id_in_obs=True (its heads are chosen by task id); "
            f"sequence {sequence.name!r} has none"
        )
    options: dict[str, Any] = dict(
        learning_rate=1e-3,
        buffer_size=1_000_000,
        batch_size=128,
        gamma=0.99,
        tau=0.005,
        train_freq=50,
        gradient_steps=50,
        learning_starts=1_000,
        random_steps=10_000,
        ent_coef="auto",
        policy_kwargs=dict(
            net_arch=[256, 256, 256, 256],
            activation_fn=TFLeakyReLU,
            first_layer="layer_norm_tanh",
            n_heads=sequence.n_task_ids,
        ),
        seed=seed,
    )
    options.update(overrides)
    return ContinualWorldSAC(MultiHeadSACPolicy, sequence.make_vec_env(0, seed=seed), **options)
