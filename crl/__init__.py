"""crl: continual reinforcement learning on Stable-Baselines3.

Train SB3 agents on sequences of tasks, with interventions against loss of plasticity.
"""

from crl.algorithms import DQN, PPO, SAC, ContinualAlgorithm
from crl.hooks import GradientStep, TrainingHook
from crl.interventions import Intervention, InterventionError, LayerNorm, make_intervention
from crl.metrics import MetricsConfig
from crl.version import __version__

__all__ = [
    "DQN",
    "PPO",
    "SAC",
    "ContinualAlgorithm",
    "GradientStep",
    "Intervention",
    "InterventionError",
    "LayerNorm",
    "MetricsConfig",
    "TrainingHook",
    "__version__",
    "make_intervention",
]
