"""IQM with stratified-bootstrap confidence intervals, through ``rliable`` (Agarwal et al. 2021).

Scores are ``runs x tasks`` matrices (one row per seed). The IQM is the 25 % trimmed mean over all
entries; its interval resamples runs within each task (``StratifiedBootstrap``). The effect of a claim
is ``IQM(treatment) - IQM(control)``, with the two groups resampled independently
(``StratifiedIndependentBootstrap``): the effect is "reproduced" when the whole interval lies on the
expected side of zero.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from rliable import library as rly
from rliable import metrics

CONFIDENCE = 0.95
REPETITIONS = 20_000


@dataclass(frozen=True)
class Interval:
    """A point estimate and its 95 % confidence interval."""

    point: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0.0 or self.high < 0.0

    def text(self, digits: int = 3) -> str:
        return f"{self.point:.{digits}g} [{self.low:.{digits}g}, {self.high:.{digits}g}]"


def iqm(scores: np.ndarray) -> float:
    """The interquartile mean of a ``runs x tasks`` matrix."""
    return float(metrics.aggregate_iqm(scores))


@contextlib.contextmanager
def _global_numpy_seed(seed: int) -> Iterator[None]:
    """NumPy's global generator seeded with ``seed`` inside the block, and restored after it.

    rliable 1.2's bootstraps draw their resamples from the global generator (``np.random.choice``)
    and ignore their ``random_state`` (so none is passed); unseeded, two reports of the same runs gave intervals that
    differed in the third digit.
    """
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _conf_int(bootstrap: rly.StratifiedBootstrap, func: object, repetitions: int, seed: int) -> tuple[float, float]:
    with _global_numpy_seed(seed):
        low, high = bootstrap.conf_int(func, reps=repetitions, size=CONFIDENCE, method="percentile")
    return float(np.ravel(low)[0]), float(np.ravel(high)[0])


def iqm_interval(scores: np.ndarray, seed: int = 0, repetitions: int = REPETITIONS) -> Interval:
    """IQM of ``scores`` with its stratified-bootstrap 95 % interval."""
    scores = _as_matrix(scores)
    bootstrap = rly.StratifiedBootstrap(scores)
    return Interval(iqm(scores), *_conf_int(bootstrap, metrics.aggregate_iqm, repetitions, seed))


def _iqm_difference(treatment: np.ndarray, control: np.ndarray) -> float:
    return iqm(treatment) - iqm(control)


def difference_interval(
    treatment: np.ndarray, control: np.ndarray, seed: int = 0, repetitions: int = REPETITIONS
) -> Interval:
    """``IQM(treatment) - IQM(control)`` with a 95 % interval, the two groups resampled independently."""
    treatment, control = _as_matrix(treatment), _as_matrix(control)
    if treatment.shape[1] != control.shape[1]:
        raise ValueError(f"treatment has {treatment.shape[1]} tasks, control {control.shape[1]}")
    bootstrap = rly.StratifiedIndependentBootstrap(treatment, control)
    return Interval(_iqm_difference(treatment, control), *_conf_int(bootstrap, _iqm_difference, repetitions, seed))


def _as_matrix(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=float)
    if scores.ndim == 1:
        return scores[:, None]
    if scores.ndim != 2 or scores.shape[0] < 2:
        raise ValueError(f"scores must be a runs x tasks matrix with at least 2 runs, got shape {scores.shape}")
    return scores
