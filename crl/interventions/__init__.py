"""Interventions against loss of plasticity, composable and constructible by name.

>>> from crl.interventions import LayerNorm, make_intervention
>>> make_intervention({"name": "layer_norm", "placement": "post"})
LayerNorm(placement='post')
"""

from crl.interventions.adaptive_replay_ratio import AdaptiveReplayRatio
from crl.interventions.agem import AGEM
from crl.interventions.augmentation import RandomShift
from crl.interventions.base import (
    Intervention,
    InterventionError,
    make_intervention,
    make_interventions,
    registered_interventions,
)
from crl.interventions.clonex import ClonEx
from crl.interventions.consolidation import EWC, MAS, Consolidation, L2Previous
from crl.interventions.continual_backprop import ContinualBackprop
from crl.interventions.layer_norm import LayerNorm
from crl.interventions.nap import NormalizeAndProject
from crl.interventions.packnet import PackNet
from crl.interventions.parseval import Parseval
from crl.interventions.pfo import PFO
from crl.interventions.plasticity_injection import PlasticityInjection
from crl.interventions.redo import ReDo
from crl.interventions.regrama import ReGraMa
from crl.interventions.regularizers import L2Init, WeightDecay
from crl.interventions.resets import Reset, ResetOptimizer, ShrinkPerturb
from crl.interventions.sam import SAM
from crl.interventions.schedule import ScheduledIntervention
from crl.interventions.trac import TRAC
from crl.interventions.weight_clipping import WeightClipping

__all__ = [
    "AGEM",
    "EWC",
    "MAS",
    "PFO",
    "SAM",
    "TRAC",
    "AdaptiveReplayRatio",
    "ClonEx",
    "Consolidation",
    "ContinualBackprop",
    "Intervention",
    "InterventionError",
    "L2Init",
    "L2Previous",
    "LayerNorm",
    "NormalizeAndProject",
    "PackNet",
    "Parseval",
    "PlasticityInjection",
    "RandomShift",
    "ReDo",
    "ReGraMa",
    "Reset",
    "ResetOptimizer",
    "ScheduledIntervention",
    "ShrinkPerturb",
    "WeightClipping",
    "WeightDecay",
    "make_intervention",
    "make_interventions",
    "registered_interventions",
]
