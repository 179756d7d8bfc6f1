"""A sampler seeded per trial, so that a seeded study draws the same points whoever runs its trials.

An Optuna sampler seeded once per process repeats its draws in every process: two workers of one
study, or a relaunch of an interrupted one, would train the same parameters again. Here trial ``n``
is drawn by a sampler seeded with ``seed + n``: the draws differ between trials, and a trial's draw
(given the trials before it) is the same in any worker and after any relaunch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState


class TrialSeededSampler(BaseSampler):
    """Delegates each trial to ``make(seed + trial.number)``.

    :param make: builds the underlying sampler from a seed
    :param seed: the study's seed
    """

    def __init__(self, make: Callable[[int], BaseSampler], seed: int) -> None:
        self.make = make
        self.seed = seed
        self._number = -1
        self._sampler = make(seed)

    def _for(self, trial: FrozenTrial) -> BaseSampler:
        if trial.number != self._number:
            self._number = trial.number
            self._sampler = self.make(self.seed + trial.number)
        return self._sampler

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self._for(trial).after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        """Nothing to do: each trial's sampler is seeded from the trial's number."""
