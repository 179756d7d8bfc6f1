"""The part every crl policy shares: architecture options and access to hidden features."""

from __future__ import annotations

import copy
import warnings
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import BaseModel
from stable_baselines3.common.preprocessing import is_image_space, preprocess_obs
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, CombinedExtractor, NatureCNN
from stable_baselines3.common.type_aliases import PyTorchObs
from stable_baselines3.common.utils import obs_as_tensor
from torch import nn

from crl.optim import policy_optimizers
from crl.policies.direct_forward import Step, kept_direct_layers, run_layers
from crl.policies.features import FeatureRecorder, Features, HiddenLayer, hidden_layers
from crl.policies.layers import ACTIVATION_TYPES, ArchitectureOptions
from crl.policies.module_tree import SubmoduleRegistrations
from crl.policies.spectral_norm import (
    SpectralNormOption,
    apply_spectral_norm,
    check_spectral_norm_option,
    selected_layers,
    set_power_iteration,
)
from crl.policies.two_hot import TwoHot

_hidden_layers_cache: weakref.WeakKeyDictionary[Any, dict[Any, dict[str, list[HiddenLayer]]]] = (
    weakref.WeakKeyDictionary()
)
"""Policy -> its hidden layers per (networks, submodule-registration count): see ``hidden_layers``."""

BoxKind = Literal["image", "box"] | None
"""What ``preprocess_obs`` does with a space: divide an image ``Box``, convert a plain ``Box``, or other."""


def normalized_images(obs: th.Tensor) -> th.Tensor:
    """``obs.float() / 255.0``, SB3's normalisation of images; a uint8 batch is divided in place of its float copy.

    The copy is new, so dividing it in place computes the same bits with the same strides
    (``tests/test_hot_path.py``) and allocates one tensor where the division allocated a second. For
    DQN's batch of 32 Atari frames inside a training run that is 0.30 to 0.35 ms per division against
    1.8 ms, and against 0.55 to 0.95 ms for ``th.div(uint8_batch, 255.0)``, whose casting division
    was slower in context than in isolation (medians over 750 divisions of a 2,500-step run). A
    float batch is the caller's tensor and is divided out of place, as SB3 does.
    """
    if obs.dtype is th.uint8:
        return obs.float().div_(255.0)
    return obs.float() / 255.0


def array_as_tensor(array: np.ndarray, device: th.device) -> th.Tensor:
    """``th.as_tensor(array, device=device)``; on the CPU, ``th.from_numpy(array)``, which it ends in.

    Both share the array's memory, warn about a read-only array and reject the same dtypes and byte
    orders; ``as_tensor`` first parses its arguments and the device: 2.8 against 0.9 us per call for
    the observation of each environment step.
    """
    if device.type == "cpu":
        return th.from_numpy(array)
    return th.as_tensor(array, device=device)


def _switches_on_its_own(module: nn.Module) -> bool:
    """Whether setting ``module``'s mode may do more than set its ``training`` flag.

    That is the case when its class brings its own ``train()`` or ``__setattr__``, or a
    ``set_training_mode`` that is neither SB3's nor crl's (those only switch modes).
    """
    own_train = type(module).train not in (nn.Module.train, ContinualPolicyMixin.train)
    own_setattr = type(module).__setattr__ is not nn.Module.__setattr__
    switch = getattr(type(module), "set_training_mode", None)
    own_switch = switch is not None and not switch.__module__.startswith(("stable_baselines3.", "crl."))
    return own_train or own_setattr or own_switch


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
    _training_mode: bool | None = None
    """The mode of the last :meth:`set_training_mode` (``None``: unknown, the next call walks)."""
    _registrations_at_switch: int = -1
    """:class:`SubmoduleRegistrations` count at the last :meth:`set_training_mode`."""
    _switched_modules: list[nn.Module] | None = None
    """:meth:`_modules_switched_by_sb3` at the last change of the module tree."""
    _device: th.device | None = None
    """:attr:`device` once looked up (``None``: look it up), forgotten when the policy is moved."""

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
        architecture.check_activation_fn(kwargs.get("activation_fn"))
        check_spectral_norm_option(spectral_norm)
        # Set before SB3's constructor, which builds the networks through the overridden factories.
        object.__setattr__(self, "architecture", architecture)
        object.__setattr__(self, "spectral_norm", spectral_norm)
        object.__setattr__(self, "two_hot", None if two_hot is None else TwoHot.make(two_hot))
        self._validate_architecture(architecture, kwargs)
        super().__init__(*args, **kwargs)
        if spectral_norm is not None:
            layers = selected_layers(self, spectral_norm)
            apply_spectral_norm(self, layers, self.target_networks(), self.task_heads())

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
        # SB3 leaves it out for PPO and SAC, so a copy built from these (a reset's fresh weights, the
        # plasticity probe's fresh network) would otherwise get the default extractor sharing.
        if hasattr(self, "share_features_extractor"):
            data["share_features_extractor"] = self.share_features_extractor
        return data

    def set_training_mode(self, mode: bool) -> None:
        """SB3's mode switch, skipped when the policy is already in ``mode``, and flattened.

        SB3 calls this on every ``predict()``, i.e. every environment step of DQN and SAC, and each
        call walks every submodule (``nn.Module.train``): 14 % of DQN's wall time on CartPole. The
        switch now happens only when the mode changes, or when the module tree may have changed since
        the last switch (a submodule was registered somewhere), or after the policy's own
        ``train()``/``eval()``. A submodule switched on its own (``policy.q_net.eval()``) is not
        seen: switch the policy instead.

        A switch that does happen (twice per ``train()`` call of DQN and SAC) sets the ``training``
        flag of the modules SB3's walk would reach, listed when the tree changed
        (:meth:`_modules_switched_by_sb3`): 6 instead of 31 us for DQN's MLP, 10 instead
        of 81 us for SAC's (``bench/hot_path.py``).
        """
        tree_changed = self._registrations_at_switch != SubmoduleRegistrations.count
        if mode == self._training_mode and not tree_changed:
            return
        if tree_changed:
            self._switched_modules = self._modules_switched_by_sb3()
        if self._switched_modules is None:
            super().set_training_mode(mode)  # type: ignore[misc]
        else:
            for module in self._switched_modules:
                # What nn.Module.__setattr__ ends in for a flag, without its checks (2 us per module)
                object.__setattr__(module, "training", mode)
        if self.spectral_norm is not None:
            for target in self.target_networks().values():
                set_power_iteration(getattr(self, target), mode)
        self._training_mode = mode
        self._registrations_at_switch = SubmoduleRegistrations.count

    def _modules_switched_by_sb3(self) -> list[nn.Module] | None:
        """The modules whose ``training`` flag SB3's ``set_training_mode`` sets (``None``: not known).

        Which modules those are depends on the policy class (SAC's and DQN's leave the target
        networks in eval mode), so they are found by running SB3's switch off and on and keeping the
        modules that followed. That is only sound when the walk does nothing but set flags: a module
        (or a policy subclass) with its own ``train()``, ``__setattr__`` or ``set_training_mode``,
        which may do more, leaves every switch to SB3's code.
        """
        modules = list(self.modules())  # type: ignore[attr-defined]
        if any(_switches_on_its_own(module) for module in modules):
            return None
        super().set_training_mode(False)  # type: ignore[misc]
        was_off = [not module.training for module in modules]
        super().set_training_mode(True)  # type: ignore[misc]
        return [module for module, off in zip(modules, was_off, strict=True) if off and module.training]

    def train(self, mode: bool = True) -> Any:
        # A direct train()/eval() may leave submodules in another mode than the last set_training_mode.
        self._training_mode = None
        return super().train(mode)  # type: ignore[misc]

    @property
    def device(self) -> th.device:
        """SB3's device (that of the first parameter), remembered until the policy is moved or cast.

        SB3 looks it up through a ``parameters()`` generator on every ``predict()`` (2 % of DQN's
        wall time on CartPole).
        """
        if self._device is None:
            self._device = super().device  # type: ignore[misc]
        return self._device

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        # Behind to(), cpu(), cuda(), float(), ...: the parameters may now live elsewhere.
        self._device = None
        return super()._apply(fn, recurse)  # type: ignore[misc]

    def obs_to_tensor(self, observation: np.ndarray | dict[str, np.ndarray]) -> tuple[PyTorchObs, bool]:
        """SB3's conversion, with a short path for the common case: an array of a ``Box`` space.

        SB3 re-derives the space's kind and looks up its shape check on every call (6 % of DQN's
        wall time on CartPole); here an array whose shape is the space's, with or without a batch
        dimension, goes straight to a tensor. As in SB3, a non-image observation is copied first
        (a network that writes into its input must not change the caller's array); images are not.
        Anything else (dicts, discrete spaces, channel-last images, bad shapes) takes SB3's path.
        """
        space = self.observation_space  # type: ignore[attr-defined]
        if type(observation) is np.ndarray and type(space) is spaces.Box:
            if observation.shape != space.shape and observation.shape[1:] != space.shape:
                return super().obs_to_tensor(observation)  # type: ignore[misc,no-any-return]
            vectorized = observation.shape != space.shape
            # SB3's reshape, also of a batch to its own shape: it can change the strides of length-1
            # axes (a transposed batch of one image), and with them the path a convolution takes.
            observation = observation.reshape((-1, *space.shape))
            if self._box_kind(space) != "image":
                observation = np.array(observation)
            return array_as_tensor(observation, self.device), vectorized  # type: ignore[attr-defined]
        return super().obs_to_tensor(observation)  # type: ignore[misc,no-any-return]

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """SB3's ``predict``, with gradients switched off by torch's switch itself rather than a ``no_grad`` object.

        DQN and SAC act through this at every environment step. ``with th.no_grad()`` builds a context
        manager whose ``__enter__`` and ``__exit__`` build a ``set_grad_enabled`` object each, all to call
        ``torch._C._set_grad_enabled`` twice: 2.2 against 0.3 us per call (the whole acting call is a
        row of ``bench/hot_path.py``). The rest is SB3's code unchanged.
        """
        self.set_training_mode(False)
        # SB3's check for the Gym API's `(obs, info)` passed by mistake
        if isinstance(observation, tuple) and len(observation) == 2 and isinstance(observation[1], dict):
            return super().predict(observation, state, episode_start, deterministic)  # type: ignore[misc,no-any-return]

        obs_tensor, vectorized_env = self.obs_to_tensor(observation)
        grad_enabled = th.is_grad_enabled()
        th._C._set_grad_enabled(False)
        try:
            actions = self._predict(obs_tensor, deterministic=deterministic)  # type: ignore[attr-defined]
        finally:
            th._C._set_grad_enabled(grad_enabled)
        actions = actions.cpu().numpy().reshape((-1, *self.action_space.shape))  # type: ignore[attr-defined]

        action_space = self.action_space  # type: ignore[attr-defined]
        if isinstance(action_space, spaces.Box):
            if self.squash_output:  # type: ignore[attr-defined]
                actions = self.unscale_action(actions)  # type: ignore[attr-defined]
            else:
                actions = np.clip(actions, action_space.low, action_space.high)
        if not vectorized_env:
            actions = actions.squeeze(axis=0)
        return actions, state

    def preprocessed(self, obs: PyTorchObs, model: BaseModel) -> PyTorchObs:
        """SB3's ``preprocess_obs(obs, model.observation_space, model.normalize_images)``: ``model``'s input.

        For a ``Box`` space, the same tensor made cheaper: the space's kind is remembered (SB3 checks
        it at every call, comparing the bounds of every pixel for images: 16 us for Atari's frames),
        and uint8 frames are normalised in one division (:func:`normalized_images`). crl's direct
        forward passes start here.
        """
        space = model.observation_space
        kind = self._box_kind(space)
        if kind is None or type(obs) is not th.Tensor:
            return preprocess_obs(obs, space, normalize_images=model.normalize_images)
        if kind == "image" and model.normalize_images:
            return normalized_images(obs)
        return obs.float()

    def direct_pass(
        self, obs: PyTorchObs, network: BaseModel, kept_in: str, layers_of: Callable[[nn.Module], list[Step] | None]
    ) -> Any | None:
        """``network``'s forward pass on ``obs`` through its layers' ``forward``; ``None`` when that is not exact.

        For a network whose forward pass is its layers in turn on :meth:`preprocessed` (DQN's Q-network,
        QR-DQN's quantile network). Not exact: a network ``layers_of`` does not know (``None``), hooks on
        its modules or globally, compilation or tracing (see :class:`~crl.policies.direct_forward.DirectLayers`).

        :param kept_in: the policy attribute that keeps the network's :class:`~crl.policies.direct_forward.DirectLayers`
        :param layers_of: the layers that compute the network's forward pass (``None`` if it has another)
        """
        layers = kept_direct_layers(self, kept_in, layers_of)(network)
        if layers is None:
            return None
        # A dict for MultiInputPolicy: its CombinedExtractor is the first layer
        return run_layers(layers, self.preprocessed(obs, network))

    def _box_kind(self, space: spaces.Space) -> BoxKind:
        """``"image"`` or ``"box"`` for a ``Box`` space (SB3's ``is_image_space``), ``None`` for another space.

        Remembered for the last space asked about: a policy's observation space is fixed.
        """
        checked: tuple[spaces.Space, BoxKind] | None = self.__dict__.get("_box_kind_checked")
        if checked is None or checked[0] is not space:
            kind: BoxKind = None
            if type(space) is spaces.Box:
                kind = "image" if is_image_space(space) else "box"
            checked = self.__dict__["_box_kind_checked"] = (space, kind)
        return checked[1]

    def make_features_extractor(self) -> BaseFeaturesExtractor:
        """SB3's features extractor, with each NatureCNN in it rewritten for the architecture options.

        That is the extractor itself, or each image key's branch of a ``CombinedExtractor`` (dict
        observations), whose output width then follows its branches'. Other extractors (a flatten
        layer, a user's own) are returned unchanged.
        """
        extractor: BaseFeaturesExtractor = super().make_features_extractor()  # type: ignore[misc]
        if self.architecture.is_default:
            return extractor
        if isinstance(extractor, NatureCNN):
            self._rewrite_nature_cnn(extractor, self.observation_space)  # type: ignore[attr-defined]
        elif isinstance(extractor, CombinedExtractor):
            for key, branch in extractor.extractors.items():
                if isinstance(branch, NatureCNN):
                    width = branch.features_dim
                    self._rewrite_nature_cnn(branch, self.observation_space[key])  # type: ignore[attr-defined]
                    extractor._features_dim += branch.features_dim - width
        else:
            self._warn_unchanged(extractor)
        return extractor

    def _warn_unchanged(self, extractor: BaseFeaturesExtractor) -> None:
        """Say that a user's extractor keeps its activations: its ``forward`` is its own, so crl cannot
        put a LayerNorm, a CReLU or a Fourier activation into it (the MLPs after it are rewritten)."""
        activations = [name for name, module in extractor.named_modules() if isinstance(module, ACTIVATION_TYPES)]
        if activations:
            options = {
                "layer_norm": self.architecture.layer_norm,
                "activation": self.architecture.activation if self.architecture.concatenated else None,
            }
            given = ", ".join(f"{key}={value!r}" for key, value in options.items() if value is not None)
            warnings.warn(
                f"{given} leaves features extractor {type(extractor).__name__} as it is (its activations "
                f"{activations} are not rewritten; the networks after it are): build the extractor with the "
                "layers it should have",
                UserWarning,
                stacklevel=2,
            )

    def _rewrite_nature_cnn(self, extractor: NatureCNN, space: spaces.Space) -> None:
        """Apply the architecture options to a NatureCNN for ``space`` (its features double behind a CReLU
        or a Fourier activation)."""
        example = th.zeros((1, *space.shape))  # type: ignore[misc]
        doubled = self.architecture.rewrite(extractor.cnn, example)
        with th.no_grad():
            flat = extractor.cnn(example)
        if self.architecture.rewrite(extractor.linear, flat, doubled_input=doubled):
            extractor._features_dim *= 2

    def network_prefixes(self) -> dict[str, list[str]]:
        """Network name -> dotted paths of the submodules it is made of, input side first."""
        raise NotImplementedError

    def output_layers(self) -> dict[str, list[str]]:
        """Network name -> dotted paths of its output layers when they lie outside (or at the end of)
        :meth:`network_prefixes` and read the last hidden layer in parallel (e.g. SAC's ``mu`` and
        ``log_std``). Networks not listed end in the last layer found under their prefixes."""
        return {}

    def unit_recycling_problem(self) -> str | None:
        """Why recycling single units (ReDo, continual backprop) would change this policy's outputs, or ``None``.

        Recycling zeroes a unit's outgoing weights so that the outputs stay as they are; a policy whose
        layers turn a silent unit into a non-zero signal says so here.
        """
        return None

    def task_heads(self) -> dict[str, int]:
        """Path of an output layer -> the number of task heads stacked along its outputs (multi-head
        policies, :mod:`crl.policies.multihead`); ``spectral_norm`` normalises each head on its own."""
        return {}

    def target_networks(self) -> dict[str, str]:
        """Attribute of a trained network -> attribute of its target copy (e.g. ``q_net`` -> ``q_net_target``)."""
        return {}

    def network_copy(self) -> Any:
        """A deep copy of the policy as it is now, without its optimizers (the copy's are ``None``).

        Unlike a policy built from the constructor arguments, the copy has the modules that
        interventions put in after construction (a plasticity injection's heads) and their frozen
        parameters. SB3's action distributions keep the tensors of the last forward pass, which
        ``copy.deepcopy`` refuses after a pass with gradients: the copy gets shallow copies of them,
        whose tensors its own next pass replaces.
        """
        memo: dict[int, Any] = {id(optimizer): None for optimizer in policy_optimizers(self)}  # type: ignore[arg-type]
        for module in self.modules():  # type: ignore[attr-defined]
            for value in vars(module).values():
                if isinstance(value, Distribution):
                    memo[id(value)] = copy.copy(value)
        return copy.deepcopy(self, memo)

    def hidden_layers(self, networks: list[str] | None = None) -> dict[str, list[HiddenLayer]]:
        """Hidden layers of the trained networks (all of them, or the named ones).

        Found again only when a submodule was registered since (the layers can change only then):
        recording features at every gradient step walked the networks' modules each time.
        """
        key = (None if networks is None else tuple(networks), SubmoduleRegistrations.count)
        cache = _hidden_layers_cache.setdefault(self, {})
        if key not in cache:
            cache.clear()  # entries of an older count are stale
            cache[key] = self._find_hidden_layers(networks)
        return {name: list(layers) for name, layers in cache[key].items()}

    def _find_hidden_layers(self, networks: list[str] | None) -> dict[str, list[HiddenLayer]]:
        prefixes = self.network_prefixes()
        unknown = set(networks or []) - set(prefixes)
        if unknown:
            raise ValueError(f"unknown network(s) {sorted(unknown)}; this policy trains {sorted(prefixes)}")
        names = networks if networks is not None else list(prefixes)
        outputs = self.output_layers()
        return {name: hidden_layers(self, prefixes[name], outputs.get(name, [])) for name in names}  # type: ignore[arg-type]

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
            self.run_networks(obs, act)
        return recorder.features()

    def run_networks(self, observations: th.Tensor, actions: th.Tensor | None) -> None:
        """One forward pass through every trained network, for a :meth:`record_features` recorder
        (the metric suite, ReDo's check, PFO's frozen copy). A policy class for a new algorithm
        implements it; a network shared by several (PPO's features extractor) runs once.

        :param observations: a batch of observations on the policy's device
        :param actions: actions for networks that take them (SAC's critics); ``None`` lets the
            policy choose (the actor's deterministic actions)
        """
        raise NotImplementedError

    def _to_tensor(self, array: th.Tensor | np.ndarray) -> th.Tensor:
        if isinstance(array, th.Tensor):
            return array.to(self.device)  # type: ignore[attr-defined]
        return obs_as_tensor(array, self.device)  # type: ignore[attr-defined,return-value]
