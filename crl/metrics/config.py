"""The settings of plasticity monitoring: what ``metrics=`` of ``crl.DQN/PPO/SAC/QRDQN/TQC`` accepts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError

from crl.config.errors import validation_message
from crl.metrics.functions import DORMANT_TAU, GRAMA_TAU


class MetricsError(ValueError):
    """Metrics were asked for with an unknown key or an invalid value."""


class MetricsConfig(BaseModel):
    """What the metrics monitor computes and how often (SPEC.md §1).

    Every ``every`` environment steps, at the end of the next ``train()`` call, the monitor computes
    the feature, weight and gradient metrics on a fixed probe batch. The three expensive metrics have
    their own cadences, off by default; they are checked at those same measurements, so they run at
    the first measurement at or after each multiple of their cadence.

    Construct it directly (``MetricsConfig(every=5000)``) or pass a mapping as ``metrics=`` of the
    algorithms (``metrics={"every": 5000}``); an unknown key or a bad value raises :class:`MetricsError`.

    :param every: environment steps between two measurements. The default keeps the wall-time
        overhead of the suite under 5 % for DQN on Atari with a NatureCNN (see ``docs/metrics.md``);
        small MLPs can afford far shorter cadences.
    :param probe_batch_size: number of samples of the fixed probe batch (fewer only if the buffer can
        never hold more); the first measurement waits until the replay buffer holds them
    :param dormant_tau: threshold ``tau`` of ``dormant_ratio`` on the normalised unit score
    :param plasticity_probe_every: environment steps between two runs of ``plasticity_probe``;
        ``None`` switches it off
    :param plasticity_probe_epochs: budget of the plasticity probe, in epochs over the probe batch
    :param plasticity_probe_batch_size: minibatch size of the plasticity probe; ``None``: the
        algorithm's ``batch_size``
    :param hessian_every: environment steps between two runs of ``hessian_top_eig``; ``None``
        switches it off
    :param hessian_iterations: power-iteration steps of ``hessian_top_eig``
    :param grama_every: environment steps between two runs of ``grama_ratio`` (one backward pass of
        the training losses on the probe batch); ``None`` switches it off
    :param grama_tau: threshold of ``grama_ratio`` on GraMa's normalised gradient score
    :param seed: seed of the metrics' private random streams (probe batch, fresh network, power
        iteration); ``None``: the algorithm's seed (0 when it has none)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    every: PositiveInt = 10_000
    probe_batch_size: PositiveInt = 1024
    dormant_tau: float = Field(default=DORMANT_TAU, ge=0.0)
    plasticity_probe_every: PositiveInt | None = None
    plasticity_probe_epochs: PositiveInt = 1
    plasticity_probe_batch_size: PositiveInt | None = None
    hessian_every: PositiveInt | None = None
    hessian_iterations: PositiveInt = 20
    grama_every: PositiveInt | None = None
    grama_tau: float = Field(default=GRAMA_TAU, ge=0.0)
    seed: int | None = Field(default=None, ge=0)

    def __init__(self, **settings: Any) -> None:
        unknown = sorted(set(settings) - set(type(self).model_fields))
        if unknown:
            allowed = ", ".join(f"{key}: {text}" for key, text in self.allowed().items())
            raise MetricsError(f"metrics has no key(s) {unknown}; allowed keys: {allowed}")
        try:
            super().__init__(**settings)
        except ValidationError as error:
            problems = []
            for item in error.errors():
                key = str(item["loc"][0])
                message = validation_message(item)
                problems.append(f"metrics key {key}={item.get('input')!r}: {message} (allowed: {self.allowed()[key]})")
            raise MetricsError("; ".join(problems)) from None

    @classmethod
    def allowed(cls) -> dict[str, str]:
        """Key -> ``type = default`` for every setting, e.g. ``"every": "int > 0 = 10000"``."""
        properties = cls.model_json_schema()["properties"]
        return {
            key: " or ".join(_type_text(option) for option in properties[key].get("anyOf", [properties[key]]))
            + f" = {info.default!r}"
            for key, info in cls.model_fields.items()
        }

    @classmethod
    def make(cls, spec: MetricsConfig | Mapping[str, Any]) -> MetricsConfig:
        """A config from an instance or a mapping of settings."""
        if isinstance(spec, MetricsConfig):
            return spec
        if not isinstance(spec, Mapping):
            raise MetricsError(f"metrics must be a MetricsConfig, a mapping of settings or None, got {spec!r}")
        return cls(**spec)


_JSON_TYPES = {"integer": "int", "number": "float", "null": "None"}


def _type_text(schema: Mapping[str, Any]) -> str:
    """``int > 0`` from the JSON schema of one allowed type."""
    text = _JSON_TYPES.get(schema["type"], schema["type"])
    if "exclusiveMinimum" in schema:
        text += f" > {schema['exclusiveMinimum']}"
    if "minimum" in schema:
        text += f" >= {schema['minimum']}"
    return text
