"""Loading a study file: the schema, then every check against its base curriculum, before any trial runs.

:func:`load_study` reads the file with ``yaml.safe_load``, validates it (:class:`StudySpec`), loads the
base curriculum with its overrides, validates the curriculum each corner of the search space gives
(bounds and choices, in combination when there are few) and builds the corners' sequences that differ
from the base's, checks the objective's metric key against what the runs of those curricula can log,
and builds the sampler and the pruner. Every problem is a
:class:`~crl.config.errors.ConfigError` with a one-line message naming the key.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import typing
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from pydantic import ValidationError
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from crl.config.build import build_sequence
from crl.config.curriculum import Curriculum, annotation_problem, read_yaml, set_path, validate_curriculum
from crl.config.errors import ConfigError, describe_validation_error, suggest
from crl.continual.loop import task_metric
from crl.study.objective import TASK_METRIC, StudyLogs, metric_key_problem
from crl.study.sampler import TrialSeededSampler
from crl.study.schema import DIMENSION_TYPES, SEED_KEY, CategoricalDimension, PrunerSpec, SamplerSpec, StudySpec
from crl.study.space import SearchSpace, TrialParameters

SAMPLERS: dict[str, type[optuna.samplers.BaseSampler]] = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "grid": optuna.samplers.GridSampler,
    "gp": optuna.samplers.GPSampler,
    "qmc": optuna.samplers.QMCSampler,
    "brute_force": optuna.samplers.BruteForceSampler,
}
PRUNERS: dict[str, type[optuna.pruners.BasePruner]] = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "threshold": optuna.pruners.ThresholdPruner,
    "none": optuna.pruners.NopPruner,
}
OWN_OPTIONS = frozenset({"self", "seed", "search_space"})
"""Constructor arguments the study sets itself."""
# Names Optuna's sampler and pruner modules annotate with but import only for type checkers (their
# annotations are strings): without them pydantic cannot read, say, TPE's ``gamma: Callable[...]``
# and a string given for it would pass unchecked, failing every trial.
_ANNOTATION_NAMES = {
    "Callable": Callable,
    "Mapping": Mapping,
    "Sequence": Sequence,
    "np": np,
    "FrozenTrial": optuna.trial.FrozenTrial,
    "BaseSampler": optuna.samplers.BaseSampler,
}
DEFAULT_STORAGE_FILE = "optuna.db"
"""The default storage's file name, beside an SQLite MLflow database."""


@dataclass(frozen=True)
class StudyConfig:
    """A validated study: what every worker needs to run trials.

    :param spec: the study file's content
    :param source: the study file, for messages
    :param name: the Optuna study's name (and the MLflow parent run's)
    :param base: the base curriculum's data, with the overrides, the study's seeds and the tracking URI
    :param curriculum: ``base`` validated
    :param space: the search space
    :param n_trials: finished trials the study needs
    :param storage_url: the Optuna storage
    """

    spec: StudySpec
    source: str
    name: str
    base: dict[str, Any]
    curriculum: Curriculum
    space: SearchSpace
    n_trials: int
    storage_url: str

    @property
    def direction(self) -> str:
        return self.spec.resolved_direction

    @property
    def tracking_uri(self) -> str:
        return self.curriculum.tracking.tracking_uri

    def trial_curriculum(self, parameters: TrialParameters) -> Curriculum:
        """The curriculum a trial trains: the base with the trial's values.

        :raises ConfigError: values the corner checks could not foresee (e.g. two dimensions that
            only clash in the middle of their ranges)
        """
        try:
            data = self.space.apply(self.base, parameters.values)
        except ValueError as error:
            raise ConfigError(f"{self.source}: search_space: {error}") from None
        return validate_curriculum(data, source=f"{self.source} (trial {parameters.params})")

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        return make_sampler(self.spec.sampler, self.space, self.source)

    def make_pruner(self) -> optuna.pruners.BasePruner:
        return make_pruner(self.spec.resolved_pruner, self.source)

    def fingerprint(self) -> str:
        """A hash of what defines the study's trials: search space, objective, search and base curriculum.

        The base curriculum is hashed as validated (its overrides and the study's ``seeds`` applied,
        every default filled in), not as the file spells it: overrides that give the same curriculum
        (``tracking.experiment: x`` or ``tracking: {experiment: x}``) are the same study. Its tracking
        and checkpoint settings are left out (where runs are recorded and how often trials checkpoint
        change no result), so are the number of trials, the name and the storage: they may change
        between launches.
        """
        study = self.spec.model_dump(mode="json", exclude=set(LAUNCH_KEYS))
        # A direction or pruner left to its default is the same as the default spelt out.
        study["direction"], study["pruner"] = self.direction, self.spec.resolved_pruner.model_dump(mode="json")
        return _hash(study, self.curriculum.model_dump(mode="json", exclude=set(LAUNCH_CURRICULUM_KEYS)))

    def legacy_fingerprint(self) -> str:
        """The hash earlier crl versions gave a study (with ``base.overrides`` as spelt, the checkpoint
        settings, the direction and pruner as given): a study created with it is joined, and takes
        :meth:`fingerprint`."""
        study = self.spec.model_dump(mode="json", exclude={"n_trials", "study_name", "storage"})
        return _hash(study, self.curriculum.model_dump(mode="json", exclude={"tracking"}))


LAUNCH_KEYS = frozenset({"n_trials", "study_name", "storage", "base", "seeds"})
"""Study keys out of the fingerprint: what a launch may change, and what the resolved base curriculum holds."""
LAUNCH_CURRICULUM_KEYS = frozenset({"tracking", "checkpoint"})
"""Base curriculum keys out of the fingerprint: where runs are recorded, and when and where trials checkpoint
(a resumed seed trains as an uninterrupted one, bitwise where its envs pickle: :mod:`crl.study.trial`)."""


def _hash(study: dict[str, Any], base: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps({"study": study, "base": base}, sort_keys=True).encode()).hexdigest()


def load_study(
    path: str | Path,
    n_trials: int | None = None,
    study_name: str | None = None,
    storage_url: str | None = None,
    tracking_uri: str | None = None,
) -> StudyConfig:
    """Read and check a study file; the arguments are the command line's, which take precedence.

    :raises ConfigError: with a one-line message naming the file, the key and the problem
    """
    path = Path(path)
    source = str(path)
    data = read_yaml(path, kind="study")
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_without_dimension_tags(describe_validation_error(error, StudySpec, source))) from None
    base, curriculum = _base_curriculum(spec, path, tracking_uri)
    _check_objective(spec, curriculum, source)
    space = SearchSpace(spec.search_space)
    corners, task_names = _check_space(space, base, curriculum, source)
    _check_metric_key(spec, space, [curriculum, *corners], task_names, source)
    make_sampler(spec.sampler, space, source)  # the options' check
    make_pruner(spec.resolved_pruner, source)
    n_trials = _n_trials(n_trials or spec.n_trials, spec, space, source)
    url = storage_url or spec.storage.url or default_storage(curriculum.tracking.tracking_uri, source)
    _check_url(url, "--storage" if storage_url else "storage.url", source)
    name = study_name or spec.study_name or path.stem
    _check_findable(name, "--study-name" if study_name else "study_name", source)  # a stem is the default name
    return StudyConfig(spec, source, name, base, curriculum, space, n_trials, url)


def _without_dimension_tags(message: str) -> str:
    # pydantic puts the tag of a discriminated union in the key's path: search_space.x.float.low
    for tag in DIMENSION_TYPES:
        message = message.replace(f".{tag}.", ".").replace(f".{tag}'", "'")
    return message


def _base_curriculum(spec: StudySpec, path: Path, tracking_uri: str | None) -> tuple[dict[str, Any], Curriculum]:
    """The base curriculum's data (its overrides, the study's seeds and the tracking URI applied), validated."""
    source = str(path)
    curriculum_path = path.parent / spec.base.curriculum
    if not curriculum_path.is_file():
        raise ConfigError(
            f"{source}: key 'base.curriculum' = {spec.base.curriculum!r}: no such file ({curriculum_path})"
        )
    base = read_yaml(curriculum_path)
    for key, value in spec.base.overrides.items():
        try:
            set_path(base, key, value)
        except ValueError as error:
            raise ConfigError(f"{source}: key 'base.overrides.{key}': {error}") from None
    if spec.seeds is not None:
        if SEED_KEY in spec.search_space:
            raise ConfigError(f"{source}: 'seeds' and the search-space key 'seed' exclude each other; keep one")
        base["seeds"] = list(spec.seeds)
    if tracking_uri:
        set_path(base, "tracking.tracking_uri", tracking_uri)
    curriculum = validate_curriculum(base, source=f"{source} (base {curriculum_path})")
    return base, curriculum


def _check_objective(spec: StudySpec, curriculum: Curriculum, source: str) -> None:
    objective = spec.objective
    if objective.measure == "metric" and spec.direction is None:
        raise ConfigError(
            f"{source}: key 'direction' is missing: a logged metric's objective needs maximize or minimize"
        )
    if objective.key is None:
        return
    # A key no run logs would fail every trial, each after training all of it: what needs the search
    # space is checked with it (_check_metric_key), the rest first.
    problem = metric_key_problem(objective.key)
    if problem is not None:
        raise ConfigError(f"{source}: key 'objective.key' = {objective.key!r}: {problem}")
    if objective.key.startswith("plasticity/") and curriculum.metrics is None:
        raise ConfigError(
            f"{source}: key 'objective.key' = {objective.key!r}: the base curriculum logs no plasticity "
            "metrics; set its 'metrics' (e.g. base.overrides: {metrics: {every: 10000}})"
        )


def _check_space(
    space: SearchSpace, base: Mapping[str, Any], curriculum: Curriculum, source: str
) -> tuple[list[Curriculum], dict[str, list[str]]]:
    """Every corner combination of the search space must give a valid curriculum, whose sequence builds.

    Only the sequences that differ from the base's are built here (the command line builds the base's
    with its model): a sequence's options (``n_tasks: 0``) are checked when it is built.

    :return: the corners' curricula, and the task names of the sequences built, by :func:`_sequence_key`
    """
    corners: list[Curriculum] = []
    task_names: dict[str, list[str]] = {}
    for combination in space.corner_combinations():
        where = f"{source} (search_space: {', '.join(f'{path}={value!r}' for path, value in combination.items())})"
        try:
            data = space.apply(base, combination)
        except ValueError as error:
            raise ConfigError(f"{where}: {error}") from None
        corner = validate_curriculum(data, source=where)
        key = _sequence_key(corner)
        if key != _sequence_key(curriculum) and key not in task_names:
            task_names[key] = build_sequence(corner, where).task_names
        corners.append(corner)
    return corners, task_names


def _check_metric_key(
    spec: StudySpec,
    space: SearchSpace,
    curricula: Sequence[Curriculum],
    task_names: dict[str, list[str]],
    source: str,
) -> None:
    """``objective.key`` against what the trials' runs can log (:func:`metric_key_problem`), known from
    the base curriculum and the search space's corners: a key no run logs would fail every trial, each
    after training all of it.

    :param curricula: the base curriculum and its corners' (every algorithm, intervention and, with
        :func:`_corners_have_every_sequence`, sequence a trial may have)
    :param task_names: the task names of the sequences built so far, by :func:`_sequence_key`
    """
    key = spec.objective.key
    if key is None:
        return
    task_metrics = None
    if TASK_METRIC.fullmatch(key) and _corners_have_every_sequence(space):
        names: dict[str, None] = {}  # ordered, unique
        for curriculum in curricula:
            sequence = _sequence_key(curriculum)
            if sequence not in task_names:  # the base's: built for this check only
                task_names[sequence] = build_sequence(curriculum, source).task_names
            names.update(dict.fromkeys(task_metric(index, name) for index, name in enumerate(task_names[sequence])))
        task_metrics = tuple(names)
    logs = StudyLogs(
        algorithms=frozenset(curriculum.algorithm for curriculum in curricula),
        interventions=frozenset(
            _intervention_name(item) for curriculum in curricula for item in curriculum.interventions
        ),
        task_metrics=task_metrics,
    )
    problem = metric_key_problem(key, logs)
    if problem is not None:
        raise ConfigError(f"{source}: key 'objective.key' = {key!r}: {problem}")


BUDGET_KEYS = ("steps_per_task", "budget")
"""Sequence keys that set the tasks' budgets only, not which tasks there are."""


def _corners_have_every_sequence(space: SearchSpace) -> bool:
    """Whether the corners' sequences have every task a trial's sequence may have.

    Not when a number drawn from a range sets the sequence (``sequence.options.n_tasks``: the values
    between the bounds are no corner), nor when several choices set it but not every combination of
    the corners is checked. Task names (``continual/<index>_<task>`` keys) are then not known before
    the trials.
    """
    sequence = [
        dimension
        for path, dimension in space.dimensions.items()
        if path.split(".")[0] == "sequence" and path.split(".")[-1] not in BUDGET_KEYS
    ]
    if not all(isinstance(dimension, CategoricalDimension) for dimension in sequence):
        return False
    return len(sequence) <= 1 or space.every_corner_combination


def _intervention_name(item: str | Mapping[str, Any]) -> str:
    """The name of an item of a curriculum's ``interventions`` (validation makes each ``{name, ...}``)."""
    return item if isinstance(item, str) else str(item["name"])


def _sequence_key(curriculum: Curriculum) -> str:
    """What :func:`build_sequence` builds from."""
    return curriculum.sequence.model_dump_json()


def _options(kind: str, cls: type, options: Mapping[str, Any], source: str) -> None:
    """Names and kinds of the options against the Optuna class's signature (Optuna checks few of them
    when constructed, and a wrong kind would fail every trial)."""
    parameters = {name: p for name, p in inspect.signature(cls).parameters.items() if name not in OWN_OPTIONS}
    annotations = _annotations(cls)
    for name, value in options.items():
        if name not in parameters:
            raise ConfigError(
                f"{source}: unknown key '{kind}.options.{name}'{suggest(name, list(parameters))}; "
                f"{cls.__name__} takes: {', '.join(parameters) or 'no options'}"
            )
        problem = annotation_problem(annotations.get(name, parameters[name].annotation), value)
        if problem is not None:
            raise ConfigError(f"{source}: key '{kind}.options.{name}' = {value!r}: {cls.__name__} takes {problem}")


def _annotations(cls: type) -> dict[str, Any]:
    """The constructor's annotations as types; empty when a name in them is still unknown (then
    :func:`annotation_problem` reads the strings of the signature, and skips what it cannot read)."""
    try:
        return typing.get_type_hints(cls.__init__, localns=_ANNOTATION_NAMES)  # type: ignore[misc]
    except NameError:
        return {}


def make_sampler(spec: SamplerSpec, space: SearchSpace, source: str) -> optuna.samplers.BaseSampler:
    """The Optuna sampler of ``spec``; with a seed, trial ``n`` draws with ``seed + n`` (:class:`TrialSeededSampler`).

    But ``qmc``: its points are one low-discrepancy sequence, whose place Optuna keeps in the study
    (so every worker and relaunch takes the next point) under the sampler's seed; seeded per trial,
    each trial would take the first point of another scrambled sequence. It gets the study's seed,
    and only its random draws (of the first trial, before it knows the space) are seeded per trial.

    :raises ConfigError: an unknown option, or one the sampler rejects
    """
    cls = SAMPLERS[spec.name]
    _options("sampler", cls, spec.options, source)
    arguments = dict(spec.options)
    if spec.name == "grid":
        arguments["search_space"] = space.grid(source)

    def make(seed: int | None) -> optuna.samplers.BaseSampler:
        return _construct("sampler", cls, {**arguments, "seed": seed}, source)  # type: ignore[return-value]

    if spec.seed is None:
        return make(None)
    if spec.name == "qmc":
        # The options cannot give an independent sampler (a YAML file gives no objects): QMC's default,
        # a random sampler, seeded per trial as the other samplers are.
        random = TrialSeededSampler(lambda seed: optuna.samplers.RandomSampler(seed=seed), spec.seed)
        arguments["independent_sampler"] = random
        return make(spec.seed)
    return TrialSeededSampler(make, spec.seed)


def make_pruner(spec: PrunerSpec, source: str) -> optuna.pruners.BasePruner:
    """The Optuna pruner of ``spec``.

    :raises ConfigError: an unknown option, or one the pruner rejects
    """
    cls = PRUNERS[spec.name]
    _options("pruner", cls, spec.options, source)
    return _construct("pruner", cls, dict(spec.options), source)  # type: ignore[return-value]


def _construct(kind: str, cls: type, arguments: dict[str, Any], source: str) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return cls(**arguments)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{source}: key '{kind}.options': {cls.__name__} rejects them ({error})") from None


def _n_trials(n_trials: int | None, spec: StudySpec, space: SearchSpace, source: str) -> int:
    """The given number of trials; the size of a grid or of brute force's space by default (and at most:
    further trials would repeat points)."""
    if spec.sampler.name in ("grid", "brute_force"):
        if spec.sampler.name == "grid":
            points, what = math.prod(len(values) for values in space.grid(source).values()), "the grid has"
        else:
            points, what = space.points(source), "the brute_force sampler's space has"
        if n_trials is not None and n_trials > points:
            raise ConfigError(f"{source}: key 'n_trials' = {n_trials}: {what} {points} points only")
        return n_trials or points
    if n_trials is None:
        raise ConfigError(f"{source}: key 'n_trials' is missing; give it in the file or with --n-trials")
    return n_trials


def default_storage(tracking_uri: str, source: str) -> str:
    """``sqlite:///<dir>/optuna.db`` beside an SQLite MLflow database ``sqlite:///<dir>/mlflow.db``.

    :raises ConfigError: an MLflow URI that is not an SQLite file (e.g. a tracking server)
    """
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        raise ConfigError(
            f"{source}: no default Optuna storage beside the MLflow tracking URI {tracking_uri!r}; "
            "give --storage URL (e.g. postgresql://user@host/db) or 'storage.url'"
        )
    return prefix + str(Path(tracking_uri[len(prefix) :]).parent / DEFAULT_STORAGE_FILE)


def _check_url(url: str, key: str, source: str) -> None:
    """A database URL, whose tag (:func:`storage_tag`) MLflow can search for.

    :param key: where the URL comes from, for the message
    """
    try:
        make_url(url)
    except ArgumentError:
        raise ConfigError(
            f"{source}: storage URL {url!r} is not a database URL (e.g. sqlite:///optuna.db, postgresql://host/db)"
        ) from None
    _check_findable(storage_tag(url), key, source)


def _check_findable(value: str, key: str, source: str) -> None:
    """``value`` can be a string of an MLflow filter (:func:`filter_string`): the parent run is found by it."""
    try:
        filter_string(value)
    except ValueError as error:
        raise ConfigError(f"{source}: key {key!r} = {value!r}: {error}") from None


def storage_tag(url: str) -> str:
    """The storage URL as the parent run's tag: without its password, which MLflow would show anyone."""
    parsed = make_url(url)
    without = URL.create(
        parsed.drivername, parsed.username, None, parsed.host, parsed.port, parsed.database, parsed.query
    )
    return without.render_as_string(hide_password=False)


def filter_string(value: str) -> str:
    """``value`` quoted as a string of an MLflow filter (``tags.x = 'value'``).

    MLflow's filters have no escapes: a value is quoted with the quote it does not contain.

    :raises ValueError: ``value`` contains both quotes
    """
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError("MLflow cannot find a run by a value with both ' and \" (its filters have no escapes); drop one")
