"""The search space: dotted paths into a curriculum, each with the values a trial may give it.

A path addresses any curriculum key, so a key added to curricula is searchable with no new code:
``hyperparameters.learning_rate``, ``policy_options.net_arch``, ``evaluation.n_episodes``, a whole
``interventions`` list (as named choices), or one intervention's parameter, by position
(``interventions.0.tau``) or by name (``interventions.redo.tau``). The key ``seed`` sets a trial's
one seed (a seed sweep).
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from crl.config.curriculum import set_path
from crl.config.errors import ConfigError
from crl.study.schema import SEED_KEY, CategoricalDimension, FloatDimension, IntDimension, Scalar

MAX_CHECKED_COMBINATIONS = 64
"""Up to this many combinations of the dimensions' corner values are each validated as a curriculum."""


@dataclass(frozen=True)
class TrialParameters:
    """What a trial drew: Optuna's parameters (names for named choices) and the curriculum values."""

    params: dict[str, Scalar]
    """``{path: drawn value or choice name}``, as Optuna and MLflow record them."""
    values: dict[str, Any]
    """``{path: curriculum value}``."""

    @property
    def seed(self) -> int | None:
        """The trial's one seed, when the study sweeps seeds."""
        return self.values.get(SEED_KEY)


class SearchSpace:
    """The study's dimensions, applied to a base curriculum's data.

    :param dimensions: ``{path: dimension}``
    """

    def __init__(self, dimensions: Mapping[str, FloatDimension | IntDimension | CategoricalDimension]) -> None:
        # A path that is the prefix of another is set first: a whole intervention list before one of its parameters.
        self.dimensions = dict(sorted(dimensions.items(), key=lambda item: item[0].count(".")))

    def suggest(self, trial: optuna.Trial) -> TrialParameters:
        """Draw every dimension for ``trial``."""
        params: dict[str, Scalar] = {}
        values: dict[str, Any] = {}
        for path, dimension in self.dimensions.items():
            params[path], values[path] = dimension.suggest(trial, path)
        return TrialParameters(params, values)

    def from_params(self, params: Mapping[str, Scalar]) -> TrialParameters:
        """The parameters of a finished trial (e.g. the best one), from what Optuna recorded."""
        values = {
            path: dimension.value(params[path]) if isinstance(dimension, CategoricalDimension) else params[path]
            for path, dimension in self.dimensions.items()
        }
        return TrialParameters({path: params[path] for path in self.dimensions}, values)

    def apply(self, base: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of the curriculum data ``base`` with ``values`` set (``seed`` sets ``seeds: [seed]``).

        :raises ValueError: a path that does not fit the curriculum (see :func:`set_path`)
        """
        data = copy.deepcopy(dict(base))
        for path in self.dimensions:
            if path == SEED_KEY:
                data["seeds"] = [values[path]]
                continue
            try:
                set_path(data, path, copy.deepcopy(values[path]))
            except ValueError as error:
                raise ValueError(f"{error}{self._set_before(path)}") from None
        return data

    def _set_before(self, path: str) -> str:
        """A hint when a dimension set before ``path`` replaced what it goes into (a named set of interventions)."""
        for prefix in self.dimensions:
            if path.startswith(prefix + "."):
                return f"; every choice of {prefix!r} must contain it"
        return ""

    def corner_combinations(self) -> Iterator[dict[str, Any]]:
        """Value combinations to validate before any trial: every combination of the corners (bounds,
        choices) when there are few, else each dimension's corners with the others at their first."""
        corners = {path: self._corner_values(dimension) for path, dimension in self.dimensions.items()}
        if self.every_corner_combination:
            for combination in itertools.product(*corners.values()):
                yield dict(zip(corners, combination, strict=True))
            return
        first = {path: values[0] for path, values in corners.items()}
        for path, values in corners.items():
            for value in values:
                yield {**first, path: value}

    @property
    def every_corner_combination(self) -> bool:
        """Whether :meth:`corner_combinations` gives every combination of the corners (they are few)."""
        count = math.prod(len(self._corner_values(dimension)) for dimension in self.dimensions.values())
        return count <= MAX_CHECKED_COMBINATIONS

    @staticmethod
    def _corner_values(dimension: FloatDimension | IntDimension | CategoricalDimension) -> list[Any]:
        if isinstance(dimension, CategoricalDimension):
            return [dimension.value(label) for label in dimension.labels]
        return list(dimension.corners)

    def points(self, source: str) -> int:
        """How many points the brute_force sampler has to try: the product of the dimensions' sizes.

        :raises ConfigError: a float dimension without a step (its values are infinitely many)
        """
        points = 1
        for path, dimension in self.dimensions.items():
            if isinstance(dimension, FloatDimension) and dimension.step is None:
                raise ConfigError(
                    f"{source}: key 'search_space.{path}': the brute_force sampler needs a finite space: "
                    "give the float dimension a 'step', or list its values as choices"
                )
            points *= dimension.size
        return points

    def grid(self, source: str) -> dict[str, list[Scalar]]:
        """Optuna's grid: every value of every dimension (categorical, or int with its step).

        :raises ConfigError: a float dimension
        """
        grid: dict[str, list[Scalar]] = {}
        for path, dimension in self.dimensions.items():
            if isinstance(dimension, FloatDimension):
                raise ConfigError(
                    f"{source}: key 'search_space.{path}': the grid sampler takes categorical and int "
                    "dimensions only; list the floats as choices"
                )
            grid[path] = list(dimension.grid)
        return grid
