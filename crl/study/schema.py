"""The schema of study files (``studies/*.yaml``): a base curriculum, a search space, an objective, a search.

A study file is read with ``yaml.safe_load`` and validated by :class:`StudySpec` (pydantic, unknown
keys are errors); :func:`crl.study.config.load_study` then checks it against its base curriculum.
``docs/studies.md`` describes every key.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Annotated, Any, Literal

import optuna
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, ValidationInfo, field_validator, model_validator

from crl.config.curriculum import Section, path_parts

Scalar = bool | int | float | str | None
"""What Optuna stores as a categorical choice (and MLflow logs as a param)."""

SEED_KEY = "seed"
"""The search-space key that sets a trial's one seed (a seed sweep), instead of a curriculum key."""

NATURAL_DIRECTION: dict[str, Literal["maximize", "minimize"]] = {
    "average_performance": "maximize",
    "auc": "maximize",
    "forgetting": "minimize",
}
"""The direction of each objective measure that has one (a logged metric's must be given)."""
WINDOW_MEASURES = ("average_performance",)
"""The objective measures that read ``objective.window``."""


class FloatDimension(Section):
    """A float drawn from ``[low, high]`` (``trial.suggest_float``).

    :param low: the smallest value
    :param high: the largest value
    :param log: draw on a log scale (needs ``low > 0``)
    :param step: draw from ``low, low + step, ...`` only
    """

    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: PositiveFloat | None = None

    @model_validator(mode="after")
    def _check_range(self) -> FloatDimension:
        _check_range(self.low, self.high, self.log, self.step is not None)
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"low and high must be finite, got [{self.low}, {self.high}]")
        return self

    def suggest(self, trial: optuna.Trial, name: str) -> tuple[float, float]:
        value = trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)
        return value, value

    @property
    def corners(self) -> list[float]:
        return [self.low, self.high]

    @property
    def size(self) -> int:
        """How many values a stepped dimension has: ``low``, ``low + step``, ... up to ``high``.

        Counted in decimals, as Optuna's brute-force sampler enumerates them (0.1 steps are exact).
        """
        assert self.step is not None  # unstepped: infinitely many
        return int((Decimal(str(self.high)) - Decimal(str(self.low))) // Decimal(str(self.step))) + 1


class IntDimension(Section):
    """An int drawn from ``[low, high]`` (``trial.suggest_int``).

    :param low: the smallest value
    :param high: the largest value
    :param log: draw on a log scale (needs ``low > 0``)
    :param step: draw from ``low, low + step, ...`` only
    """

    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: PositiveInt = 1

    @model_validator(mode="after")
    def _check_range(self) -> IntDimension:
        _check_range(self.low, self.high, self.log, self.step != 1)
        return self

    def suggest(self, trial: optuna.Trial, name: str) -> tuple[int, int]:
        value = trial.suggest_int(name, self.low, self.high, log=self.log, step=self.step)
        return value, value

    @property
    def corners(self) -> list[int]:
        return [self.low, self.high]

    @property
    def grid(self) -> list[int]:
        return list(range(self.low, self.high + 1, self.step))

    @property
    def size(self) -> int:
        return len(range(self.low, self.high + 1, self.step))


class CategoricalDimension(Section):
    """One of a list of values (``trial.suggest_categorical``), or of named values.

    Named values (a mapping) can be anything a curriculum key takes, e.g. a list of interventions;
    the trial's parameter is the name. A plain list holds numbers, strings, booleans or nulls.

    :param choices: the values, or ``{name: value}``
    """

    type: Literal["categorical"]
    choices: list[Any] | dict[str, Any] = Field(min_length=1)

    @field_validator("choices")
    @classmethod
    def _check_choices(cls, choices: list[Any] | dict[str, Any]) -> list[Any] | dict[str, Any]:
        if isinstance(choices, list):
            for choice in choices:
                if not isinstance(choice, Scalar):  # type: ignore[arg-type]
                    raise ValueError(
                        f"choice {choice!r} is not a number, string, boolean or null; "
                        "give lists and mappings a name: choices: {name: value, ...}"
                    )
            if len({repr(choice) for choice in choices}) != len(choices):
                raise ValueError(f"choices must be distinct, got {choices}")
        return choices

    @property
    def labels(self) -> list[Scalar]:
        """What Optuna draws from: the choices, or their names."""
        return list(self.choices)

    def value(self, label: Scalar) -> Any:
        """The curriculum value of a drawn label."""
        return self.choices[label] if isinstance(self.choices, dict) else label  # type: ignore[index]

    def suggest(self, trial: optuna.Trial, name: str) -> tuple[Scalar, Any]:
        label = trial.suggest_categorical(name, self.labels)  # type: ignore[arg-type]
        return label, self.value(label)

    @property
    def corners(self) -> list[Scalar]:
        return self.labels

    @property
    def grid(self) -> list[Scalar]:
        return self.labels

    @property
    def size(self) -> int:
        return len(self.choices)


Dimension = Annotated[FloatDimension | IntDimension | CategoricalDimension, Field(discriminator="type")]
DIMENSION_TYPES = ("float", "int", "categorical")


def _check_range(low: float, high: float, log: bool, stepped: bool) -> None:
    if low > high:
        raise ValueError(f"low must not exceed high, got low={low}, high={high}")
    if log and low <= 0:
        raise ValueError(f"a log scale needs low > 0, got low={low}")
    if log and stepped:
        raise ValueError("log and step exclude each other")


class BaseSpec(Section):
    """The curriculum every trial starts from.

    :param curriculum: the curriculum file, relative to the study file's directory
    :param overrides: ``{key.path: value}`` applied to it first (the same paths as the search space)
    """

    curriculum: str
    overrides: dict[str, Any] = Field(default_factory=dict)


class ObjectiveSpec(Section):
    """What a trial's value is.

    :param measure: ``average_performance`` (mean over tasks of the last ``window`` evaluations),
        ``auc`` (the area under the average evaluation curve over the sequence's steps, divided by
        them), ``forgetting`` (mean over tasks), or ``metric`` (the last value of the logged ``key``)
    :param key: the logged metric of ``measure: metric``, e.g. ``plasticity/q_net/all/dormant_ratio``
    :param window: evaluations averaged by ``average_performance`` (the only measure that takes it)
    :param aggregate: how the values of a trial's seeds make the trial's value
    """

    measure: Literal["average_performance", "auc", "forgetting", "metric"] = "average_performance"
    key: str | None = None
    window: PositiveInt = 1
    aggregate: Literal["mean", "median", "min", "max"] = "mean"

    @field_validator("window")
    @classmethod
    def _check_window(cls, window: int, info: ValidationInfo) -> int:
        # Runs only for a window given: read by no other measure, it would be ignored without a word.
        measure = info.data.get("measure")  # absent when invalid: its own error is reported
        if measure is not None and measure not in WINDOW_MEASURES:
            raise ValueError(
                f"measure {measure!r} takes no window; only {', '.join(map(repr, WINDOW_MEASURES))} "
                "averages evaluations over one"
            )
        return window

    @model_validator(mode="after")
    def _check_key(self) -> ObjectiveSpec:
        if (self.measure == "metric") != (self.key is not None):
            raise ValueError("'key' names the logged metric of measure 'metric', and only of it")
        return self


class SamplerSpec(Section):
    """Optuna's sampler (``sampler: tpe`` is short for ``sampler: {name: tpe}``).

    :param name: ``tpe``, ``random``, ``grid`` (every combination of the categorical and int
        dimensions, once: seed sweeps), ``gp``, ``qmc`` or ``brute_force``
    :param seed: trial ``n`` is drawn by the sampler seeded with ``seed + n`` (the same draws in any worker)
    :param options: further arguments of the Optuna sampler's constructor
    """

    name: Literal["tpe", "random", "grid", "gp", "qmc", "brute_force"] = "tpe"
    seed: NonNegativeInt | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class PrunerSpec(Section):
    """Optuna's pruner, deciding at each task's end whether a trial goes on (``pruner: median`` is short).

    :param name: ``median``, ``percentile``, ``successive_halving``, ``hyperband``, ``threshold`` or ``none``
    :param options: further arguments of the Optuna pruner's constructor
    """

    name: Literal["median", "percentile", "successive_halving", "hyperband", "threshold", "none"] = "median"
    options: dict[str, Any] = Field(default_factory=dict)


class StorageSpec(Section):
    """Where the study lives, and how a trial whose worker died is found and retried.

    :param url: the Optuna storage URL (``--storage`` overrides it); default: ``optuna.db`` beside
        an SQLite MLflow database
    :param heartbeat_interval: seconds between a running trial's heartbeats
    :param grace_period: seconds without a heartbeat after which a trial is failed (default: twice
        the interval)
    :param max_retry: how often a failed trial whose worker died is retried (``null``: always)
    """

    url: str | None = None
    heartbeat_interval: PositiveInt = 60
    grace_period: PositiveInt | None = None
    max_retry: NonNegativeInt | None = 3

    @model_validator(mode="after")
    def _grace_beyond_heartbeat(self) -> StorageSpec:
        # A grace period within one heartbeat interval fails healthy trials between two heartbeats.
        if self.grace_period is not None and self.grace_period <= self.heartbeat_interval:
            raise ValueError(
                f"grace_period={self.grace_period} must be longer than heartbeat_interval={self.heartbeat_interval} "
                "(seconds; default: twice the interval)"
            )
        return self


def _shorthand(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


class StudySpec(Section):
    """A study file. ``docs/studies.md`` describes every key."""

    study_name: str | None = Field(default=None, min_length=1)
    base: BaseSpec
    seeds: list[NonNegativeInt] | None = Field(default=None, min_length=1)
    search_space: dict[str, Dimension] = Field(min_length=1)
    objective: ObjectiveSpec = ObjectiveSpec()
    direction: Literal["maximize", "minimize"] | None = None
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec | None = None
    n_trials: PositiveInt | None = None
    storage: StorageSpec = StorageSpec()

    _shorthand_sampler = field_validator("sampler", mode="before")(_shorthand)
    _shorthand_pruner = field_validator("pruner", mode="before")(_shorthand)

    @field_validator("search_space", mode="before")
    @classmethod
    def _dotted_paths(cls, space: Any) -> Any:
        """Keys with a list index in brackets (``interventions[0].tau``) as dotted paths (``interventions.0.tau``):
        a path names the trial's Optuna parameter and MLflow param, and MLflow refuses brackets in names."""
        if not isinstance(space, dict):
            return space
        dotted: dict[Any, Any] = {}
        written: dict[Any, Any] = {}
        for path, dimension in space.items():
            key = ".".join(path_parts(path)) if isinstance(path, str) else path
            if key in dotted:
                raise ValueError(f"keys {written[key]!r} and {path!r} name the same path {key!r}; give it once")
            dotted[key], written[key] = dimension, path
        return dotted

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int] | None) -> list[int] | None:
        if seeds is not None and len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct, got {seeds}")
        return seeds

    @property
    def resolved_direction(self) -> Literal["maximize", "minimize"]:
        """The given direction, else the measure's natural one."""
        return self.direction or NATURAL_DIRECTION[self.objective.measure]

    @property
    def resolved_pruner(self) -> PrunerSpec:
        """The given pruner, else ``median`` (``none`` for a grid: every point of a sweep is wanted)."""
        if self.pruner is not None:
            return self.pruner
        return PrunerSpec(name="none" if self.sampler.name == "grid" else "median")
