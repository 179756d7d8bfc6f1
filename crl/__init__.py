"""crl: continual reinforcement learning on Stable-Baselines3.

Train SB3 agents on sequences of tasks, with interventions against loss of plasticity.
"""

from crl.algorithms import DQN, PPO, SAC, ContinualAlgorithm
from crl.continual import learn_continual
from crl.hooks import GradientStep, TrainingHook
from crl.interventions import Intervention, InterventionError, LayerNorm, make_intervention
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
    "TrainingHook",
    "__version__",
    "learn_continual",
    "make_intervention",
]
