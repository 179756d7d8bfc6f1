"""Interventions against loss of plasticity, composable and constructible by name.

>>> from crl.interventions import LayerNorm, make_intervention
>>> make_intervention({"name": "layer_norm", "placement": "post"})
LayerNorm(placement='post')
"""

from crl.interventions.base import (
    Intervention,
    InterventionError,
    make_intervention,
    make_interventions,
    registered_interventions,
)
from crl.interventions.layer_norm import LayerNorm

__all__ = [
    "Intervention",
    "InterventionError",
    "LayerNorm",
    "make_intervention",
    "make_interventions",
    "registered_interventions",
]
