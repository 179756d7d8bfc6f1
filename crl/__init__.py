"""crl: continual reinforcement learning on Stable-Baselines3.

Train SB3 agents on sequences of tasks, with interventions against loss of plasticity.
"""

from crl.algorithms import DQN, PPO, QRDQN, SAC, TQC, ContinualAlgorithm, CrossQ
from crl.continual import learn_continual
from crl.hooks import GradientStep, TrainingHook
from crl.interventions import (
    EWC,
    MAS,
    PFO,
    AdaptiveReplayRatio,
    ContinualBackprop,
    Intervention,
    InterventionError,
    L2Init,
    L2Previous,
    LayerNorm,
    PlasticityInjection,
    ReDo,
    Reset,
    ResetOptimizer,
    ShrinkPerturb,
    WeightDecay,
    make_intervention,
)
from crl.metrics import MetricsConfig
from crl.version import __version__

__all__ = [
    "DQN",
    "EWC",
    "MAS",
    "PFO",
    "PPO",
    "QRDQN",
    "SAC",
    "TQC",
    "AdaptiveReplayRatio",
    "ContinualAlgorithm",
    "ContinualBackprop",
    "CrossQ",
    "GradientStep",
    "Intervention",
    "InterventionError",
    "L2Init",
    "L2Previous",
    "LayerNorm",
    "MetricsConfig",
    "PlasticityInjection",
    "ReDo",
    "Reset",
    "ResetOptimizer",
    "ShrinkPerturb",
    "TrainingHook",
    "WeightDecay",
    "__version__",
    "learn_continual",
    "make_intervention",
]
