"""Validation experiment files: a curriculum, its variants, the seeds, and the claims to test.

An experiment file (``bench/validation/*.yaml``) names a curriculum (run by ``crl.train`` once per
variant, with the variant's ``--set`` overrides), the measures read back from MLflow, and the claims:
"``treatment`` has a higher/lower ``measure`` than ``control``". Files are read with crl's safe YAML
loader into the typed models below; an unknown key or a claim naming an undefined variant is an
error before anything runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from crl.config.curriculum import read_yaml
from crl.config.errors import ConfigError, describe_validation_error
from crl.plotting.runs import PLASTICITY_PREFIX

EXPERIMENTS_DIRECTORY = Path(__file__).parent
MIN_SEEDS = 5


class ExperimentError(ValueError):
    """An experiment file is invalid."""


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Measure(Model):
    """A number (or one per task) per run, read back from its MLflow child run.

    :param source: ``result`` (the run's continual result: ``key`` is ``performance_after_training``,
        ``final_performance`` (the last evaluation of every task) or ``area_under_curve`` (the mean of
        a task's evaluations during its training); see :mod:`crl.continual.metrics`) or
        ``metric`` (a logged metric's history: ``key`` is its name)
    :param key: what to read (see ``source``)
    :param reduce: for ``metric``: ``last`` value, or ``mean_last_fraction``: the mean over the last
        ``fraction`` of the logged steps (smooths a noisy last point)
    :param fraction: the fraction of steps ``mean_last_fraction`` averages
    :param from_task: for per-task ``result`` measures: the first task counted (1: only tasks after a switch)
    :param normalize_by: a variant whose per-task IQM over seeds divides every run's scores (e.g.
        "relative to a fresh network")
    :param label: how the report names the measure
    """

    source: Literal["result", "metric"]
    key: str
    reduce: Literal["last", "mean_last_fraction"] = "last"
    fraction: float = Field(default=0.2, gt=0.0, le=1.0)
    from_task: int = Field(default=0, ge=0)
    normalize_by: str | None = None
    label: str

    @model_validator(mode="after")
    def _known_result_key(self) -> Measure:
        allowed = ("performance_after_training", "final_performance", "area_under_curve")
        if self.source == "result" and self.key not in allowed:
            raise ValueError(f"key {self.key!r} is not a result measure; allowed: {', '.join(allowed)}")
        if self.source == "metric":
            _check_metric_key(self.key)
        return self


class Claim(Model):
    """A published direction: ``treatment`` has a ``direction`` ``measure`` than ``control``.

    :param text: the claim in words (with its source)
    :param measure: a key of the experiment's ``measures``
    :param treatment: the variant expected to differ
    :param control: the variant it is compared with
    :param direction: ``higher`` or ``lower``: the expected sign of ``IQM(treatment) - IQM(control)``
    """

    text: str
    measure: str
    treatment: str
    control: str
    direction: Literal["higher", "lower"]


class Curve(Model):
    """A metric plotted against environment steps, one line (IQM over seeds, 95 % CI band) per variant.

    :param key: the logged metric's name
    :param label: the y-axis label
    :param variants: the variants to draw (default: all)
    """

    key: str
    label: str
    variants: list[str] | None = None

    @model_validator(mode="after")
    def _plasticity_metric(self) -> Curve:
        _check_metric_key(self.key)
        return self


def _check_metric_key(key: str) -> None:
    """Refuse a metric the report cannot read: it reads the runs' plasticity suite (``plasticity/...``)."""
    if not key.startswith(PLASTICITY_PREFIX):
        raise ValueError(
            f"key {key!r} is not a metric of the plasticity suite; the report reads the metrics named "
            f"{PLASTICITY_PREFIX}<network>/<layer>/<metric> (docs/metrics.md)"
        )


class Experiment(Model):
    """One validation experiment: a curriculum run once per variant over the same seeds.

    :param title: the report's section title
    :param direction: the published finding (SPEC.md §5) this experiment tests
    :param curriculum: the curriculum file, relative to the experiment file
    :param seeds: seeds of every variant (at least :data:`MIN_SEEDS`)
    :param variants: name -> ``--set`` overrides (``key.path: value``) of the curriculum
    :param measures: name -> :class:`Measure`
    :param claims: the comparisons the report decides
    :param curves: metrics plotted over training
    :param discussion: written after the results: what they mean, and why a claim may not reproduce
    """

    title: str
    direction: str
    curriculum: str
    seeds: list[int] = Field(min_length=MIN_SEEDS)
    variants: dict[str, dict[str, Any]] = Field(min_length=2)
    measures: dict[str, Measure]
    claims: list[Claim] = Field(min_length=1)
    curves: list[Curve] = Field(default_factory=list)
    discussion: str = ""

    @model_validator(mode="after")
    def _names_exist(self) -> Experiment:
        variants = list(self.variants)
        for index, claim in enumerate(self.claims):
            if claim.measure not in self.measures:
                raise ValueError(f"claims[{index}].measure = {claim.measure!r}: not in measures {list(self.measures)}")
            for role in ("treatment", "control"):
                if getattr(claim, role) not in self.variants:
                    raise ValueError(f"claims[{index}].{role} = {getattr(claim, role)!r}: not in variants {variants}")
        for name, measure in self.measures.items():
            if measure.normalize_by is not None and measure.normalize_by not in self.variants:
                raise ValueError(f"measures.{name}.normalize_by = {measure.normalize_by!r}: not in variants {variants}")
        for index, curve in enumerate(self.curves):
            unknown = sorted(set(curve.variants or []) - set(variants))
            if unknown:
                raise ValueError(f"curves[{index}].variants: {unknown} not in variants {variants}")
        return self


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment file.

    :raises ExperimentError: naming the file, the key and the problem
    """
    try:
        return Experiment.model_validate(read_yaml(path, kind="experiment"))
    except ConfigError as error:
        raise ExperimentError(str(error)) from None
    except ValidationError as error:
        raise ExperimentError(describe_validation_error(error, Experiment, str(path))) from None


def experiment_paths(names: list[str] | None = None) -> list[Path]:
    """The experiment files of ``bench/validation`` (all, or those named by stem), in name order."""
    paths = sorted(EXPERIMENTS_DIRECTORY.glob("*.yaml"))
    if not names:
        return paths
    by_name = {path.stem: path for path in paths}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise ExperimentError(f"unknown experiment(s) {unknown}; available: {sorted(by_name)}")
    return [by_name[name] for name in names]


def override_arguments(overrides: dict[str, Any]) -> list[str]:
    """``--set`` arguments of ``crl.train`` for ``{key.path: value}`` (values in YAML flow style)."""
    arguments = []
    for key, value in overrides.items():
        text = yaml.safe_dump(value, default_flow_style=True, width=10_000).removesuffix("...\n").strip()
        arguments += ["--set", f"{key}={text}"]
    return arguments
