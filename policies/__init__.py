"""Intervention-aware policies for crl's algorithms (installed as ``crl.policies``).

Each policy is SB3's (sb3-contrib's for QR-DQN and TQC), plus the options ``layer_norm``
(``"pre"``/``"post"``) and ``activation`` (including ``"crelu"`` and ``"fourier"``), and a uniform
way to read every hidden layer's features of every trained network:
:meth:`~crl.policies.base.ContinualPolicyMixin.hidden_features`.
"""

from crl.policies.actor_critic import ActorCriticCnnPolicy, ActorCriticPolicy, MultiInputActorCriticPolicy
from crl.policies.base import ContinualPolicyMixin
from crl.policies.dqn import CnnPolicy as DQNCnnPolicy
from crl.policies.dqn import DQNPolicy
from crl.policies.dqn import MultiInputPolicy as DQNMultiInputPolicy
from crl.policies.features import FeatureRecorder, Features, HiddenLayer, LayerFeatures
from crl.policies.layers import ACTIVATIONS, ArchitectureOptions, ConcatenatedActivation, CReLU, Fourier
from crl.policies.multihead import (
    MultiHeadActor,
    MultiHeadActorCriticPolicy,
    MultiHeadContinuousCritic,
    MultiHeadCrossQPolicy,
    MultiHeadDQNPolicy,
    MultiHeadQRDQNPolicy,
    MultiHeadSACPolicy,
    MultiHeadTQCPolicy,
)
from crl.policies.qrdqn import CnnPolicy as QRDQNCnnPolicy
from crl.policies.qrdqn import MultiInputPolicy as QRDQNMultiInputPolicy
from crl.policies.qrdqn import QRDQNPolicy
from crl.policies.sac import CnnPolicy as SACCnnPolicy
from crl.policies.sac import MultiInputPolicy as SACMultiInputPolicy
from crl.policies.sac import SACPolicy
from crl.policies.tqc import CnnPolicy as TQCCnnPolicy
from crl.policies.tqc import MultiInputPolicy as TQCMultiInputPolicy
from crl.policies.tqc import TQCPolicy

__all__ = [
    "ACTIVATIONS",
    "ActorCriticCnnPolicy",
    "ActorCriticPolicy",
    "ArchitectureOptions",
    "CReLU",
    "ConcatenatedActivation",
    "ContinualPolicyMixin",
    "DQNCnnPolicy",
    "DQNMultiInputPolicy",
    "DQNPolicy",
    "FeatureRecorder",
    "Features",
    "Fourier",
    "HiddenLayer",
    "LayerFeatures",
    "MultiHeadActor",
    "MultiHeadActorCriticPolicy",
    "MultiHeadContinuousCritic",
    "MultiHeadCrossQPolicy",
    "MultiHeadDQNPolicy",
    "MultiHeadQRDQNPolicy",
    "MultiHeadSACPolicy",
    "MultiHeadTQCPolicy",
    "MultiInputActorCriticPolicy",
    "QRDQNCnnPolicy",
    "QRDQNMultiInputPolicy",
    "QRDQNPolicy",
    "SACCnnPolicy",
    "SACMultiInputPolicy",
    "SACPolicy",
    "TQCCnnPolicy",
    "TQCMultiInputPolicy",
    "TQCPolicy",
]
