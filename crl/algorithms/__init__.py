"""crl's algorithms: SB3's, with interventions and hooks."""

from crl.algorithms.base import ContinualAlgorithm
from crl.algorithms.dqn import DQN
from crl.algorithms.ppo import PPO
from crl.algorithms.sac import SAC

__all__ = ["DQN", "PPO", "SAC", "ContinualAlgorithm"]
