"""LayerNorm in every hidden layer (Lyle et al. 2023, 2024)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from crl.interventions.base import Intervention, InterventionError
from crl.policies.base import ContinualPolicyMixin

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm


class LayerNorm(Intervention):
    """Insert LayerNorm in every hidden layer of every trained network.

    Lyle et al. 2023 ("Understanding plasticity in neural networks") and 2024 ("Disentangling the
    causes of plasticity loss") find LayerNorm, especially with weight decay, preserves plasticity.
    Linear features are normalised over units; convolutional features over (C, H, W).

    Works through the crl policies' ``layer_norm`` option, so it needs a crl policy (the default
    ``"MlpPolicy"``/``"CnnPolicy"`` of ``crl.DQN``/``PPO``/``SAC``/``QRDQN``/``TQC``).

    :param placement: ``"pre"``: LayerNorm between the linear map and the activation (the papers'
        placement); ``"post"``: after the activation.
    """

    name: ClassVar[str] = "layer_norm"

    placement: Literal["pre", "post"] = "pre"

    def configure_policy(self, algo: BaseAlgorithm, policy_kwargs: dict[str, Any]) -> None:
        policy_class = algo.policy_class  # type: ignore[attr-defined]
        if not issubclass(policy_class, ContinualPolicyMixin):
            raise InterventionError(
                f"intervention 'layer_norm' needs a policy with the 'layer_norm' option, but policy="
                f"{policy_class.__module__}.{policy_class.__qualname__} has none; use one of "
                f"{sorted(algo.policy_aliases)} or a subclass of crl.policies.ContinualPolicyMixin"
            )
        current = policy_kwargs.get("layer_norm")
        if current not in (None, self.placement):
            raise InterventionError(
                f"intervention 'layer_norm' (placement={self.placement!r}) conflicts with "
                f"policy_kwargs['layer_norm']={current!r}; give the placement in one place"
            )
        policy_kwargs["layer_norm"] = self.placement
