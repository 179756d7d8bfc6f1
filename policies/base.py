"""The part every crl policy shares: architecture options and access to hidden features."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, NatureCNN
from stable_baselines3.common.utils import obs_as_tensor

from crl.policies.features import FeatureRecorder, Features, HiddenLayer, hidden_layers
from crl.policies.layers import ArchitectureOptions
from crl.policies.spectral_norm import (
    SpectralNormOption,
    apply_spectral_norm,
    check_spectral_norm_option,
    selected_layers,
    set_power_iteration,
)
from crl.policies.two_hot import TwoHot


class ContinualPolicyMixin:
    """Mixed into SB3 policy classes, before them in the bases.

    Adds the constructor options ``layer_norm``, ``activation`` and ``crelu_halve_width`` (see
    :class:`ArchitectureOptions`), ``spectral_norm`` (see :mod:`crl.policies.spectral_norm`) and
    ``two_hot`` (a categorical value head, see :mod:`crl.policies.two_hot`: a :class:`TwoHot` or a
    mapping ``{"low", "high", "bins"}``), and a uniform view of the networks an algorithm trains:
    :meth:`network_prefixes` names them, :meth:`hidden_layers` lists their hidden layers,
    :meth:`record_features` records their features during any forward pass and
    :meth:`hidden_features` runs them on a batch.

    With the default options the networks are exactly SB3's: same modules, same initialisation.
    """

    architecture: ArchitectureOptions
    spectral_norm: SpectralNormOption
    two_hot: TwoHot | None
    """The support of the categorical value head, or ``None`` for SB3's scalar head."""

    def __init__(
        self,
        *args: Any,
        layer_norm: str | None = None,
        activation: str | None = None,
        crelu_halve_width: bool = False,
        spectral_norm: SpectralNormOption = None,
        two_hot: TwoHot | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ):
        architecture = ArchitectureOptions(
            layer_norm=layer_norm,  # type: ignore[arg-type]
            activation=activation,
            crelu_halve_width=crelu_halve_width,
        )
        if activation is not None:
            derived = architecture.activation_fn(th.nn.ReLU)
            requested = kwargs.get("activation_fn")
            if requested is not None and requested is not derived:
                raise ValueError(
                    f"policy options activation={activation!r} and activation_fn={requested.__name__} "
                    "disagree; pass only one of them"
                )
            kwargs["activation_fn"] = derived
        check_spectral_norm_option(spectral_norm)
        # Set before SB3's constructor, which builds the networks through the overridden factories.
        object.__setattr__(self, "architecture", architecture)
        object.__setattr__(self, "spectral_norm", spectral_norm)
        object.__setattr__(self, "two_hot", None if two_hot is None else TwoHot.make(two_hot))
        self._validate_architecture(architecture, kwargs)
        super().__init__(*args, **kwargs)
        if spectral_norm is not None:
            apply_spectral_norm(self, selected_layers(self, spectral_norm), self.target_networks())

    def _validate_architecture(self, architecture: ArchitectureOptions, kwargs: dict[str, Any]) -> None:
        """Reject option combinations this policy cannot build (overridden per algorithm)."""

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()  # type: ignore[misc]
        data.update(
            layer_norm=self.architecture.layer_norm,
            activation=self.architecture.activation,
            crelu_halve_width=self.architecture.crelu_halve_width,
            spectral_norm=self.spectral_norm,
            two_hot=None if self.two_hot is None else self.two_hot.options(),
        )
        return data

    def set_training_mode(self, mode: bool) -> None:
        super().set_training_mode(mode)  # type: ignore[misc]
        if self.spectral_norm is not None:
            for target in self.target_networks().values():
                set_power_iteration(getattr(self, target), mode)

    def make_features_extractor(self) -> BaseFeaturesExtractor:
        """SB3's features extractor, rewritten for the architecture options when it is a NatureCNN.

        Other extractors (e.g. a flatten layer or a user's own) are returned unchanged.
        """
        extractor: BaseFeaturesExtractor = super().make_features_extractor()  # type: ignore[misc]
        if self.architecture.is_default or not isinstance(extractor, NatureCNN):
            return extractor
        example = th.zeros((1, *self.observation_space.shape))  # type: ignore[attr-defined]
        doubled = self.architecture.rewrite(extractor.cnn, example)
        with th.no_grad():
            flat = extractor.cnn(example)
        if self.architecture.rewrite(extractor.linear, flat, doubled_input=doubled):
            extractor._features_dim *= 2
        return extractor

    def network_prefixes(self) -> dict[str, list[str]]:
        """Network name -> dotted paths of the submodules it is made of, input side first."""
        raise NotImplementedError

    def output_layers(self) -> dict[str, list[str]]:
        """Network name -> dotted paths of its output layers when they lie outside (or at the end of)
        :meth:`network_prefixes` and read the last hidden layer in parallel (e.g. SAC's ``mu`` and
        ``log_std``). Networks not listed end in the last layer found under their prefixes."""
        return {}

    def target_networks(self) -> dict[str, str]:
        """Attribute of a trained network -> attribute of its target copy (e.g. ``q_net`` -> ``q_net_target``)."""
        return {}

    def hidden_layers(self, networks: list[str] | None = None) -> dict[str, list[HiddenLayer]]:
        """Hidden layers of the trained networks (all of them, or the named ones)."""
        prefixes = self.network_prefixes()
        unknown = set(networks or []) - set(prefixes)
        if unknown:
            raise ValueError(f"unknown network(s) {sorted(unknown)}; this policy trains {sorted(prefixes)}")
        names = networks if networks is not None else list(prefixes)
        return {name: hidden_layers(self, prefixes[name]) for name in names}  # type: ignore[arg-type]

    def record_features(self, networks: list[str] | None = None) -> FeatureRecorder:
        """A context manager recording hidden features of the networks during forward passes."""
        return FeatureRecorder(self.hidden_layers(networks))

    def hidden_features(
        self, observations: th.Tensor | np.ndarray, actions: th.Tensor | np.ndarray | None = None
    ) -> Features:
        """Pre- and post-activation features of every hidden layer of every trained network.

        Runs under ``torch.no_grad()`` and leaves the networks as they were.

        :param observations: a batch of observations, as stored in a replay or rollout buffer
        :param actions: actions for networks that take them (SAC's critics); by default the actor's
            deterministic actions
        :return: network name -> hidden layer name -> :class:`LayerFeatures`
        """
        obs = self._to_tensor(observations)
        act = None if actions is None else self._to_tensor(actions)
        with th.no_grad(), self.record_features() as recorder:
            self._run_networks(obs, act)
        return recorder.features()

    def _run_networks(self, observations: th.Tensor, actions: th.Tensor | None) -> None:
        """One forward pass through every trained network."""
        raise NotImplementedError

    def _to_tensor(self, array: th.Tensor | np.ndarray) -> th.Tensor:
        if isinstance(array, th.Tensor):
            return array.to(self.device)  # type: ignore[attr-defined]
        return obs_as_tensor(array, self.device)  # type: ignore[attr-defined,return-value]
