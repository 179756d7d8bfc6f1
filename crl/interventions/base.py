"""The :class:`Intervention` base class and the registry that builds interventions from names."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError

from crl.config.errors import key_problems
from crl.hooks import TrainingHook
from crl.policies.base import ContinualPolicyMixin

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

_REGISTRY: dict[str, type[Intervention]] = {}


class InterventionError(ValueError):
    """An intervention was asked for with an unknown name or an invalid parameter."""


class Intervention(BaseModel, TrainingHook):
    """An intervention against loss of plasticity: typed parameters plus hooks into training.

    Subclasses declare their parameters as pydantic fields (validated at construction), set the
    class variable ``name`` (the key used in YAML files) and override the hooks they need. Runtime
    state goes into private attributes; it is pickled with the model, so it survives ``save``/``load``.

    Construct one from Python (``LayerNorm(placement="pre")``) or from a name and parameters
    (:func:`make_intervention`).
    """

    # allow_inf_nan=False: no parameter of the references is infinite, and inf or nan would only fail
    # (or quietly poison the parameters) once training has started.
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, arbitrary_types_allowed=True, allow_inf_nan=False
    )

    name: ClassVar[str]
    """Registry key, e.g. ``"layer_norm"``."""
    algorithms: ClassVar[frozenset[str] | None] = None
    """Algorithm families the intervention supports (``"DQN"``, ``"PPO"``, ``"SAC"``, ``"QRDQN"``, ``"TQC"``,
    ``"CrossQ"``); ``None``: all."""
    transient: ClassVar[tuple[str, ...]] = ()
    """Private attributes that are caches (e.g. of modules): reset to their default when pickled."""
    needs_crl_policy: ClassVar[bool] = False
    """Whether the hooks read the networks of a crl policy (their layers, features or copies)."""

    _owner: str | None = PrivateAttr(default=None)

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(type(self).model_fields))
        if unknown:
            raise InterventionError(
                f"intervention {self.name!r} has no parameter(s) {unknown}; its parameters are {self.parameter_help()}"
            )
        try:
            super().__init__(**params)
        except ValidationError as error:
            raise InterventionError(_describe(type(self), error)) from None

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            if cls.name in _REGISTRY:
                raise TypeError(f"intervention name {cls.name!r} is already used by {_REGISTRY[cls.name]}")
            _REGISTRY[cls.name] = cls

    @classmethod
    def parameter_help(cls) -> str:
        """``name: type = default`` for every parameter, or ``none``."""
        parts = [
            f"{field}: {_type_name(info.annotation)} = {info.default!r}" for field, info in cls.model_fields.items()
        ]
        return ", ".join(parts) or "none"

    def check(self, algo: BaseAlgorithm) -> None:
        """Raise a clear error if ``algo`` cannot take this intervention (called at construction)."""
        family = getattr(algo, "algorithm_family", type(algo).__name__)
        if self.algorithms is not None and family not in self.algorithms:
            raise InterventionError(
                f"intervention {self.name!r} does not apply to {family}; it supports {sorted(self.algorithms)}"
            )
        problem = crl_policy_problem(algo)
        if (self.needs_crl_policy or self.needs_features) and problem is not None:
            raise InterventionError(f"intervention {self.name!r} reads the networks of a crl policy, but {problem}")

    def check_sequence(self, n_tasks: int) -> None:
        """Take the sequence's length, or raise a clear error if the intervention cannot train through a
        sequence of ``n_tasks`` tasks (called by :func:`crl.learn_continual` before training)."""

    def bind(self, owner: str) -> None:
        """Belong to the model whose token is ``owner`` (called at construction and after ``load``).

        :raises InterventionError: the instance already belongs to another model. Its state (L2-init's
            anchor, schedules' counters, the replay ratio's switch) is that model's, so a second model
            must get its own instance, e.g. :meth:`fresh`.
        """
        if self._owner not in (None, owner):
            raise InterventionError(
                f"intervention {self!r} already belongs to another model, whose state it keeps; give each "
                f"model its own instance: a new {type(self).__name__}(...), intervention.fresh(), or the name "
                f"{self.name!r} or a mapping"
            )
        self._owner = owner

    def release(self) -> None:
        """Belong to no model, with the state of a new instance (the model it was given to failed to build)."""
        for key, private in type(self).__private_attributes__.items():
            setattr(self, key, private.get_default(call_default_factory=True))

    def fresh(self) -> Intervention:
        """The same intervention, with the same parameters and no state: for another model."""
        return type(self)(**self.model_dump())

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        private = state.get("__pydantic_private__")
        if private:
            # _owner too: a loaded copy belongs to the model that loads it
            transient = {*self.transient, "_owner"}
            defaults = type(self).__private_attributes__
            state["__pydantic_private__"] = {
                key: defaults[key].get_default(call_default_factory=True) if key in transient else value
                for key, value in private.items()
            }
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        # An intervention saved by an earlier crl lacks the private attributes added since: their defaults.
        defaults = type(self).__private_attributes__
        private = state.get("__pydantic_private__") or {}
        missing = {key: value.get_default(call_default_factory=True) for key, value in defaults.items()}
        upgraded = self._upgraded(private, state.get("__dict__", {}))
        super().__setstate__({**state, "__pydantic_private__": {**missing, **upgraded}})

    @classmethod
    def _upgraded(cls, private: dict[str, Any], parameters: dict[str, Any]) -> dict[str, Any]:
        """The saved private state in this version's attributes (subclasses map renamed ones).

        :param parameters: the saved parameters (fields)
        """
        return private

    def record(self, algo: BaseAlgorithm, key: str, value: Any) -> None:
        """Log ``value`` as ``interventions/<name>/<key>`` through the algorithm's SB3 logger.

        Before the first ``learn()`` SB3 has no logger yet, and nothing is logged.
        """
        if getattr(algo, "_logger", None) is not None:
            algo.logger.record(f"interventions/{self.name}/{key}", value)

    def __repr__(self) -> str:
        params = ", ".join(f"{key}={value!r}" for key, value in self.model_dump().items())
        return f"{type(self).__name__}({params})"

    __str__ = __repr__


def crl_policy_problem(algo: BaseAlgorithm) -> str | None:
    """Why the policy ``algo`` builds is not a crl policy (:class:`crl.policies.ContinualPolicyMixin`), or ``None``."""
    policy_class = algo.policy_class  # type: ignore[attr-defined]
    if issubclass(policy_class, ContinualPolicyMixin):
        return None
    return (
        f"policy={policy_class.__module__}.{policy_class.__qualname__} is not one; use one of "
        f"{sorted(algo.policy_aliases)} or a subclass of crl.policies.ContinualPolicyMixin"
    )


def _type_name(annotation: Any) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def _describe(cls: type[Intervention], error: ValidationError) -> str:
    problems = []
    for path, value, message in key_problems(error):
        if path in cls.model_fields and error_is_missing(error, path):
            # pydantic's value of a missing key is the whole input: name the key and its type instead
            problems.append(f"parameter {path} is required ({_type_name(cls.model_fields[path].annotation)})")
        else:
            # A check of several parameters together (e.g. at_step with at_task) names them in its message.
            problems.append(f"parameter {path}={value!r}: {message}" if path else message)
    return f"intervention {cls.name!r}: " + "; ".join(problems)


def error_is_missing(error: ValidationError, key: str) -> bool:
    """Whether ``error`` says that the top-level ``key`` was not given."""
    return any(item["type"] == "missing" and tuple(item["loc"]) == (key,) for item in error.errors())


def registered_interventions() -> dict[str, type[Intervention]]:
    """Name -> class of every intervention crl knows."""
    return dict(sorted(_REGISTRY.items()))


def make_intervention(spec: Intervention | str | Mapping[str, Any]) -> Intervention:
    """Build an intervention from an instance, a name, or a mapping ``{"name": ..., **parameters}``.

    :raises InterventionError: unknown name (the message lists the known ones) or invalid parameters
    """
    if isinstance(spec, Intervention):
        return spec
    if isinstance(spec, str):
        name, params = spec, {}
    elif isinstance(spec, Mapping):
        if "name" not in spec:
            raise InterventionError(f"an intervention mapping needs a 'name' key, got keys {sorted(spec)}")
        params = {key: value for key, value in spec.items() if key != "name"}
        name = spec["name"]
    else:
        raise InterventionError(
            f"an intervention must be an Intervention, a name or a mapping with 'name', got {spec!r}"
        )
    if name not in _REGISTRY:
        raise InterventionError(f"unknown intervention {name!r}; known interventions: {sorted(_REGISTRY)}")
    return _REGISTRY[name](**params)


def make_interventions(specs: Iterable[Intervention | str | Mapping[str, Any]] | None) -> list[Intervention]:
    """Build a list of interventions; each type may appear at most once."""
    if specs is None:
        return []
    if isinstance(specs, (str, Mapping, Intervention)):
        raise InterventionError(f"interventions must be a list, got {specs!r}")
    interventions: list[Intervention] = []
    for index, spec in enumerate(specs):
        try:
            intervention = make_intervention(spec)
        except InterventionError as error:
            raise InterventionError(f"interventions[{index}]: {error}") from None
        if any(type(other) is type(intervention) for other in interventions):
            raise InterventionError(f"interventions[{index}]: {intervention.name!r} is given twice")
        interventions.append(intervention)
    return interventions
