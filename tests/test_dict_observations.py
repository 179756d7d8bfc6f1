"""Dict observations (``MultiInputPolicy``): SB3's ``CombinedExtractor`` gives each image key a NatureCNN
branch and flattens each vector key; the architecture options, unit recycling, head resets and the
plasticity probe work through its branches."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from conftest import SpacesEnv
from gymnasium import spaces
from stable_baselines3.common.torch_layers import CombinedExtractor
from torch import nn

import crl
from crl.interventions import ContinualBackprop, InterventionError, PlasticityInjection, ReDo, Reset
from crl.interventions.network import Reinitializer, UnitLayer, unit_layers
from crl.metrics import evaluate
from crl.policies.layers import InjectedHead

FRAMES = spaces.Box(0, 255, (36, 36, 1), np.uint8)
"""The smallest frames a NatureCNN takes."""
BRANCH_WIDTH = 8
"""Each NatureCNN branch's output width (SB3's ``cnn_output_dim``), small to keep the tests fast."""


def _two_images_and_a_vector(action_space: spaces.Space | None = None) -> SpacesEnv:
    """Branches in key order (``spaces.Dict`` sorts them, as SB3 builds them): ``a`` (3 inputs,
    flattened), ``frames`` (NatureCNN), ``more`` (NatureCNN)."""
    keys = {"a": spaces.Box(-1, 1, (3,), np.float32), "frames": FRAMES, "more": FRAMES}
    return SpacesEnv(spaces.Dict(keys), action_space)


def _model(
    algorithm: str, env: gym.Env, interventions: list | None = None, **policy_kwargs
) -> crl.DQN | crl.PPO | crl.SAC:
    """A small model on ``env``: NatureCNN branches :data:`BRANCH_WIDTH` wide, one hidden layer of 16,
    (off-policy) updates from step 16."""
    policy_kwargs = {"features_extractor_kwargs": {"cnn_output_dim": BRANCH_WIDTH}, "net_arch": [16], **policy_kwargs}
    settings = {"PPO": dict(n_steps=32, batch_size=32, n_epochs=1)}.get(
        algorithm, dict(buffer_size=100, learning_starts=16, batch_size=8)
    )
    return getattr(crl, algorithm)(
        "MultiInputPolicy", env, seed=0, policy_kwargs=policy_kwargs, interventions=interventions, **settings
    )


def _observations(model, n: int = 16) -> dict[str, th.Tensor]:
    """A batch of observations as the model stores them (SB3 transposes the frames to channels first)."""
    space = model.observation_space
    space.seed(1)
    samples = [space.sample() for _ in range(n)]
    return {key: th.as_tensor(np.stack([sample[key] for sample in samples])) for key in space}


def _outputs(model, obs: dict[str, th.Tensor]) -> list[th.Tensor]:
    """Every trained network's output on ``obs``."""
    policy = model.policy
    with th.no_grad():
        if isinstance(model, crl.DQN):
            return [policy.q_net(obs)]
        if isinstance(model, crl.PPO):
            return [policy.get_distribution(obs).distribution.logits, policy.predict_values(obs)]
        actions = policy.actor(obs, deterministic=True)
        return [actions, *policy.critic(obs, actions)]


def _extractor(model) -> nn.Module:
    """The features extractor of the acting network."""
    if isinstance(model, crl.DQN):
        return model.policy.q_net.features_extractor
    return model.policy.actor.features_extractor if isinstance(model, crl.SAC) else model.policy.features_extractor


@pytest.mark.parametrize("algorithm", ["DQN", "PPO", "SAC"])
@pytest.mark.parametrize(
    "options", [dict(layer_norm="pre"), dict(activation="crelu"), dict(activation="fourier"), dict(layer_norm="post")]
)
def test_architecture_options_rewrite_every_image_branch_as_a_lone_nature_cnn(algorithm: str, options: dict) -> None:
    actions = spaces.Box(-1, 1, (2,), np.float32) if algorithm == "SAC" else None
    model = _model(algorithm, _two_images_and_a_vector(actions), **options)
    lone = getattr(crl, algorithm)(
        "CnnPolicy",
        SpacesEnv(FRAMES, actions),
        policy_kwargs={"features_extractor_kwargs": {"features_dim": BRANCH_WIDTH}, **options},
        **({"PPO": dict(n_steps=32, batch_size=32)}.get(algorithm, dict(buffer_size=100))),
    )
    extractor, lone_extractor = _extractor(model), _extractor(lone)
    for key in ("frames", "more"):
        assert str(extractor.extractors[key]) == str(lone_extractor)
    doubled = options.get("activation") in ("crelu", "fourier")  # a CReLU/Fourier ends each branch: twice its width
    assert extractor.features_dim == 3 + 2 * lone_extractor.features_dim == 3 + 2 * BRANCH_WIDTH * (1 + doubled)
    model.learn(40)  # the rewritten branches train


def _branch_end(model, key: str, network: str | None = None) -> UnitLayer:
    """The unit layer ending ``key``'s NatureCNN branch in ``network`` (default: in the acting network)."""
    if network is None:
        ends = {_extractor(model).extractors[key].linear[0]}
    else:
        extractors = [m for m in model.policy.modules() if isinstance(m, CombinedExtractor)]
        ends = {extractor.extractors[key].linear[0] for extractor in extractors}
    layers = unit_layers(model.policy, None if network is None else [network])
    return next(layer for layer in layers if layer.incoming in ends)


@pytest.mark.parametrize("activation", ["relu", "crelu", "fourier"])
def test_each_branch_end_is_read_at_its_place_in_the_concatenation(activation: str) -> None:
    model = _model("DQN", _two_images_and_a_vector(), activation=activation)
    halves = 1 if activation == "relu" else 2
    reader = model.policy.q_net.q_net[0]
    frames, more = _branch_end(model, "frames"), _branch_end(model, "more")
    assert (frames.offset, more.offset) == (3, 3 + halves * BRANCH_WIDTH)  # after "a"'s 3 inputs
    assert frames.outgoing == more.outgoing == (reader,)
    expected = [3 + halves * BRANCH_WIDTH + unit + half * BRANCH_WIDTH for unit in (1, 5) for half in range(halves)]
    assert sorted(more.columns(reader, th.tensor([1, 5])).tolist()) == sorted(expected)
    # Inside a branch each layer is read by the branch's next layer, never by another branch's.
    frames_cnn = _extractor(model).extractors["frames"].cnn
    first = next(layer for layer in unit_layers(model.policy) if layer.incoming is frames_cnn[0])
    assert first.offset == 0 and first.outgoing == (next(m for m in list(frames_cnn)[1:] if isinstance(m, nn.Conv2d)),)


def _silence(layer: UnitLayer, units: th.Tensor) -> None:
    """Units that output 0 on every input: zero weights and bias (a CReLU's halves are then both 0), or
    a negative bias behind a ReLU."""
    with th.no_grad():
        layer.incoming.weight[units] = 0.0
        layer.incoming.bias[units] = 0.0 if layer.halves == 2 else -1.0


@pytest.mark.parametrize(
    ("algorithm", "extractors"),
    [("DQN", 1), ("PPO", 1), ("PPO", 2), ("SAC", 2), ("SAC", 1)],
    ids=["DQN", "PPO", "PPO_own_critic_extractor", "SAC", "SAC_shared_extractor"],
)
@pytest.mark.parametrize("activation", ["relu", "crelu"])
def test_recycling_silent_units_at_a_branch_end_leaves_every_output_unchanged(
    algorithm: str, extractors: int, activation: str
) -> None:
    """Zero outgoing weights in the wrong columns would silence live inputs and change the outputs."""
    env = _two_images_and_a_vector(spaces.Box(-1, 1, (2,), np.float32) if algorithm == "SAC" else None)
    sharing = {} if algorithm == "DQN" else {"share_features_extractor": extractors == 1}
    model = _model(algorithm, env, activation=activation, **sharing)
    obs = _observations(model)
    units = th.tensor([0, 3, 7])
    ends = {_branch_end(model, "more", network) for network in model.policy.network_prefixes()}
    layers = list({layer.incoming: layer for layer in ends}.values())  # networks sharing an extractor
    assert len(layers) == extractors
    for layer in layers:
        _silence(layer, units)
    before = _outputs(model, obs)
    readers = {reader: reader.weight.detach().clone() for layer in layers for reader in layer.outgoing}
    reinit = Reinitializer(model)
    for layer in layers:
        reinit.recycle(layer, units)
    for output, expected in zip(_outputs(model, obs), before, strict=True):
        assert th.equal(output, expected)
    for layer in layers:
        assert not th.equal(layer.incoming.weight[units], th.zeros_like(layer.incoming.weight[units]))
        for reader in layer.outgoing:
            columns = layer.columns(reader, units)
            assert th.equal(reader.weight[:, columns], th.zeros_like(reader.weight[:, columns]))
            others = th.ones(reader.in_features, dtype=th.bool)
            others[columns] = False
            assert th.equal(reader.weight[:, others], readers[reader][:, others])


@pytest.mark.parametrize("algorithm", ["DQN", "PPO", "SAC"])
def test_redo_and_continual_backprop_train_through_the_branches(algorithm: str) -> None:
    env = _two_images_and_a_vector(spaces.Box(-1, 1, (2,), np.float32) if algorithm == "SAC" else None)
    interventions = [ReDo(tau=1.0, every=32, probe_size=32), ContinualBackprop(replacement_rate=0.5, maturity=1)]
    model = _model(algorithm, env, interventions)
    model.learn(96)
    logged = model.logger.name_to_value
    assert logged["interventions/redo/recycled_total"] > 0
    assert logged["interventions/continual_backprop/replaced_total"] > 0


def test_continual_backprop_weighs_only_the_columns_a_unit_feeds() -> None:
    """SAC's critics read the extractor's features and then the actions; each branch end its own columns."""
    env = _two_images_and_a_vector(spaces.Box(-1, 1, (2,), np.float32))
    model = _model("SAC", env)
    more = _branch_end(model, "more", "qf0")
    start = more.offset
    assert start == 3 + BRANCH_WIDTH
    expected = th.stack(
        [reader.weight.detach()[:, start : start + BRANCH_WIDTH].abs().mean(dim=0) for reader in more.outgoing]
    ).mean(dim=0)
    assert more.outgoing == (model.critic.qf0[0], model.critic.qf1[0])
    assert th.equal(more.outgoing_magnitude(), expected)


def test_continual_backprop_trains_sac_on_images_whose_critics_also_read_actions(image_env) -> None:
    """A lone NatureCNN feeding SAC's critics: its features, then the actions (once a reshape error)."""
    env = image_env((36, 36, 1))
    env.action_space = spaces.Box(-1, 1, (2,), np.float32)
    model = crl.SAC(
        "CnnPolicy", env, buffer_size=100, learning_starts=16, batch_size=8, seed=0,
        policy_kwargs=dict(features_extractor_kwargs=dict(features_dim=4)),
        interventions=[ContinualBackprop(replacement_rate=0.5, maturity=1)],
    )  # fmt: skip
    linear = model.critic.features_extractor.linear[0]
    end = next(layer for layer in unit_layers(model.policy, ["qf0"]) if layer.incoming is linear)
    expected = th.stack([reader.weight.detach()[:, :4].abs().mean(dim=0) for reader in end.outgoing]).mean(dim=0)
    assert th.equal(end.outgoing_magnitude(), expected)
    model.learn(40)
    assert model.logger.name_to_value["interventions/continual_backprop/replaced_total"] > 0


def test_a_head_reset_or_injection_reaching_into_the_branches_is_refused() -> None:
    env = _two_images_and_a_vector()
    with pytest.raises(
        InterventionError,
        match=r"intervention 'reset': its head would take in hidden layers \['actor/layer.*'\], which sit in the "
        r"parallel branches of a CombinedExtractor .* use a smaller head_layers, or name the modules to reset with "
        r"parts=\[\.\.\.\]$",
    ):
        crl.PPO("MultiInputPolicy", env, interventions=[Reset(parts="head", head_layers=4)])
    with pytest.raises(InterventionError, match=r"'plasticity_injection': its head would take in .* head_layers$"):
        crl.DQN(
            "MultiInputPolicy", env, buffer_size=100, policy_kwargs=dict(net_arch=[]),
            interventions=[PlasticityInjection(at_step=32, head_layers=2)],
        )  # fmt: skip


@pytest.mark.parametrize("algorithm", ["DQN", "PPO"])
def test_a_head_of_output_layers_alone_reads_every_branch(algorithm: str) -> None:
    """With ``net_arch=[]`` the output layers read the branches directly: they are the head."""
    env = _two_images_and_a_vector()
    model = _model(algorithm, env, net_arch=[])
    model.learn(32)
    heads = [model.policy.q_net.q_net[0]] if algorithm == "DQN" else [model.policy.action_net, model.policy.value_net]
    extractor = {name: p.detach().clone() for name, p in _extractor(model).named_parameters()}
    before = [head.weight.detach().clone() for head in heads]
    Reset(parts="head").apply(model, "test")
    assert all(not th.equal(head.weight, old) for head, old in zip(heads, before, strict=True))
    assert all(th.equal(p, extractor[name]) for name, p in _extractor(model).named_parameters())
    injected = _model(algorithm, env, [PlasticityInjection(at_step=32)], net_arch=[])
    injected.learn(64)
    paths = ["q_net.q_net.0"] if algorithm == "DQN" else ["action_net", "value_net"]
    assert all(isinstance(injected.policy.get_submodule(path), InjectedHead) for path in paths)


@pytest.mark.parametrize(
    ("algorithm", "action_space"), [("DQN", spaces.Discrete(2)), ("SAC", spaces.Box(-1, 1, (2,), np.float32))]
)
def test_the_plasticity_probe_on_dict_observations_is_the_probe_on_their_concatenation(
    algorithm: str, action_space: spaces.Space
) -> None:
    """Two vector keys are flattened and concatenated in key order: the same network as on one vector."""
    split = SpacesEnv(
        spaces.Dict({"a": spaces.Box(-1, 1, (3,), np.float32), "b": spaces.Box(-1, 1, (2,), np.float32)}), action_space
    )
    joined = SpacesEnv(spaces.Box(-1, 1, (5,), np.float32), action_space)
    vectors = np.random.default_rng(0).uniform(-1, 1, (32, 5)).astype(np.float32)
    on_split = getattr(crl, algorithm)("MultiInputPolicy", split, buffer_size=100, batch_size=8, seed=0)
    on_joined = getattr(crl, algorithm)("MlpPolicy", joined, buffer_size=100, batch_size=8, seed=0)
    values = evaluate(on_split, {"a": vectors[:, :3], "b": vectors[:, 3:]}, plasticity_probe=True)
    assert any(name.endswith("/plasticity_probe") for name in values)
    assert values == evaluate(on_joined, vectors, plasticity_probe=True)
