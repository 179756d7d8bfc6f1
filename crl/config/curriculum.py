"""Curriculum files: a whole continual-learning experiment in one YAML file, validated before training.

A curriculum names the algorithm, its policy options and hyperparameters, the interventions, the
plasticity metrics, the task sequence with its budgets, the evaluation, the seeds and where runs are
tracked. :func:`load_curriculum` reads it with PyYAML's safe loader (never evaluating anything: a
``!!python/object`` tag is an error) into a :class:`Curriculum`, applies ``--set key.path=value``
overrides, and checks everything that can be checked without building an environment: unknown keys
(with a "did you mean"), types and ranges, hyperparameter names against the SB3 class's constructor,
schedule strings, intervention names and parameters, preset names and options, gymnasium env ids and
Atari modes. Every problem is a :class:`~crl.config.errors.ConfigError` with a one-line message.
"""

from __future__ import annotations

import inspect
import json
import os
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import gymnasium as gym
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    PydanticUndefinedAnnotation,
    PydanticUserError,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from stable_baselines3.common.base_class import BaseAlgorithm

from crl.algorithms import DQN, PPO, QRDQN, SAC, TQC, ContinualAlgorithm, CrossQ
from crl.config.errors import (
    ConfigError,
    describe_validation_error,
    key_path,
    one_line,
    suggest,
    validation_message,
)
from crl.config.schedules import is_schedule
from crl.continual.continual_world import REFERENCE_PROTOCOL, ContinualWorldSAC
from crl.continual.loop import task_metric
from crl.interventions import InterventionError, make_interventions
from crl.metrics import MetricsConfig, MetricsError
from crl.policies import ACTIVATIONS
from crl.policies.spectral_norm import SPECTRAL_NORM_GROUPS
from crl.policies.two_hot import TwoHot
from crl.wrappers import PRESETS
from crl.wrappers.sequence import MEASURES

ALGORITHMS: dict[str, type[ContinualAlgorithm]] = {
    "DQN": DQN,
    "PPO": PPO,
    "SAC": SAC,
    "QRDQN": QRDQN,
    "TQC": TQC,
    "CrossQ": CrossQ,
}


@dataclass(frozen=True)
class AgentPreset:
    """A benchmark's reference agent: its model class and the loop options of its protocol.

    :param algorithm: the curriculum's ``algorithm`` it requires
    :param model_class: the class its builder returns (its constructor defines the hyperparameters)
    :param presets: the sequence presets it is defined for
    :param protocol: :func:`crl.learn_continual` options of the benchmark's protocol; they become the
        defaults of the matching curriculum keys (:data:`PROTOCOL_KEYS`), which a file may still set
    """

    algorithm: str
    model_class: type[ContinualAlgorithm]
    presets: tuple[str, ...]
    protocol: Mapping[str, Any]


AGENTS: dict[str, AgentPreset] = {
    "continual_world_reference": AgentPreset("SAC", ContinualWorldSAC, ("cw10", "cw20"), REFERENCE_PROTOCOL),
}
"""``agent`` name -> preset (``continual_world_reference``: :func:`crl.continual.continual_world.reference_sac`)."""

PROTOCOL_KEYS: dict[str, tuple[str, str]] = {
    "n_eval_episodes": ("evaluation", "n_episodes"),
    "deterministic_eval": ("evaluation", "deterministic"),
    "reset_replay_buffer": ("continual", "reset_replay_buffer"),
    "reset_optimizers": ("continual", "reset_optimizers"),
    "restart_exploration": ("continual", "restart_exploration"),
    "restart_learning_rate": ("continual", "restart_learning_rate"),
}
""":func:`crl.learn_continual` option -> (curriculum section, key)."""

SCHEDULE_HYPERPARAMETERS = frozenset({"learning_rate", "clip_range", "clip_range_vf"})
"""SB3 arguments that take a schedule (``lin_<start>``) as well as a number."""

RESERVED_HYPERPARAMETERS = frozenset(
    {"policy", "env", "policy_kwargs", "seed", "tensorboard_log", "verbose", "_init_setup_model"}
)
"""Constructor arguments the curriculum sets through its own keys (or that the runner owns)."""

_METRIC_NAME = re.compile(r"[/\w.\- ]*" if os.name == "nt" else r"[/\w.\- :]*")
"""The characters MLflow allows in a metric name (``mlflow.utils.validation``: no colon on Windows)."""
_METRIC_NAME_CHARACTERS = (
    "letters, digits, underscores (_), dashes (-), periods (.), spaces"
    + ("" if os.name == "nt" else ", colons (:)")
    + " and slashes (/)"
)
MAX_METRIC_NAME_LENGTH = 250
"""MLflow's limit on a metric name's length."""

Activation = Literal[tuple(ACTIVATIONS)]  # type: ignore[valid-type]
Scalar = bool | int | float | str | None
HyperparameterValue = Scalar | list[int | str] | dict[str, Scalar]


class Section(BaseModel):
    """A part of a curriculum: unknown keys are errors, values are validated strictly.

    Strict: a value of the wrong kind is an error rather than converted (``"10"`` is no integer,
    ``2.0`` no step count, ``"yes"`` no flag); an integer is still a float.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class TwoHotOptions(Section):
    """The support of a categorical (two-hot) value head (:class:`crl.policies.two_hot.TwoHot`).

    :param low: the smallest representable value
    :param high: the largest representable value
    :param bins: the number of support points
    """

    low: float
    high: float
    bins: int = 51

    @model_validator(mode="after")
    def _valid_support(self) -> TwoHotOptions:
        TwoHot(self.low, self.high, self.bins)  # its checks, with its messages
        return self


class PolicyOptions(Section):
    """Typed ``policy_kwargs`` of crl's policies (SB3's options plus crl's architecture options).

    :param net_arch: hidden layer widths, or per-network widths (PPO ``pi``/``vf``, SAC and TQC ``pi``/``qf``)
    :param activation: hidden activation by name (``crelu`` and ``fourier`` included)
    :param layer_norm: LayerNorm in every hidden layer, before (``pre``) or after (``post``) the activation
    :param crelu_halve_width: with ``crelu`` or ``fourier``, halve the hidden widths, so each layer passes on its
        original width
    :param normalize_images: divide image observations by 255
    :param share_features_extractor: actor and critic share the features extractor (PPO, SAC)
    :param ortho_init: orthogonal initialisation (PPO)
    :param log_std_init: initial log standard deviation of Gaussian policies (PPO, SAC)
    :param n_critics: number of Q-networks (SAC), of quantile critics (TQC)
    :param n_quantiles: quantiles per action (QR-DQN) or per critic (TQC)
    :param spectral_norm: spectrally normalised layers: ``hidden``, ``head``, ``all`` or a list of module paths
    :param two_hot: a categorical value head on this support (DQN's Q-network, SAC's critics, PPO's value)
    :param n_heads: task heads of ``MultiHeadPolicy`` (default: the sequence's number of task ids)
    :param first_layer: ``layer_norm_tanh``: ``MultiHeadPolicy``'s first hidden layers are Continual World's
    """

    net_arch: list[PositiveInt] | dict[Literal["pi", "vf", "qf"], list[PositiveInt]] | None = None
    activation: Activation | None = None  # type: ignore[valid-type]
    layer_norm: Literal["pre", "post"] | None = None
    crelu_halve_width: bool | None = None
    normalize_images: bool | None = None
    share_features_extractor: bool | None = None
    ortho_init: bool | None = None
    log_std_init: float | None = None
    n_critics: PositiveInt | None = None
    n_quantiles: PositiveInt | None = None
    spectral_norm: Literal[SPECTRAL_NORM_GROUPS] | list[str] | None = None  # type: ignore[valid-type]
    two_hot: TwoHotOptions | None = None
    n_heads: PositiveInt | None = None
    first_layer: Literal["layer_norm_tanh"] | None = None

    def policy_kwargs(self) -> dict[str, Any]:
        """The options that are set, as SB3 ``policy_kwargs``."""
        return self.model_dump(exclude_none=True)


class TaskSpec(Section):
    """One task of an explicit task list: a gymnasium env id, or an Atari game with a mode.

    :param env: a registered gymnasium env id (e.g. ``CartPole-v1``)
    :param atari: an ALE game name (e.g. ``SpaceInvaders``), with crl's Atari preprocessing
    :param mode: the Atari game mode (checked against the ROM)
    :param difficulty: the Atari difficulty (checked against the ROM)
    :param kwargs: further arguments of ``gymnasium.make``
    :param budget: environment steps; by default the sequence's ``steps_per_task``
    :param name: the task's label (default: derived from the env)
    :param task_id: the id a one-hot observation or a multi-head policy sees (default: the position)
    """

    env: str | None = None
    atari: str | None = None
    mode: NonNegativeInt | None = None
    difficulty: NonNegativeInt | None = None
    kwargs: dict[str, bool | int | float | str | None] = Field(default_factory=dict)
    budget: PositiveInt | None = None
    name: str | None = None
    task_id: NonNegativeInt | None = None


class SequenceSpec(Section):
    """The task sequence: a preset (``make_sequence(preset, **options)``) or an explicit task list.

    :param preset: a name of :data:`crl.wrappers.PRESETS`
    :param options: the preset builder's further options (e.g. ``n_tasks``)
    :param tasks: an explicit task list (instead of a preset)
    :param name: the explicit sequence's name
    :param steps_per_task: environment steps per task (the preset's default when not given)
    :param task_id_in_obs: give observations the one-hot task id (a preset that always does, cw10/cw20, keeps it)
    :param measure: what evaluation reports for an explicit list
    """

    preset: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    tasks: list[TaskSpec] | None = None
    name: str = "curriculum"
    steps_per_task: PositiveInt | None = None
    task_id_in_obs: bool = False
    measure: Literal[MEASURES] = "mean_return"  # type: ignore[valid-type]


class EvaluationSpec(Section):
    """How every task is evaluated during training (:func:`crl.learn_continual`).

    :param every: environment steps between evaluations (the end of every task is evaluated too)
    :param n_episodes: episodes per task and evaluation
    :param deterministic: greedy evaluation; default: greedy for DQN, stochastic otherwise
    """

    every: PositiveInt = 10_000
    n_episodes: PositiveInt = 10
    deterministic: bool | None = None


class ContinualSpec(Section):
    """What happens at task switches (options of :func:`crl.learn_continual`)."""

    restart_exploration: bool = True
    restart_learning_rate: bool = True
    reset_replay_buffer: bool = False
    reset_optimizers: bool = False


class TrackingSpec(Section):
    """Where runs are recorded (MLflow).

    :param experiment: the MLflow experiment's name (MLflow refuses an empty one)
    :param tracking_uri: MLflow tracking URI; ``--tracking-uri`` and ``MLFLOW_TRACKING_URI`` override it
    :param run_name: name of the parent run (default: the curriculum file's stem)
    """

    experiment: Annotated[str, Field(min_length=1)] = "crl"
    tracking_uri: str = "sqlite:///mlflow.db"
    run_name: str | None = None


class CheckpointSpec(Section):
    """When the model (and what resuming needs) is saved.

    :param every: environment steps between checkpoints (``None``: only at task ends)
    :param at_task_end: save a checkpoint at the end of every task
    :param directory: where checkpoints go (``<directory>/<MLflow run id>/``), relative to the working directory
    :param keep_after_finish: keep a seed's last checkpoint once it has finished (its final model is
        logged to MLflow either way; a replay buffer checkpoint can take gigabytes)
    """

    every: PositiveInt | None = None
    at_task_end: bool = True
    directory: str = "checkpoints"
    keep_after_finish: bool = False


class Curriculum(Section):
    """A continual-learning experiment. ``docs/curricula.md`` describes every key."""

    algorithm: Literal["DQN", "PPO", "SAC", "QRDQN", "TQC", "CrossQ"]
    agent: Literal["continual_world_reference"] | None = None
    """A benchmark's own agent instead of ``policy``/``policy_options`` (see :data:`AGENTS`)."""
    policy: Literal["MlpPolicy", "CnnPolicy", "MultiInputPolicy", "MultiHeadPolicy"] = "MlpPolicy"
    policy_options: PolicyOptions = PolicyOptions()
    hyperparameters: dict[str, HyperparameterValue] = Field(default_factory=dict)
    interventions: list[str | dict[str, Any]] = Field(default_factory=list)
    metrics: MetricsConfig | None = None
    sequence: SequenceSpec
    n_envs: PositiveInt = 1
    evaluation: EvaluationSpec = EvaluationSpec()
    continual: ContinualSpec = ContinualSpec()
    seeds: list[NonNegativeInt] = Field(default=[0], min_length=1)
    tracking: TrackingSpec = TrackingSpec()
    checkpoint: CheckpointSpec = CheckpointSpec()

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct, got {seeds}")
        return seeds

    @property
    def algorithm_class(self) -> type[ContinualAlgorithm]:
        return ALGORITHMS[self.algorithm]

    def to_yaml(self) -> str:
        """The resolved curriculum (every default filled in) as YAML, loadable by :func:`load_curriculum`."""
        resolved = self.model_dump(mode="json")
        resolved["policy_options"] = self.policy_options.policy_kwargs()  # unset options are SB3's defaults
        return safe_dump(resolved)


class SafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader (plain data only), reading ``1e-3`` as a float as YAML 1.2 does.

    YAML 1.1, which PyYAML implements, needs a dot (``1.0e-3``); without this, the usual way of
    writing a learning rate would be a string, which strict validation rejects.
    """


class SafeDumper(yaml.SafeDumper):
    """PyYAML's safe dumper, quoting every string that :class:`SafeLoader` would read as another type.

    The dumper quotes a string only when its own resolvers would read it back as something else;
    with PyYAML's, ``"1e3"`` would be written plain and read back by :class:`SafeLoader` as 1000.0.
    """


_SCIENTIFIC_FLOAT = re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$")
SafeLoader.add_implicit_resolver("tag:yaml.org,2002:float", _SCIENTIFIC_FLOAT, list("-+0123456789."))
# The same rule in the dumper: a dump then loads back as it was.
SafeDumper.add_implicit_resolver("tag:yaml.org,2002:float", _SCIENTIFIC_FLOAT, list("-+0123456789."))


def safe_load(text: str) -> Any:
    """``text`` as plain data, through :class:`SafeLoader` (what ``yaml.safe_load`` does, with our loader)."""
    loader = SafeLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def safe_dump(data: Any) -> str:
    """``data`` (plain data) as YAML that :func:`safe_load` reads back as ``data``, keys in their order."""
    return yaml.dump(data, Dumper=SafeDumper, sort_keys=False)


def read_yaml(path: str | Path, kind: str = "curriculum") -> dict[str, Any]:
    """A YAML file's top-level mapping, read with :func:`safe_load`.

    :param kind: what the file holds, for the message when it is not a mapping
    :raises ConfigError: missing file, YAML syntax error, a tag that is not plain data, not a mapping
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read ({error.strerror})") from None
    try:
        data = safe_load(text)
    except yaml.MarkedYAMLError as error:
        # safe_load builds plain data only: a `!!python/object` tag is a ConstructorError here.
        mark = error.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {error.problem}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {one_line(str(error))}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {kind} is a mapping of keys, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides to ``data`` in place; values are YAML (:func:`safe_load`).

    The path is a :func:`set_path` path: a numeric part indexes a list (``sequence.tasks.0.budget=500``),
    an intervention can be named (``interventions.redo.tau=0.2``); a missing mapping key is created,
    so that a misspelled one is reported by validation with a suggestion.

    :raises ConfigError: an override without ``=``, a value that is not YAML, a path through a non-container
    """
    for override in overrides:
        path, separator, text = override.partition("=")
        if not separator or not path:
            raise ConfigError(f"--set {override!r}: write key.path=value")
        try:
            value = safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"--set {override!r}: the value is not valid YAML ({one_line(str(error))})") from None
        try:
            set_path(data, path, value)
        except ValueError as error:
            raise ConfigError(f"--set {override!r}: {error}") from None
    return data


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set ``path`` (``a.b.0.c`` or ``a.b[0].c``, as error messages spell it; a list of interventions also
    by name: ``interventions.redo.tau``) in ``data``.

    A missing mapping key is created, so that a misspelled one is reported by the curriculum's
    validation with a suggestion. A list item in short form (``redo``) that a path goes through, by
    name or by position, becomes a mapping (``{name: redo}``) to take parameters.

    :raises ValueError: a path through something that is not a mapping or list, or a missing item
    """
    *parents, last = path_parts(path)
    node: Any = data
    for depth, part in enumerate(parents):
        where = _spelt(parents[: depth + 1])
        if isinstance(node, dict):
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        elif isinstance(node, list):
            index = _item(node, part, where)
            if isinstance(node[index], str):
                node[index] = {"name": node[index]}  # the short form of a named item, to take parameters
            node = node[index]
        else:
            raise ValueError(f"{'.'.join(parents[:depth]) or 'the top level'} is not a mapping or a list")
    if isinstance(node, dict):
        node[last] = value
    elif isinstance(node, list):
        node[_item(node, last, _spelt([*parents, last]))] = value
    else:
        raise ValueError(f"{'.'.join(parents)!r} is not a mapping or a list")


def path_parts(path: str) -> list[str]:
    """``"sequence.tasks[0].budget"`` -> ``["sequence", "tasks", "0", "budget"]`` (``tasks.0`` is the same)."""
    return [part for dotted in path.split(".") for part in _INDEXED.sub(r".\1", dotted).split(".")]


_INDEXED = re.compile(r"\[(\d+)\]")
"""A list index in brackets, ``[0]``."""


def _spelt(parts: list[str]) -> str:
    """Path parts as error messages spell a key: ``["tasks", "2", "budget"]`` -> ``tasks[2].budget``."""
    return key_path([int(part) if part.isdigit() else part for part in parts])


def _item(items: list[Any], part: str, where: str) -> int:
    """The index ``part`` names: a position, or the one item (intervention) of that name."""
    if part.isdigit():
        if int(part) >= len(items):
            raise ValueError(f"{where!r} needs a list index in [0, {len(items)})")
        return int(part)
    names = [item if isinstance(item, str) else item.get("name") if isinstance(item, dict) else None for item in items]
    found = [index for index, name in enumerate(names) if name == part]
    if not found:  # no position would help either
        raise ValueError(f"{where!r}: no item named {part!r} in {names}")
    if len(found) > 1:
        raise ValueError(f"{where!r}: {len(found)} items named {part!r} in {names}; address it by position instead")
    return found[0]


def load_curriculum(path: str | Path, overrides: Iterable[str] = ()) -> Curriculum:
    """Read, override and validate a curriculum file.

    :param path: the YAML file
    :param overrides: ``key.path=value`` strings (the command line's ``--set``)
    :raises ConfigError: with a one-line message naming the file, the key and the problem
    """
    data = apply_overrides(read_yaml(path), overrides)
    return validate_curriculum(data, source=str(path))


def validate_curriculum(data: Mapping[str, Any], source: str = "curriculum") -> Curriculum:
    """Validate a curriculum given as plain data (see :func:`load_curriculum`)."""
    _check_metrics(data.get("metrics"), source)
    try:
        curriculum = Curriculum.model_validate(data, strict=True)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, Curriculum, source)) from None
    check_hyperparameters(curriculum, source)
    _check_continual(curriculum, source)
    curriculum = _with_resolved_interventions(curriculum, source)
    check_sequence(curriculum.sequence, source)
    _check_policy(curriculum, source)
    return _with_agent_protocol(curriculum, source)


MULTI_HEAD_OPTIONS = ("n_heads", "first_layer")
"""``policy_options`` of ``MultiHeadPolicy`` only."""


def _check_policy(curriculum: Curriculum, source: str) -> None:
    """The policy is one the algorithm has, and options of the multi-head policy come with it."""
    algorithm = cast("type[BaseAlgorithm]", curriculum.algorithm_class)  # crl's classes are SB3's subclasses
    allowed = list(algorithm.policy_aliases)
    if curriculum.policy not in allowed:
        raise ConfigError(
            f"{source}: key 'policy' = {curriculum.policy!r} is not a policy of {curriculum.algorithm}; "
            f"allowed: {', '.join(allowed)}"
        )
    if curriculum.policy != "MultiHeadPolicy":
        for option in MULTI_HEAD_OPTIONS:
            if getattr(curriculum.policy_options, option) is not None:
                raise ConfigError(
                    f"{source}: key 'policy_options.{option}' is an option of 'policy: MultiHeadPolicy', "
                    f"not of {curriculum.policy!r}; remove it or set the policy"
                )


_DEFAULTS = {name: field.default for name, field in Curriculum.model_fields.items()}


def _with_agent_protocol(curriculum: Curriculum, source: str) -> Curriculum:
    """Check an ``agent`` against algorithm, sequence and policy keys; fill in its protocol's defaults."""
    if curriculum.agent is None:
        return curriculum
    agent = AGENTS[curriculum.agent]
    where = f"{source}: key 'agent' = {curriculum.agent!r}"
    if curriculum.algorithm != agent.algorithm:
        raise ConfigError(f"{where} is a {agent.algorithm} agent; set 'algorithm: {agent.algorithm}'")
    if curriculum.sequence.preset not in agent.presets:
        raise ConfigError(f"{where} needs 'sequence.preset' in {list(agent.presets)}")
    # Compared with the defaults rather than looked up in the file's keys: a resolved config.yml has them all.
    fixed = [key for key in ("n_envs", "policy", "policy_options") if getattr(curriculum, key) != _DEFAULTS[key]]
    if fixed:
        raise ConfigError(f"{where} fixes {', '.join(sorted(fixed))}; remove the key(s)")
    update: dict[str, Any] = {}
    for option, value in agent.protocol.items():
        section_name, key = PROTOCOL_KEYS[option]
        section = update.get(section_name, getattr(curriculum, section_name))
        if key not in section.model_fields_set:  # a key the file sets wins (e.g. fewer episodes in a smoke run)
            update[section_name] = section.model_copy(update={key: value})
    return curriculum.model_copy(update=update)


def _check_metrics(metrics: Any, source: str) -> None:
    """``metrics`` through :class:`MetricsConfig`'s own checks, with the key's path and a suggestion."""
    if not isinstance(metrics, Mapping):
        return  # None, or a wrong type that validation reports
    allowed = list(MetricsConfig.model_fields)
    for key in metrics:
        if key not in allowed:
            raise ConfigError(
                f"{source}: unknown key 'metrics.{key}'{suggest(str(key), allowed)}; "
                f"allowed keys here: {', '.join(allowed)}"
            )
    _check_parameter_kinds(MetricsConfig, metrics, "metrics", source)  # MetricsConfig converts (every: true is 1)
    try:
        MetricsConfig.make(metrics)
    except MetricsError as error:
        raise ConfigError(f"{source}: {one_line(str(error))}") from None


def sb3_class(algorithm: type[ContinualAlgorithm]) -> type[BaseAlgorithm]:
    """The SB3 (or sb3-contrib) class a crl algorithm extends (whose constructor defines the hyperparameters)."""
    return next(
        base
        for base in algorithm.__mro__
        if base.__module__.startswith(("stable_baselines3", "sb3_contrib")) and issubclass(base, BaseAlgorithm)
    )


def hyperparameter_names(algorithm: type[ContinualAlgorithm], agent: str | None = None) -> list[str]:
    """The constructor arguments a curriculum may set under ``hyperparameters``: SB3's, and an agent's own."""
    return list(_hyperparameters(algorithm, agent))


def _hyperparameters(algorithm: type[ContinualAlgorithm], agent: str | None) -> dict[str, inspect.Parameter]:
    """Name -> constructor parameter (its annotation and default) of SB3's class and of an agent's own."""
    parameters = dict(inspect.signature(sb3_class(algorithm).__init__).parameters)
    if agent is not None:
        own = inspect.signature(AGENTS[agent].model_class.__init__).parameters.values()
        parameters.update({p.name: p for p in own if p.kind is inspect.Parameter.KEYWORD_ONLY})
    return {name: p for name, p in parameters.items() if name != "self" and name not in RESERVED_HYPERPARAMETERS}


def check_hyperparameters(curriculum: Curriculum, source: str) -> None:
    """Names against the SB3 constructor; schedule strings where SB3 takes a schedule; value kinds."""
    parameters = _hyperparameters(curriculum.algorithm_class, curriculum.agent)
    allowed = list(parameters)
    for name, value in curriculum.hyperparameters.items():
        key = f"hyperparameters.{name}"
        if name in RESERVED_HYPERPARAMETERS:
            raise ConfigError(f"{source}: {key!r} is set by the curriculum itself, not as a hyperparameter")
        if name not in allowed:
            raise ConfigError(
                f"{source}: unknown key {key!r}{suggest(name, allowed)}; "
                f"{curriculum.algorithm} takes: {', '.join(allowed)}"
            )
        if isinstance(value, str) and name in SCHEDULE_HYPERPARAMETERS and not is_schedule(value):
            raise ConfigError(
                f"{source}: key {key!r} = {value!r}: not a schedule; write a number or 'lin_<start>' (e.g. 'lin_0.001')"
            )
        if isinstance(value, str) and name not in SCHEDULE_HYPERPARAMETERS and value.startswith("lin_"):
            raise ConfigError(
                f"{source}: key {key!r} = {value!r}: {name} takes no schedule; "
                f"schedules apply to {sorted(SCHEDULE_HYPERPARAMETERS)}"
            )
        _check_value_kind(name, value, parameters[name].default, source)
        if not (isinstance(value, str) and name in SCHEDULE_HYPERPARAMETERS):  # a schedule's form is checked above
            _check_annotation(name, value, parameters[name].annotation, source)


def _check_annotation(name: str, value: HyperparameterValue, annotation: Any, source: str) -> None:
    """``value`` strictly against the constructor's annotation: ``batch_size: 64.5`` or ``target_kl: abc``
    would fail only inside training, ``random_steps: true`` would train with 1."""
    problem = annotation_problem(annotation, value)
    if problem is not None:
        raise ConfigError(f"{source}: key 'hyperparameters.{name}' = {value!r}: {name} takes {problem}")


def annotation_problem(annotation: Any, value: Any) -> str | None:
    """Why ``value`` does not fit a constructor's ``annotation`` (strictly, as plain data), or ``None``.

    ``None`` also when there is no annotation or pydantic cannot read it (a forward reference): the
    constructor then checks the value itself.
    """
    if annotation is inspect.Parameter.empty:
        return None
    try:
        validate_strictly(TypeAdapter(annotation, config=ConfigDict(arbitrary_types_allowed=True)), value)
    except (PydanticUserError, PydanticUndefinedAnnotation):
        return None
    except ValidationError as error:
        message = validation_message(error.errors()[0])
        if "isinstance" in message:  # a class such as ActionNoise: no YAML value is one
            message = "an object of that class, which a YAML file cannot give"
        elif "callable" in message:  # a function such as TPE's gamma: a YAML string is not code
            message = "a function, which a YAML file cannot give"
        text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
        return f"{text} ({message})"
    return None


def _check_value_kind(name: str, value: HyperparameterValue, default: Any, source: str) -> None:
    """A value of the kind SB3's default has: ``true``/``false`` for a flag, a number for a number.

    SB3 stores most hyperparameters unchecked and fails only in the first update; a string where a
    number belongs must stop the launch before any run exists. Schedules and ``train_freq``'s
    ``[n, "step"|"episode"]`` form are the allowed non-numbers; mappings go to ``*_kwargs`` arguments
    (e.g. ``replay_buffer_kwargs``) and only there.
    """
    key = f"hyperparameters.{name}"
    if name.endswith("_kwargs") != isinstance(value, dict) and value is not None:
        wanted = "a mapping of arguments" if name.endswith("_kwargs") else "no mapping; mappings go to *_kwargs keys"
        raise ConfigError(f"{source}: key {key!r} = {value!r}: {name} takes {wanted}")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: key {key!r} = {value!r}: {name} takes true or false")
        return
    if not isinstance(default, int | float):
        return
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    schedule = name in SCHEDULE_HYPERPARAMETERS and isinstance(value, str)  # its form is checked first
    frequency = name == "train_freq" and isinstance(value, list)
    if not (numeric or schedule or frequency):
        raise ConfigError(f"{source}: key {key!r} = {value!r}: {name} takes a number (SB3's default: {default!r})")


def _check_continual(curriculum: Curriculum, source: str) -> None:
    """Task-switch options the algorithm can honour."""
    if curriculum.continual.reset_replay_buffer and curriculum.algorithm == "PPO":
        raise ConfigError(
            f"{source}: key 'continual.reset_replay_buffer' = True: PPO has no replay buffer; "
            "allowed only with DQN or SAC"
        )


def _with_resolved_interventions(curriculum: Curriculum, source: str) -> Curriculum:
    """Build the interventions through the registry; keep them as ``{"name", **every parameter}``."""
    try:
        interventions = make_interventions(curriculum.interventions)
    except InterventionError as error:
        raise ConfigError(f"{source}: {one_line(str(error))}") from None
    for index, intervention in enumerate(interventions):
        if intervention.algorithms is not None and curriculum.algorithm not in intervention.algorithms:
            raise ConfigError(
                f"{source}: interventions[{index}]: {intervention.name!r} does not apply to {curriculum.algorithm}; "
                f"it supports {sorted(intervention.algorithms)}"
            )
    for index, spec in enumerate(curriculum.interventions):
        if isinstance(spec, Mapping):
            _check_parameter_kinds(type(interventions[index]), spec, f"interventions[{index}]", source)
    resolved = [{"name": intervention.name, **intervention.model_dump(mode="json")} for intervention in interventions]
    return curriculum.model_copy(update={"interventions": resolved})


def _check_parameter_kinds(kind: type[BaseModel], spec: Mapping[str, Any], key: str, source: str) -> None:
    """The intervention's parameters as strictly as the rest of the file (its constructor converts).

    Field by field: a model with its own ``__init__`` (as interventions have) validates leniently
    through it even when asked to be strict.
    """
    for name, value in spec.items():
        if name == "name":
            continue
        field = kind.model_fields[name]
        annotation = Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation
        try:
            validate_strictly(TypeAdapter(annotation), value)
        except ValidationError as error:
            message = validation_message(error.errors()[0])
            raise ConfigError(f"{source}: key '{key}.{name}' = {value!r}: {message}") from None


def check_sequence(sequence: SequenceSpec, source: str) -> None:
    """Preset name and options, or the explicit tasks' env ids and Atari modes (no env is stepped)."""
    if (sequence.preset is None) == (sequence.tasks is None):
        raise ConfigError(f"{source}: 'sequence' needs exactly one of 'preset' or 'tasks'")
    if sequence.preset is not None:
        _check_preset(sequence, source)
        return
    assert sequence.tasks is not None
    if not sequence.tasks:
        raise ConfigError(f"{source}: 'sequence.tasks' is empty; give at least one task")
    if sequence.options:
        raise ConfigError(f"{source}: 'sequence.options' applies to presets only; set each task's keys instead")
    for index, task in enumerate(sequence.tasks):
        _check_task(task, index, sequence.steps_per_task, source)


def _check_preset(sequence: SequenceSpec, source: str) -> None:
    name = sequence.preset
    assert name is not None
    if name not in PRESETS:
        raise ConfigError(
            f"{source}: key 'sequence.preset' = {name!r}: unknown preset{suggest(name, list(PRESETS))}; "
            f"presets: {', '.join(PRESETS)}"
        )
    parameters = inspect.signature(PRESETS[name], eval_str=True).parameters
    for option, value in sequence.options.items():
        if option == "steps_per_task":
            raise ConfigError(f"{source}: set 'sequence.steps_per_task', not 'sequence.options.steps_per_task'")
        if option not in parameters:
            allowed = [parameter for parameter in parameters if parameter != "steps_per_task"]
            raise ConfigError(
                f"{source}: unknown key 'sequence.options.{option}'{suggest(option, allowed)}; "
                f"preset {name!r} takes: {', '.join(allowed) or 'no options'}"
            )
        _check_option_type(parameters[option], value, f"sequence.options.{option}", source)
    if sequence.measure != "mean_return" or sequence.name != "curriculum":
        raise ConfigError(f"{source}: 'sequence.measure' and 'name' apply to task lists; preset {name!r} sets its own")


def validate_strictly(adapter: TypeAdapter[Any], value: Any) -> Any:
    """``value`` validated strictly as plain (JSON-like) data: a list may be a tuple, ``"3"`` is no int.

    :raises ValidationError: a value of the wrong kind
    """
    return adapter.validate_json(json.dumps(value, default=str), strict=True)  # dates, YAML's only non-JSON, as str


def _check_option_type(parameter: inspect.Parameter, value: Any, key: str, source: str) -> None:
    """``value`` against the builder's annotation, strictly (the builder itself would fail much later)."""
    if parameter.annotation is inspect.Parameter.empty:
        return
    try:
        validate_strictly(TypeAdapter(parameter.annotation), value)
    except ValidationError as error:
        allowed = getattr(parameter.annotation, "__name__", str(parameter.annotation))
        message = one_line(validation_message(error.errors()[0]))
        raise ConfigError(f"{source}: key {key!r} = {value!r}: {message} (the preset takes {allowed})") from None


def _check_task(task: TaskSpec, index: int, steps_per_task: int | None, source: str) -> None:
    key = f"sequence.tasks[{index}]"
    if task.name is not None:
        problem = task_name_problem(index, task.name)
        if problem is not None:
            raise ConfigError(f"{source}: key {key + '.name'!r} = {task.name!r}: {problem}")
    if (task.env is None) == (task.atari is None):
        raise ConfigError(f"{source}: {key!r} needs exactly one of 'env' (a gymnasium id) or 'atari' (a game)")
    if task.budget is None and steps_per_task is None:
        raise ConfigError(f"{source}: {key + '.budget'!r} is missing and 'sequence.steps_per_task' is not set")
    if task.env is not None:
        if task.mode is not None or task.difficulty is not None:
            raise ConfigError(f"{source}: {key!r}: 'mode' and 'difficulty' apply to 'atari' tasks")
        _check_env_id(task.env, f"{key}.env", source)
        return
    from crl.wrappers.atari import check_flavour  # registers the ALE envs on first use

    try:
        check_flavour(task.atari, task.mode, task.difficulty)  # type: ignore[arg-type]
    except ValueError as error:
        raise ConfigError(f"{source}: {key!r}: {one_line(str(error))}") from None


def _check_env_id(env_id: str, key: str, source: str) -> None:
    try:
        gym.spec(env_id)
    except gym.error.Error as error:
        registered = list(gym.registry)
        raise ConfigError(
            f"{source}: key {key!r} = {env_id!r}: not a registered gymnasium env{suggest(env_id, registered)} "
            f"({one_line(str(error))})"
        ) from None


def task_name_problem(index: int, name: str) -> str | None:
    """Why MLflow would refuse :func:`task_metric` of task ``index`` named ``name``, or ``None``.

    MLflow checks a metric's name only when it is logged, at the first evaluation, long after
    training started: a name it refuses must stop the launch before. Its rule
    (``mlflow.utils.validation``): a few characters, a name that stays the same read as a file path,
    at most :data:`MAX_METRIC_NAME_LENGTH` characters.
    """
    key = task_metric(index, name)
    # fullmatch: MLflow's `$` would also let a trailing newline through, which no task name needs
    if _METRIC_NAME.fullmatch(key) is None:
        refused = ", ".join(repr(character) for character in sorted(set(name)) if not _METRIC_NAME.fullmatch(character))
        return (
            f"{refused} cannot be in its MLflow metric {key!r}; a task name may only contain {_METRIC_NAME_CHARACTERS}"
        )
    normalized = posixpath.normpath(key)
    if normalized != key:  # the prefix keeps the key from being '.', from starting with '..' or '/'
        return (
            f"MLflow reads its metric {key!r} as a file path, which would become {normalized!r}; "
            "a task name may have no '//', no '.' or '..' between slashes and no '/' at its end"
        )
    if len(key) > MAX_METRIC_NAME_LENGTH:
        longest = MAX_METRIC_NAME_LENGTH - len(task_metric(index, ""))
        return (
            f"its MLflow metric would have {len(key)} characters, more than MLflow's {MAX_METRIC_NAME_LENGTH}; "
            f"a task name here may have at most {longest}"
        )
    return None


def check_task_names(sequence: SequenceSpec, task_names: Sequence[str], source: str) -> None:
    """The names of the built sequence's tasks as MLflow metrics (:func:`task_name_problem`), before training.

    A task list's own ``name`` is checked with the rest of the file; this also checks the names the
    builders derive (from a preset and its options, an env id or an Atari game).

    :param sequence: the curriculum's sequence, to say where a name comes from
    :param task_names: the names of the built sequence's tasks
    :raises ConfigError: naming the task, its name and what MLflow allows
    """
    for index, name in enumerate(task_names):
        problem = task_name_problem(index, name)
        if problem is None:
            continue
        if sequence.tasks is None:
            where = f"key 'sequence.preset' = {sequence.preset!r}: task {index} is named {name!r}"
            raise ConfigError(f"{source}: {where}: {problem}; choose other 'sequence.options'")
        if sequence.tasks[index].name is not None:
            where = f"key 'sequence.tasks[{index}].name' = {name!r}"
        else:
            where = f"'sequence.tasks[{index}]' is named {name!r} by default"
        raise ConfigError(f"{source}: {where}: {problem}; set its 'name'")
