"""Intervention base class, registry and construction-time errors."""

from __future__ import annotations

import pickle
from typing import ClassVar

import gymnasium as gym
import pytest
from stable_baselines3.dqn.policies import DQNPolicy as SB3DQNPolicy

import crl
from crl.interventions import (
    Intervention,
    InterventionError,
    LayerNorm,
    make_intervention,
    make_interventions,
    registered_interventions,
)


class _PPOOnly(Intervention):
    name = "test_ppo_only"
    algorithms: ClassVar[frozenset[str] | None] = frozenset({"PPO"})
    strength: float = 1.0


def test_constructible_from_python_and_from_name() -> None:
    assert LayerNorm(placement="post") == make_intervention({"name": "layer_norm", "placement": "post"})
    assert make_intervention("layer_norm") == LayerNorm()
    assert registered_interventions()["layer_norm"] is LayerNorm


def test_parameters_are_typed_and_coerced() -> None:
    assert _PPOOnly(strength="2.5").strength == 2.5
    with pytest.raises(InterventionError, match=r"parameter strength='strong': Input should be a valid number"):
        _PPOOnly(strength="strong")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "layer_nrom"}, "unknown intervention 'layer_nrom'; known interventions: ["),
        (
            {"name": "layer_norm", "where": "pre"},
            "'layer_norm' has no parameter(s) ['where']; its parameters are placement",
        ),
        (
            {"name": "layer_norm", "placement": "mid"},
            "parameter placement='mid': Input should be 'pre' or 'post'",
        ),
        ({"placement": "pre"}, "an intervention mapping needs a 'name' key, got keys ['placement']"),
        (3, "an intervention must be an Intervention, a name or a mapping with 'name', got 3"),
    ],
)
def test_bad_specs_name_the_problem(spec, message) -> None:
    with pytest.raises(InterventionError) as error:
        make_interventions([spec])
    assert str(error.value).startswith("interventions[0]: ")
    assert message in str(error.value)


def test_error_lists_every_known_intervention() -> None:
    with pytest.raises(InterventionError) as error:
        make_intervention("nope")
    for name in registered_interventions():
        assert repr(name) in str(error.value)


def test_same_intervention_twice_is_rejected() -> None:
    with pytest.raises(InterventionError, match=r"interventions\[1\]: 'layer_norm' is given twice"):
        make_interventions([LayerNorm(), "layer_norm"])


def test_interventions_must_be_a_list() -> None:
    with pytest.raises(InterventionError, match="interventions must be a list, got 'layer_norm'"):
        crl.DQN("MlpPolicy", "CartPole-v1", interventions="layer_norm")


def test_algorithm_rejects_unknown_intervention_at_construction() -> None:
    with pytest.raises(InterventionError, match="unknown intervention 'redoo'"):
        crl.DQN("MlpPolicy", "CartPole-v1", interventions=[{"name": "redoo"}])


def test_intervention_for_another_algorithm_is_rejected() -> None:
    with pytest.raises(InterventionError, match=r"'test_ppo_only' does not apply to DQN; it supports \['PPO'\]"):
        crl.DQN("MlpPolicy", "CartPole-v1", interventions=[_PPOOnly()])
    crl.PPO("MlpPolicy", "CartPole-v1", interventions=[_PPOOnly()], n_steps=64)


def test_layer_norm_needs_a_policy_with_the_option() -> None:
    with pytest.raises(InterventionError) as error:
        crl.DQN(SB3DQNPolicy, "CartPole-v1", interventions=[LayerNorm()])
    message = str(error.value)
    assert "policy=stable_baselines3.dqn.policies.DQNPolicy has none" in message
    assert "['CnnPolicy', 'MlpPolicy', 'MultiInputPolicy']" in message


def test_layer_norm_conflicting_with_policy_kwargs_is_rejected() -> None:
    with pytest.raises(InterventionError, match=r"conflicts with policy_kwargs\['layer_norm'\]='post'"):
        crl.SAC("MlpPolicy", "Pendulum-v1", interventions=[LayerNorm()], policy_kwargs=dict(layer_norm="post"))


def test_user_policy_kwargs_are_not_modified() -> None:
    policy_kwargs = dict(net_arch=[32])
    model = crl.DQN("MlpPolicy", gym.make("CartPole-v1"), interventions=[LayerNorm()], policy_kwargs=policy_kwargs)
    assert policy_kwargs == dict(net_arch=[32])
    assert model.policy_kwargs == dict(net_arch=[32], layer_norm="pre")


def test_interventions_pickle_with_their_state() -> None:
    intervention = _PPOOnly(strength=0.5)
    restored = pickle.loads(pickle.dumps(intervention))
    assert restored == intervention and restored.strength == 0.5
