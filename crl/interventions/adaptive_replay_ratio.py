"""Adaptive replay ratio (Ma et al. 2023, "Revisiting Plasticity in Visual Reinforcement Learning")."""

from __future__ import annotations

from fractions import Fraction
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field, PrivateAttr, model_validator
from stable_baselines3.common.type_aliases import TrainFreq, TrainFrequencyUnit
from torch import nn

from crl.hooks import GradientStep
from crl.interventions.base import Intervention, InterventionError
from crl.interventions.continual_backprop import loss_networks
from crl.metrics.functions import activation_kind, fau

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

_CRITIC_LOSSES = ("q_net", "quantile_net", "critic")


def replay_schedule(ratio: float, n_envs: int) -> tuple[int, int]:
    """``(gradient_steps, train_freq)`` giving ``ratio`` gradient steps per environment transition.

    SB3 trains ``gradient_steps`` times every ``train_freq`` steps of ``n_envs`` environments, so
    ``ratio = gradient_steps / (train_freq * n_envs)``.
    """
    fraction = Fraction(ratio * n_envs).limit_denominator(1000)
    return fraction.numerator, fraction.denominator


class AdaptiveReplayRatio(Intervention):
    """Start at a low replay ratio and switch to a high one, once, when the critic's FAU settles.

    The critic's fraction of active units (:func:`crl.metrics.functions.fau`, pooled over its hidden
    layers; for SAC over every Q-network) is measured on each training batch. Every ``check_every``
    episodes the mean over the window is compared with the previous window's mean; the first time it
    moved by at most ``gap``, the replay ratio switches to ``high`` for the rest of training (the
    check runs after each ``train()`` call). The ratio is set through ``gradient_steps`` and
    ``train_freq``, which SB3's ``learn()`` re-reads before every ``train()``: the number of gradient
    steps per environment step really changes. It overrides the ``train_freq``/``gradient_steps``
    given to the algorithm. DQN and SAC only (off-policy).

    Logs ``interventions/adaptive_replay_ratio/replay_ratio`` and ``.../fau`` (last window's mean).

    :param low: the replay ratio before the switch (gradient steps per environment transition)
    :param high: the replay ratio after the switch
    :param check_every: episodes per window
    :param gap: the largest change of the window mean FAU that counts as settled
    """

    name = "adaptive_replay_ratio"
    algorithms: ClassVar[frozenset[str] | None] = frozenset({"DQN", "SAC", "QRDQN", "TQC", "CrossQ"})
    needs_features: ClassVar[bool] = True

    low: float = Field(default=0.5, gt=0.0)
    high: float = Field(default=2.0, gt=0.0)
    check_every: int = Field(default=50, gt=0)
    gap: float = Field(default=0.001, ge=0.0)

    _switched: bool = PrivateAttr(default=False)
    _switch_check: int | None = PrivateAttr(default=None)
    _checks: int = PrivateAttr(default=0)
    _fau_sum: float = PrivateAttr(default=0.0)
    _fau_count: int = PrivateAttr(default=0)
    _previous: float | None = PrivateAttr(default=None)
    _episodes: int = PrivateAttr(default=0)
    _last_episode_num: int = PrivateAttr(default=0)

    @model_validator(mode="after")
    def _check_ratios(self) -> AdaptiveReplayRatio:
        if self.high <= self.low:
            raise ValueError(f"high={self.high} must be larger than low={self.low}")
        return self

    def check(self, algo: BaseAlgorithm) -> None:
        super().check(algo)
        for key in ("low", "high"):
            ratio = getattr(self, key)
            if replay_schedule(ratio, algo.n_envs)[0] == 0:
                raise InterventionError(
                    f"intervention {self.name!r}: parameter {key}={ratio!r} gives no gradient step with "
                    f"{algo.n_envs} environment(s) (ratios are rounded to a fraction with a denominator of "
                    f"at most 1000); use {key} >= {0.001 / algo.n_envs:g}"
                )

    @property
    def replay_ratio(self) -> float:
        return self.high if self._switched else self.low

    def on_setup(self, algo: BaseAlgorithm) -> None:
        self._set_ratio(algo)

    def _set_ratio(self, algo: BaseAlgorithm) -> None:
        gradient_steps, train_freq = replay_schedule(self.replay_ratio, algo.n_envs)
        algo.gradient_steps = gradient_steps  # type: ignore[attr-defined]
        algo.train_freq = TrainFreq(train_freq, TrainFrequencyUnit.STEP)  # type: ignore[attr-defined]

    def after_optimizer_step(self, algo: BaseAlgorithm, step: GradientStep) -> None:
        if step.loss_name not in _CRITIC_LOSSES:
            return
        layers = [
            (features.post, activation_kind(_activation(algo, features.path)))
            for network in loss_networks(algo, step.loss_name)
            for features in step.features.get(network, {}).values()
        ]
        if layers:
            self.record_fau(fau([h for h, _ in layers], [kind for _, kind in layers]))  # type: ignore[misc]

    def record_fau(self, value: float) -> None:
        """Add one training batch's FAU to the current window."""
        self._fau_sum += value
        self._fau_count += 1

    def on_train_end(self, algo: BaseAlgorithm) -> None:
        # Over every learn() call: a restart of SB3's count by learn(reset_num_timesteps=True) loses no episode.
        episodes = algo.lifetime_episodes  # type: ignore[attr-defined]
        self._episodes += episodes - self._last_episode_num
        self._last_episode_num = episodes
        if self._episodes >= self.check_every:
            # Keep the episodes past the multiple, as the step schedules do: with 3 episodes per
            # train() and check_every=5, windows close at episodes 6, 12, 15, 21, not every 6.
            self._episodes %= self.check_every
            self.close_window(algo)
        self.record(algo, "replay_ratio", self.replay_ratio)

    def close_window(self, algo: BaseAlgorithm) -> bool:
        """End the current window: compare its mean FAU with the previous one; return whether it switched."""
        if self._fau_count == 0:
            return False
        self._checks += 1
        mean = self._fau_sum / self._fau_count
        self._fau_sum, self._fau_count = 0.0, 0
        settled = self._previous is not None and abs(mean - self._previous) <= self.gap
        self._previous = mean
        self.record(algo, "fau", mean)
        if settled and not self._switched:
            self._switched, self._switch_check = True, self._checks
            self._set_ratio(algo)
            return True
        return False


def _activation(algo: BaseAlgorithm, path: str) -> nn.Module:
    return algo.policy.get_submodule(path)
