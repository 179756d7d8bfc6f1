"""Intervention base class, registry and construction-time errors."""

from __future__ import annotations

import pickle
import re
from typing import ClassVar

import gymnasium as gym
import pytest
import torch as th
from stable_baselines3.common.policies import ActorCriticPolicy
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
from crl.metrics import MetricsError


class _PPOOnly(Intervention):
    name = "test_ppo_only"
    algorithms: ClassVar[frozenset[str] | None] = frozenset({"PPO"})
    strength: float = 1.0


class _Sized(Intervention):
    name = "test_sized"
    size: int


def test_a_missing_parameter_is_named_with_its_type() -> None:
    with pytest.raises(InterventionError, match=r"^intervention 'test_sized': parameter size is required \(int\)$"):
        make_intervention({"name": "test_sized"})


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
    assert "['CnnPolicy', 'MlpPolicy', 'MultiHeadPolicy', 'MultiInputPolicy']" in message


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


# --- one model per instance, crl policies, values that cannot run --------------------------------------


def test_an_instance_of_another_model_is_refused_and_fresh_gives_a_new_one() -> None:
    # L2-init's anchor is the first model's initial weights: a second model must not pull toward them.
    l2_init = crl.interventions.L2Init(l2_init=1e-2)
    first = crl.DQN("MlpPolicy", "CartPole-v1", interventions=[l2_init], seed=1)
    with pytest.raises(InterventionError, match=r"L2Init\(l2_init=0.01\) already belongs to another model"):
        crl.DQN("MlpPolicy", "CartPole-v1", interventions=[l2_init], seed=2)
    second = crl.DQN("MlpPolicy", "CartPole-v1", interventions=[l2_init.fresh()], seed=2)
    anchor = dict(second.interventions[0]._theta_0)
    for name, parameter in second.policy.named_parameters():
        assert th.equal(anchor[name], parameter) and not th.equal(anchor[name], first.interventions[0]._theta_0[name])


def test_a_saved_model_keeps_its_interventions_on_load(tmp_path) -> None:
    model = crl.DQN("MlpPolicy", "CartPole-v1", interventions=["l2_init"])
    model.save(tmp_path / "model")
    loaded = crl.DQN.load(tmp_path / "model")
    crl.DQN.load(tmp_path / "model")  # a second load is a second model with its own copies
    assert loaded.interventions[0] is not model.interventions[0]
    with pytest.raises(InterventionError, match="already belongs to another model"):
        crl.DQN.load(tmp_path / "model", interventions=model.interventions)


@pytest.mark.parametrize(
    ("algorithm", "name"),
    [
        (crl.DQN, "redo"),
        (crl.DQN, "continual_backprop"),
        (crl.DQN, "plasticity_injection"),
        (crl.DQN, "adaptive_replay_ratio"),
        (crl.PPO, "pfo"),
    ],
)
def test_interventions_that_read_a_crl_policy_refuse_another_at_construction(algorithm, name) -> None:
    sb3_policy = {crl.DQN: SB3DQNPolicy, crl.PPO: ActorCriticPolicy}[algorithm]
    spec = {"name": name, **({"at_step": 100} if name == "plasticity_injection" else {})}
    with pytest.raises(InterventionError) as error:
        algorithm(sb3_policy, "CartPole-v1", interventions=[spec])
    message = str(error.value)
    assert f"intervention {name!r} reads the networks of a crl policy, but policy=stable_baselines3." in message
    assert "or a subclass of crl.policies.ContinualPolicyMixin" in message


def test_metrics_refuse_a_policy_that_is_not_a_crl_policy() -> None:
    with pytest.raises(MetricsError, match="metrics are measured on the networks of a crl policy, but policy="):
        crl.DQN(SB3DQNPolicy, "CartPole-v1", metrics={"every": 100})
    crl.DQN(SB3DQNPolicy, "CartPole-v1", interventions=["weight_decay", "l2_init", "reset"])  # these need no crl policy


def test_load_reads_interventions_and_metrics_as_the_constructor_does(tmp_path) -> None:
    crl.DQN("MlpPolicy", "CartPole-v1").save(tmp_path / "model")
    loaded = crl.DQN.load(tmp_path / "model", interventions=["redo", {"name": "l2_init", "l2_init": 0.1}],
                          metrics={"every": 20})  # fmt: skip
    assert [type(intervention).__name__ for intervention in loaded.interventions] == ["ReDo", "L2Init"]
    assert loaded.metrics_monitor is not None and loaded.metrics_monitor.config.every == 20
    assert "metrics" not in vars(loaded)
    custom = crl.DQN.load(tmp_path / "model", custom_objects={"interventions": ["redo"]})
    assert [type(intervention).__name__ for intervention in custom.interventions] == ["ReDo"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "weight_decay", "weight_decay": float("inf")}, "parameter weight_decay=inf: Input should be"),
        ({"name": "l2_init", "l2_init": float("nan")}, "parameter l2_init=nan: Input should be a finite number"),
        ({"name": "adaptive_replay_ratio", "high": float("inf")}, "parameter high=inf: Input should be a finite"),
    ],
)
def test_infinite_parameters_are_refused(spec, message) -> None:
    with pytest.raises(InterventionError, match=re.escape(message)):
        make_interventions([spec])


def test_a_replay_ratio_that_rounds_to_no_gradient_step_is_refused() -> None:
    with pytest.raises(InterventionError, match=re.escape("low=0.0004 gives no gradient step with 1 environment(s)")):
        crl.DQN("MlpPolicy", "CartPole-v1", interventions=[{"name": "adaptive_replay_ratio", "low": 0.0004}])
    crl.DQN("MlpPolicy", "CartPole-v1", interventions=[{"name": "adaptive_replay_ratio", "low": 0.001}])


def test_step_schedules_count_the_steps_of_every_learn_call() -> None:
    # The continual loop calls learn(reset_num_timesteps=True) at every task: num_timesteps restarts,
    # the schedules' clock must not (at_step 600 falls in the second call, at_steps 200 only in the first).
    injection = crl.interventions.PlasticityInjection(at_step=600)
    reset = crl.interventions.Reset(at_steps=[200], at_task_boundaries=False)
    redo = crl.interventions.ReDo(every=500)
    model = crl.DQN("MlpPolicy", "CartPole-v1", interventions=[injection, reset, redo], learning_starts=50, seed=0)
    recycles = []
    redo_recycle = redo.recycle
    object.__setattr__(redo, "recycle", lambda algo: recycles.append(algo.lifetime_timesteps) or redo_recycle(algo))
    for _ in range(2):
        model.learn(400)
        assert model.num_timesteps == 400
    assert model.lifetime_timesteps == 800
    assert injection._injected and reset._events == 1 and recycles == [500]


def test_a_model_that_fails_to_build_leaves_its_interventions_unbound_and_stateless() -> None:
    # ReDo's unknown network fails in on_setup, after L2-init took the failed model's weights as theta_0.
    l2_init = crl.interventions.L2Init()
    with pytest.raises(InterventionError, match="networks=\\['nope'\\]"):
        crl.DQN("MlpPolicy", "CartPole-v1", interventions=[l2_init, crl.interventions.ReDo(networks=["nope"])])
    model = crl.DQN("MlpPolicy", "CartPole-v1", interventions=[l2_init])
    for name, parameter in model.policy.named_parameters():
        assert th.equal(l2_init._theta_0[name], parameter)


def test_a_head_reset_needs_a_crl_policy_a_full_reset_does_not() -> None:
    with pytest.raises(InterventionError, match="intervention 'reset' with parts='head' reads the networks of a crl"):
        crl.DQN(SB3DQNPolicy, "CartPole-v1", interventions=[{"name": "reset", "parts": "head"}])
    crl.DQN(SB3DQNPolicy, "CartPole-v1", interventions=[{"name": "reset", "parts": "full"}])


def test_soft_shrink_perturb_is_not_also_scheduled_at_task_boundaries() -> None:
    soft = crl.interventions.ShrinkPerturb(shrink=0.999999, perturb=1e-6, after_every_update=True)
    assert not soft.at_task_boundaries
    assert crl.interventions.ShrinkPerturb(after_every_update=True, at_task_boundaries=True).at_task_boundaries
    model = crl.DQN("MlpPolicy", "CartPole-v1", interventions=[soft], learning_starts=50, train_freq=4, seed=0)
    model.learn(200)
    entries = len(model.policy.optimizer.state)
    model.start_task(1)
    assert entries > 0 and len(model.policy.optimizer.state) == entries and soft._events == 0


def test_load_with_a_new_injection_on_an_injected_model_is_refused_clearly(tmp_path) -> None:
    model = crl.DQN("MlpPolicy", "CartPole-v1", interventions=[{"name": "plasticity_injection", "at_step": 60}],
                    learning_starts=50, train_freq=4)  # fmt: skip
    model.learn(100)
    model.save(tmp_path / "model")
    crl.DQN.load(tmp_path / "model")  # with its own, saved injection
    with pytest.raises(InterventionError, match="the saved parameters hold heads that plasticity_injection injected"):
        crl.DQN.load(tmp_path / "model", interventions=[{"name": "plasticity_injection", "at_step": 60}])


def test_redo_checks_at_the_first_train_end_past_each_multiple_of_every() -> None:
    redo = crl.interventions.ReDo(every=10)
    model = crl.DQN("MlpPolicy", "CartPole-v1", interventions=[redo], learning_starts=0, train_freq=3, seed=0)
    checks: list[int] = []
    object.__setattr__(redo, "recycle", lambda algo: checks.append(algo.lifetime_timesteps))
    model.learn(60)
    assert checks == [12, 21, 30, 42, 51, 60]  # not 12, 24, 36, ...: a late check does not delay the next


def test_the_replay_ratio_counts_the_episodes_of_every_learn_call() -> None:
    ratio = crl.interventions.AdaptiveReplayRatio(check_every=1000)
    model = crl.DQN("MlpPolicy", "CartPole-v1", interventions=[ratio], learning_starts=10, seed=0)
    counts = []
    for _ in range(3):
        model.learn(300)
        counts.append(model._episode_num)
    assert model.lifetime_episodes == sum(counts) and ratio._episodes == sum(counts) > counts[-1]


def test_a_refused_instance_leaves_the_others_given_with_it_free() -> None:
    redo = crl.interventions.ReDo()
    crl.DQN("MlpPolicy", "CartPole-v1", interventions=[redo])
    l2_init = crl.interventions.L2Init()
    with pytest.raises(InterventionError, match="already belongs to another model"):
        crl.DQN("MlpPolicy", "CartPole-v1", interventions=[l2_init, redo])
    assert l2_init._owner is None and redo._owner is not None
    crl.DQN("MlpPolicy", "CartPole-v1", interventions=[l2_init])


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            {"name": "plasticity_injection"},
            "intervention 'plasticity_injection': give exactly one of at_step, at_task "
            "(got at_step=None, at_task=None)",
        ),
        (
            {"name": "adaptive_replay_ratio", "low": 2.0, "high": 1.0},
            "intervention 'adaptive_replay_ratio': high=1.0 must be larger than low=2.0",
        ),
        (
            {"name": "redo", "tau": -1},
            "intervention 'redo': parameter tau=-1: Input should be greater than or equal to 0",
        ),
        (  # one problem for the union (a name or a list of module paths), not one per alternative
            {"name": "reset", "parts": "bogus"},
            "intervention 'reset': parameter parts='bogus': Input should be 'full' or 'head' or a valid list",
        ),
    ],
)
def test_invalid_parameters_are_reported_in_one_line_naming_them(spec: dict, expected: str) -> None:
    """A check of several parameters together has no single parameter to name: its own message says it all."""
    with pytest.raises(InterventionError) as info:
        make_interventions([spec])
    assert str(info.value) == f"interventions[0]: {expected}"
