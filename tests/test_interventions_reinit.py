"""Interventions that re-initialise parameters: exact values, optimizer state, targets, and training again."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from torch import nn

import crl
from crl.hooks import GradientStep
from crl.interventions import (
    PFO,
    ContinualBackprop,
    InterventionError,
    PlasticityInjection,
    ReDo,
    Reset,
    ResetOptimizer,
    ShrinkPerturb,
)
from crl.interventions.network import UnitLayer, fresh_policy, unit_layers
from crl.metrics.functions import unit_scores
from crl.policies.layers import CReLU, InjectedHead

DQN_KWARGS = dict(learning_starts=100, train_freq=1, target_update_interval=1000, seed=0)


def _dqn(interventions: list | None = None, steps: int = 300) -> crl.DQN:
    model = crl.DQN("MlpPolicy", "CartPole-v1", interventions=interventions, **DQN_KWARGS)
    model.learn(steps)
    return model


def _state(model: crl.DQN, param: th.Tensor) -> dict[str, th.Tensor]:
    return model.policy.optimizer.state[param]


def _obs(model) -> th.Tensor:
    """Observations the agent has seen (CartPole's observation space is unbounded)."""
    return th.as_tensor(model.replay_buffer.observations[:32, 0])


def _snapshot(module: nn.Module) -> dict[str, th.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def _fresh_with_seed(policy, seed: int) -> dict[str, th.Tensor]:
    th.manual_seed(seed)
    return dict(fresh_policy(policy).named_parameters())


def _kill_units(layer: nn.Linear, units: th.Tensor) -> None:
    """Make units that never fire: zero weights and a negative bias."""
    with th.no_grad():
        layer.weight[units] = 0.0
        layer.bias[units] = -1.0


def test_redo_recycles_dormant_units_exactly_and_they_train_again(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _dqn()
    q = model.policy.q_net.q_net
    first, second, target = q[0], q[2], model.policy.q_net_target.q_net
    _kill_units(first, th.arange(5))
    probe = th.as_tensor(model.replay_buffer.observations[:256, 0])
    monkeypatch.setattr("crl.interventions.redo.probe_batch", lambda algo, size: (probe, None))
    features = model.policy.hidden_features(probe)["q_net"]
    recycled = th.nonzero(unit_scores(features["layer0"].post) <= 0.1).flatten()
    downstream = unit_scores(features["layer1"].post) <= 0.1
    other = th.tensor([i for i in range(64) if i not in recycled.tolist()])
    assert set(range(5)) <= set(recycled.tolist()) and downstream.any()
    before, target_before = _snapshot(q), _snapshot(target)
    moments = {k: v.clone() for k, v in _state(model, second.weight).items()}
    fresh = _fresh_with_seed(model.policy, 7)

    th.manual_seed(7)
    assert ReDo(tau=0.1).recycle(model) == len(recycled) + int(downstream.sum())

    assert th.equal(first.weight[recycled], fresh["q_net.q_net.0.weight"][recycled])
    assert th.all(first.bias[recycled] == 0) and th.all(second.bias[downstream] == 0)
    # outgoing weights are zero, except in rows of downstream units that got fresh incoming weights
    assert th.all(second.weight[~downstream][:, recycled] == 0)
    assert th.equal(second.weight[downstream], fresh["q_net.q_net.2.weight"][downstream])
    assert th.all(q[4].weight[:, downstream] == 0)
    assert th.equal(first.weight[other], before["0.weight"][other])
    assert th.equal(second.weight[~downstream][:, other], before["2.weight"][~downstream][:, other])
    # Adam moments of the recycled entries are zero, the others untouched
    for key in ("exp_avg", "exp_avg_sq"):
        assert th.all(_state(model, first.weight)[key][recycled] == 0)
        assert th.all(_state(model, second.weight)[key][:, recycled] == 0)
        kept = _state(model, second.weight)[key][~downstream][:, other]
        assert th.equal(kept, moments[key][~downstream][:, other])
    # the target network is re-synchronised on the recycled entries only
    assert th.equal(target[0].weight[recycled], first.weight[recycled])
    assert th.equal(target[0].weight[other], target_before["0.weight"][other])
    assert model.logger.name_to_value["interventions/redo/recycled"] == len(recycled) + int(downstream.sum())

    recycled_in = first.weight[recycled].clone()
    model.learn(200, reset_num_timesteps=False)
    assert not th.equal(first.weight[recycled], recycled_in)
    assert th.all(second.weight[:, recycled].abs().sum(dim=0) > 0)


def test_redo_leaves_the_output_unchanged_on_units_that_were_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _dqn()
    _kill_units(model.policy.q_net.q_net[0], th.arange(5))
    probe = th.as_tensor(model.replay_buffer.observations[:256, 0])
    monkeypatch.setattr("crl.interventions.redo.probe_batch", lambda algo, size: (probe, None))
    outputs = model.q_net(probe)
    assert ReDo(tau=0.0).recycle(model) >= 5  # tau = 0: units silent on every probe sample
    assert th.equal(model.q_net(probe), outputs)


def test_continual_backprop_utility_formula_and_replacement() -> None:
    model = _dqn()
    cbp = ContinualBackprop(maturity=0, replacement_rate=0.05)
    cbp.on_setup(model)
    q = model.policy.q_net.q_net
    _kill_units(q[0], th.arange(3))  # utility 0: the lowest of each layer
    _kill_units(q[2], th.arange(3))
    batch = model.replay_buffer.sample(64)
    step = GradientStep(index=0, batch=batch, loss_name="q_net")
    with model.policy.record_features(["q_net"]) as recorder:
        outputs = model.q_net(batch.observations)
    step.features = recorder.features()
    h0 = step.features["q_net"]["layer0"].post
    expected_utility = 0.01 * h0.abs().mean(dim=0) * q[2].weight.abs().mean(dim=0)
    lowest = th.topk(expected_utility, 3, largest=False).indices  # 0.05 * 64 = 3.2 units due
    assert th.all(expected_utility[lowest] == 0)
    downstream = th.topk(cbp_utility_of_layer1(step, q), 3, largest=False).indices
    before = _snapshot(q)
    fresh = _fresh_with_seed(model.policy, 3)

    th.manual_seed(3)
    cbp.after_optimizer_step(model, step)

    utility = cbp._utility["q_net/layer0"]
    kept = th.tensor([i for i in range(64) if i not in lowest.tolist()])
    rows = th.tensor([i for i in range(64) if i not in downstream.tolist()])
    th.testing.assert_close(utility[kept], expected_utility[kept])
    assert th.all(utility[lowest] == 0) and th.all(cbp._age["q_net/layer0"][lowest] == 0)
    assert th.all(cbp._age["q_net/layer0"][kept] == 1)
    assert cbp._due["q_net/layer0"] == pytest.approx(0.2)
    assert th.equal(q[0].weight[lowest], fresh["q_net.q_net.0.weight"][lowest])
    assert th.all(q[0].bias[lowest] == 0) and th.all(q[2].weight[rows][:, lowest] == 0)
    assert th.equal(q[0].weight[kept], before["0.weight"][kept])
    assert th.all(_state(model, q[0].weight)["exp_avg"][lowest] == 0)
    assert th.all(_state(model, q[2].weight)["exp_avg_sq"][:, lowest] == 0)
    # the replaced units were silent on this batch, and new units have zero outgoing weights
    assert th.all(cbp_utility_of_layer1(step, q)[downstream] == 0)
    assert th.equal(model.q_net(batch.observations), outputs)

    replaced_out = q[2].weight[:, lowest].clone()
    model.learn(100, reset_num_timesteps=False)
    assert not th.equal(q[2].weight[:, lowest], replaced_out)


def cbp_utility_of_layer1(step: GradientStep, q: nn.Sequential) -> th.Tensor:
    h1 = step.features["q_net"]["layer1"].post
    return 0.01 * h1.abs().mean(dim=0) * q[4].weight.abs().mean(dim=0)


@pytest.mark.parametrize(
    "policy_kwargs",
    [dict(net_arch=[16, 16]), dict(net_arch=[16], activation="crelu"), dict(net_arch=[16], activation="fourier")],
    ids=["mlp", "crelu", "fourier"],
)
def test_continual_backprop_reads_its_layers_as_the_general_path_does_bit_for_bit(policy_kwargs: dict) -> None:
    """A unit layer's mean activity and outgoing magnitude (one plain linear reader: its columns' mean)
    equal the general reshaped reductions."""
    model = crl.DQN("MlpPolicy", "CartPole-v1", learning_starts=50, seed=0, policy_kwargs=policy_kwargs)
    model.learn(100)
    batch = model.replay_buffer.sample(32)
    with model.policy.record_features(["q_net"]) as recorder:
        model.q_net(batch.observations)
    for layer in unit_layers(model.policy, None):
        h = recorder.features()["q_net"][layer.name].post
        general = layer.unit_view(h.abs().mean(dim=[0, *range(2, h.dim())])).mean(dim=0)
        assert th.equal(layer.mean_activity(h), general)
        assert (layer._plain_reader is None) == (layer.halves == 2)  # the MLP's layers take the short path

        (reader,) = layer.outgoing
        assert th.equal(layer.outgoing_magnitude(), layer.outgoing_weights(reader).abs().mean(dim=(0, 1, 3)))
        reader.weight = nn.Parameter(th.randn_like(reader.weight))  # a replaced parameter is read at the next call
        assert th.equal(layer.outgoing_magnitude(), layer.outgoing_weights(reader).abs().mean(dim=(0, 1, 3)))


def test_continual_backprop_in_training_replaces_at_the_accumulated_rate() -> None:
    cbp = ContinualBackprop(maturity=50, replacement_rate=0.01)
    model = _dqn([cbp], steps=400)
    # 64 units per layer, eligible from update 51 on: 0.64 units due per update and layer
    assert model.logger.name_to_value["interventions/continual_backprop/replaced_total"] == cbp._replaced_total > 0
    assert all(0.0 <= due < 1.0 for due in cbp._due.values())


def test_continual_backprop_finds_the_units_again_after_an_injection() -> None:
    cbp = ContinualBackprop(maturity=50, replacement_rate=0.01)
    model = _dqn([cbp, PlasticityInjection(at_step=200)], steps=300)
    head = model.policy.q_net.q_net[4]
    assert isinstance(head, InjectedHead)
    last = cbp._unit_layers(model)[-1]
    # found again: every branch of the head reads the units (before the injection, one Linear did)
    assert {id(layer) for layer in last.outgoing} == {id(branch) for branch in head.branches()}
    assert cbp._utility[f"q_net/{last.name}"].abs().sum() > 0


def test_head_reset_reinitialises_the_last_layer_only_and_it_trains() -> None:
    model = _dqn()
    q, target = model.policy.q_net.q_net, model.policy.q_net_target.q_net
    before = _snapshot(q)
    first_state = {k: v.clone() for k, v in _state(model, q[0].weight).items()}
    fresh = _fresh_with_seed(model.policy, 5)
    th.manual_seed(5)
    Reset(parts="head").apply(model, "test")
    assert th.equal(q[4].weight, fresh["q_net.q_net.4.weight"]) and th.equal(q[4].bias, fresh["q_net.q_net.4.bias"])
    assert q[4].weight not in model.policy.optimizer.state and q[4].bias not in model.policy.optimizer.state
    assert th.equal(q[0].weight, before["0.weight"]) and th.equal(q[2].weight, before["2.weight"])
    for key, value in first_state.items():
        assert th.equal(_state(model, q[0].weight)[key], value)
    assert th.equal(target[4].weight, q[4].weight)
    reset = q[4].weight.clone()
    model.learn(100, reset_num_timesteps=False)
    assert not th.equal(q[4].weight, reset)
    assert float(_state(model, q[4].weight)["step"]) == 100.0


def test_full_reset_of_sac_keeps_the_buffer_and_resets_everything_else() -> None:
    model = crl.SAC("MlpPolicy", "Pendulum-v1", seed=0, learning_starts=100, policy_kwargs=dict(net_arch=[16, 16]))
    model.learn(200)
    initial_log_alpha = th.zeros(1)  # ent_coef="auto" starts at 1
    reset = Reset(parts="full")
    reset.on_setup(model)  # normally called at construction, where log_ent_coef is still initial
    reset._initial_log_ent_coef = initial_log_alpha
    buffer_size = model.replay_buffer.size()
    fresh = _fresh_with_seed(model.policy, 11)
    th.manual_seed(11)
    reset.apply(model, "test")
    for name, param in model.policy.named_parameters():
        if not name.startswith("critic_target"):
            assert th.equal(param, fresh[name]), name
    for online, target in zip(model.critic.parameters(), model.critic_target.parameters(), strict=True):
        assert th.equal(online, target)
    assert all(len(opt.state) == 0 for opt in (model.actor.optimizer, model.critic.optimizer, model.ent_coef_optimizer))
    assert th.equal(model.log_ent_coef.detach(), initial_log_alpha)
    assert model.replay_buffer.size() == buffer_size
    actor_weights = _snapshot(model.actor)
    model.learn(50, reset_num_timesteps=False)
    assert all(not th.equal(p, actor_weights[n]) for n, p in model.actor.named_parameters())


def test_shrink_perturb_mixes_a_new_fresh_init_into_online_and_syncs_the_target() -> None:
    model = _dqn()
    q, target = model.policy.q_net.q_net, model.policy.q_net_target.q_net
    before = _snapshot(q)
    assert not all(th.equal(p, before[n]) for n, p in target.named_parameters())  # a lagged target
    fresh = _fresh_with_seed(model.policy, 9)
    th.manual_seed(9)
    ShrinkPerturb(shrink=0.4, perturb=0.3).apply(model, "test")
    for name, param in q.named_parameters():
        expected = 0.4 * before[name] + 0.3 * fresh[f"q_net.q_net.{name}"]
        th.testing.assert_close(param, expected, rtol=0, atol=1e-7)
        assert th.equal(dict(target.named_parameters())[name], param)
        assert param not in model.policy.optimizer.state
    shrunk = _snapshot(q)
    model.learn(50, reset_num_timesteps=False)
    assert all(not th.equal(p, shrunk[n]) for n, p in q.named_parameters())
    # a new draw each call
    first_draw, second_draw = fresh_policy(model.policy), fresh_policy(model.policy)
    assert not th.equal(first_draw.q_net.q_net[0].weight, second_draw.q_net.q_net[0].weight)


def test_soft_shrink_perturb_acts_after_every_update_and_keeps_adam_state() -> None:
    soft = ShrinkPerturb(shrink=0.999, perturb=0.001, after_every_update=True, at_task_boundaries=False)
    model = _dqn([soft], steps=150)
    assert float(_state(model, model.policy.q_net.q_net[0].weight)["step"]) == 50.0
    assert model.logger.name_to_value["interventions/shrink_perturb/parameters"] > 0
    plain = _dqn(steps=150)
    assert not th.equal(model.policy.q_net.q_net[0].weight, plain.policy.q_net.q_net[0].weight)

    # One update's map: the target gets the same one, which keeps its lag behind the online network.
    q, target = model.policy.q_net.q_net, model.policy.q_net_target.q_net
    before, target_before = _snapshot(q), _snapshot(target)
    state = {k: v.clone() for k, v in _state(model, q[0].weight).items()}
    fresh = _fresh_with_seed(model.policy, 3)
    th.manual_seed(3)
    soft.after_optimizer_step(model, GradientStep(index=0, batch=None, optimizer=model.policy.optimizer))
    for name, param in q.named_parameters():
        drawn = fresh[f"q_net.q_net.{name}"]
        th.testing.assert_close(param, 0.999 * before[name] + 0.001 * drawn, rtol=0, atol=1e-7)
        target_param = dict(target.named_parameters())[name]
        th.testing.assert_close(target_param, 0.999 * target_before[name] + 0.001 * drawn, rtol=0, atol=1e-7)
        assert not th.equal(target_param, param)
    assert all(th.equal(_state(model, q[0].weight)[k], v) for k, v in state.items())


def test_schedules_every_listed_steps_and_task_boundaries() -> None:
    every = Reset(parts="head", every=100, at_task_boundaries=False)
    listed = ResetOptimizer(at_steps=[150, 250], at_task_boundaries=False)
    model = _dqn([every, listed], steps=300)
    assert every._events == 3 and listed._events == 2
    on_tasks = ResetOptimizer()
    model = _dqn([on_tasks], steps=150)
    model.start_task(0)
    assert len(model.policy.optimizer.state) > 0 and on_tasks._events == 0
    model.start_task(1)
    assert len(model.policy.optimizer.state) == 0 and on_tasks._events == 1


def test_reset_of_named_modules_and_bad_names() -> None:
    model = _dqn([Reset(parts=["q_net.q_net.0"], at_steps=[200], at_task_boundaries=False)], steps=200)
    assert model.interventions[0]._events == 1
    with pytest.raises(InterventionError, match=r"parts=\['q_net.nope'\] names no module \['q_net.nope'\]"):
        crl.DQN("MlpPolicy", "CartPole-v1", interventions=[Reset(parts=["q_net.nope"])])


@pytest.mark.parametrize("name", ["DQN", "SAC"])
def test_plasticity_injection_keeps_outputs_and_trainable_count_and_trains(name: str) -> None:
    if name == "DQN":
        model = _dqn()
        online, target, heads = model.q_net, model.q_net_target, ["q_net.q_net.4"]
    else:
        model = crl.SAC("MlpPolicy", "Pendulum-v1", seed=0, learning_starts=100, policy_kwargs=dict(net_arch=[16, 16]))
        model.learn(200)
        online, target, heads = model.critic, model.critic_target, ["actor.mu", "actor.log_std", "critic.qf0.4"]
    obs = _obs(model)
    actions = th.as_tensor(np.stack([model.action_space.sample() for _ in range(32)]))

    def outputs() -> list[th.Tensor]:
        if name == "DQN":
            return [online(obs), target(obs)]
        return [model.actor(obs, deterministic=True), *online(obs, actions), *target(obs, actions)]

    trainable = sum(p.numel() for p in model.policy.parameters() if p.requires_grad)
    expected = outputs()
    encoder = _snapshot(model.policy.get_submodule(heads[-1].rsplit(".", 1)[0] + ".0"))
    PlasticityInjection(at_step=1).inject(model)

    for path in heads:
        assert isinstance(model.policy.get_submodule(path), InjectedHead)
    target_head = heads[-1].replace("q_net.", "q_net_target.", 1).replace("critic.", "critic_target.", 1)
    assert isinstance(model.policy.get_submodule(target_head), InjectedHead)
    for before, after in zip(expected, outputs(), strict=True):
        assert th.equal(before, after)
    assert sum(p.numel() for p in model.policy.parameters() if p.requires_grad) == trainable
    head = model.policy.get_submodule(heads[-1])
    optimizer = model.policy.optimizer if name == "DQN" else model.critic.optimizer
    registered = {p for group in optimizer.param_groups for p in group["params"]}
    assert all(p in registered for p in head.new.parameters())
    old, new = _snapshot(head.old), _snapshot(head.new)

    model.learn(100, reset_num_timesteps=False)
    assert all(not th.equal(p, new[n]) for n, p in head.new.named_parameters())
    assert all(th.equal(p, old[n]) for n, p in head.old.named_parameters())
    encoder_now = model.policy.get_submodule(heads[-1].rsplit(".", 1)[0] + ".0")
    assert all(not th.equal(p, encoder[n]) for n, p in encoder_now.named_parameters())


@pytest.mark.parametrize("name", ["DQN", "PPO"])
def test_resets_after_a_plasticity_injection_start_every_branch_from_the_fresh_head(name: str) -> None:
    if name == "DQN":
        model, path = _dqn(), "q_net.q_net.4"
    else:
        model, path = crl.PPO("MlpPolicy", "CartPole-v1", seed=0, n_steps=64, batch_size=32, n_epochs=1), "value_net"
        model.learn(64)
    PlasticityInjection(at_step=1).inject(model)
    head = model.policy.get_submodule(path)
    fresh = _fresh_with_seed(model.policy, 5)
    assert set(fresh) == {name for name, _ in model.policy.named_parameters()}
    th.manual_seed(5)
    Reset(parts="full").apply(model, "test")
    for branch in ("old", "new", "new_frozen"):
        for key in ("weight", "bias"):
            assert th.equal(getattr(getattr(head, branch), key), fresh[f"{path}.old.{key}"]), (branch, key)
    features = th.randn(32, head.old.in_features)
    assert th.equal(head(features), head.old(features))
    reset = _snapshot(head.new)
    ShrinkPerturb().apply(model, "test")  # a second fresh draw, mixed into every branch alike
    assert not th.equal(head.new.weight, reset["weight"])
    assert th.equal(head.old.weight, head.new.weight) and th.equal(head.new_frozen.weight, head.new.weight)
    old, new = _snapshot(head.old), _snapshot(head.new)
    model.learn(64, reset_num_timesteps=False)
    assert not th.equal(head.new.weight, new["weight"]) and th.equal(head.old.weight, old["weight"])


def test_plasticity_injection_needs_one_moment_and_a_fitting_head() -> None:
    with pytest.raises(InterventionError, match="give exactly one of at_step, at_task"):
        PlasticityInjection()
    with pytest.raises(InterventionError, match="head_layers=2 does not fit network 'actor'"):
        crl.PPO("MlpPolicy", "CartPole-v1", interventions=[PlasticityInjection(at_step=10, head_layers=2)])


def test_outgoing_columns_across_flatten_and_crelu() -> None:
    conv = nn.Conv2d(1, 3, kernel_size=2)
    plain = UnitLayer("net", "layer0", nn.ReLU(), conv, None, (nn.Linear(3 * 4, 2),))
    assert plain.columns(plain.outgoing[0], th.tensor([1])).tolist() == [4, 5, 6, 7]
    doubled = UnitLayer("net", "layer0", CReLU(), conv, None, (nn.Linear(2 * 3 * 4, 2),))
    assert doubled.columns(doubled.outgoing[0], th.tensor([1])).tolist() == [4, 5, 6, 7, 16, 17, 18, 19]
    next_conv = nn.Conv2d(6, 4, kernel_size=1)
    assert doubled.columns(next_conv, th.tensor([0, 2])).tolist() == [0, 3, 2, 5]


def test_unit_layers_find_layer_norm_and_parallel_heads() -> None:
    model = crl.SAC("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(net_arch=[8, 8], layer_norm="pre"))
    layers = {(u.network, u.name): u for u in unit_layers(model.policy)}
    actor_last = layers[("actor", "layer1")]
    assert actor_last.norm is model.actor.latent_pi[4]
    assert actor_last.outgoing == (model.actor.mu, model.actor.log_std)
    assert layers[("qf0", "layer0")].outgoing == (model.critic.qf0[3],)


@pytest.mark.parametrize("share", [False, True])
def test_fresh_weights_follow_the_features_extractor_sharing(share: bool, image_env) -> None:
    """SB3 leaves ``share_features_extractor`` out of PPO's and SAC's constructor parameters."""
    ppo = crl.PPO("CnnPolicy", image_env((36, 36, 1)), n_steps=32, batch_size=32, n_epochs=1, seed=0,
                  policy_kwargs=dict(share_features_extractor=share))  # fmt: skip
    sac = crl.SAC("MlpPolicy", "Pendulum-v1", seed=0, policy_kwargs=dict(share_features_extractor=share))
    for policy in (ppo.policy, sac.policy):
        assert fresh_policy(policy).share_features_extractor is share
        assert [n for n, _ in fresh_policy(policy).named_parameters()] == [n for n, _ in policy.named_parameters()]


def test_a_full_reset_of_ppo_with_its_own_critic_extractor_reinitialises_it(image_env) -> None:
    model = crl.PPO("CnnPolicy", image_env((36, 36, 1)), n_steps=32, batch_size=32, n_epochs=1, seed=0,
                    policy_kwargs=dict(share_features_extractor=False))  # fmt: skip
    model.learn(32)
    before = _snapshot(model.policy)
    Reset(parts="full").apply(model, "test")
    after = _snapshot(model.policy)
    critic_extractor = [name for name in before if name.startswith("vf_features_extractor.")]
    assert critic_extractor and all(not th.equal(before[name], after[name]) for name in critic_extractor)


@pytest.mark.parametrize(
    ("algorithm", "intervention", "needs"),
    [
        ("DQN", PlasticityInjection(at_step=64), "an encoder below the head"),
        ("DQN", Reset(parts="head"), "parts='head' to find a head"),
        ("PPO", PFO(), "a penultimate pre-activation"),
    ],
)
def test_interventions_that_need_a_hidden_layer_refuse_net_arch_empty(algorithm, intervention, needs) -> None:
    with pytest.raises(InterventionError, match=rf"{needs}.*network\(s\) \['(q_net|actor)'\] have no hidden layer"):
        getattr(crl, algorithm)(
            "MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[]), interventions=[intervention]
        )
