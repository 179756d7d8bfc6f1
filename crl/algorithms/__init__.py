"""crl's algorithms: SB3's and sb3-contrib's, with interventions and hooks."""

from crl.algorithms.base import ContinualAlgorithm
from crl.algorithms.crossq import CrossQ
from crl.algorithms.dqn import DQN
from crl.algorithms.ppo import PPO
from crl.algorithms.qrdqn import QRDQN
from crl.algorithms.sac import SAC
from crl.algorithms.tqc import TQC

__all__ = ["DQN", "PPO", "QRDQN", "SAC", "TQC", "ContinualAlgorithm", "CrossQ"]
