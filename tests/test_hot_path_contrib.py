"""The direct forward passes of crl's sb3-contrib algorithms: QR-DQN's quantile network, TQC's critics.

They skip ``nn.Module``'s call machinery and compute bitwise what sb3-contrib's module calls compute,
with the same gradients; a hook or a network with its own ``forward`` takes the module call.
"""

from __future__ import annotations

import copy
from unittest.mock import patch

import pytest
import torch as th
from sb3_contrib.common.utils import quantile_huber_loss
from sb3_contrib.qrdqn import policies as qrdqn_policies
from test_hot_path import _Frames, _LinearExtractor, _module_calls, assert_critic_gradients_are_the_module_calls

import crl
from crl.policies.direct_forward import step_layer
from crl.policies.qrdqn import QRDQNPolicy

QRDQN_ARGS = dict(learning_starts=100, train_freq=10, target_update_interval=100, batch_size=32, seed=0, device="cpu")


def _no_module_call():
    return patch.object(th.nn.Module, "_call_impl", side_effect=AssertionError("a module was called"))


def _qrdqn(**policy_kwargs) -> crl.QRDQN:
    policy_kwargs = dict(net_arch=[32, 32], n_quantiles=7, **policy_kwargs)
    model = crl.QRDQN("MlpPolicy", "CartPole-v1", policy_kwargs=policy_kwargs, **QRDQN_ARGS)
    model.learn(200)
    return model


def _randomized(network: th.nn.Module, seed: int = 0) -> None:
    """Random weights, so that every action of CartPole is greedy for some observations."""
    generator = th.Generator().manual_seed(seed)
    with th.no_grad():
        for parameter in network.parameters():
            parameter.copy_(th.randn(parameter.shape, generator=generator))


@pytest.mark.parametrize("layer_norm", [None, "pre"])
def test_qrdqn_acts_through_the_layers_directly_as_sb3_contrib(layer_norm: str | None) -> None:
    policy = _qrdqn(layer_norm=layer_norm).policy
    policy.set_training_mode(False)
    _randomized(policy.quantile_net, seed=3)
    observations = th.randn(256, 4, generator=th.Generator().manual_seed(1))
    with th.no_grad():
        with _no_module_call():
            actions = policy._predict(observations)
        # sb3-contrib's policy asks its quantile network, through the module call
        expected = qrdqn_policies.QRDQNPolicy._predict(policy, observations)
    assert th.equal(actions, expected) and len(actions.unique()) == 2
    layers = [type(step_layer(step)) for step in policy._direct_quantile_layers(policy.quantile_net)]
    hidden = [th.nn.Linear, th.nn.LayerNorm, th.nn.ReLU] if layer_norm else [th.nn.Linear, th.nn.ReLU]
    assert layers == [th.nn.Flatten, *hidden, *hidden, th.nn.Linear]


def test_qrdqn_trains_through_the_layers_directly_with_the_module_calls_values_and_gradients() -> None:
    model = _qrdqn()
    batch = model.replay_buffer.sample(32)
    with _no_module_call():
        target = model._td_target(batch)
        loss = model._td_loss(batch, target)
    with th.no_grad():
        next_quantiles = model.quantile_net_target(batch.next_observations)
        greedy = next_quantiles.mean(dim=1).argmax(dim=1)
        next_quantiles = next_quantiles[th.arange(32), :, greedy]
    assert th.equal(target, batch.rewards + (1 - batch.dones) * model.gamma * next_quantiles)
    quantiles = model.quantile_net(batch.observations)[th.arange(32), :, batch.actions.flatten()]
    expected = quantile_huber_loss(quantiles, target, sum_over_quantiles=True)
    assert th.equal(loss, expected)
    model.policy.zero_grad()  # learn() leaves its last gradients
    loss.backward()
    ours = [p.grad.clone() for p in model.quantile_net.parameters()]
    model.policy.zero_grad()
    expected.backward()
    assert all(th.equal(a, p.grad) for a, p in zip(ours, model.quantile_net.parameters(), strict=True))


def test_a_hook_on_the_target_quantile_network_sees_the_td_target_until_it_is_removed() -> None:
    model = _qrdqn()
    batch = model.replay_buffer.sample(16)
    seen: list[th.Tensor] = []
    handle = model.quantile_net_target.quantile_net[0].register_forward_hook(lambda m, i, output: seen.append(output))
    model._td_target(batch)
    handle.remove()
    model._td_target(batch)
    assert len(seen) == 1 and seen[0].shape == (16, 32)
    assert model.policy._direct_target_layers(model.quantile_net_target) is not None


class _ScaledQuantiles(qrdqn_policies.QuantileNetwork):
    def forward(self, obs: th.Tensor) -> th.Tensor:
        return 2 * super().forward(obs)


class _ScaledQuantilePolicy(QRDQNPolicy):
    def make_quantile_net(self) -> qrdqn_policies.QuantileNetwork:
        net_args = self._update_features_extractor(self.net_args, features_extractor=None)
        return _ScaledQuantiles(**net_args).to(self.device)


def test_a_quantile_network_with_its_own_forward_is_called_as_a_module() -> None:
    model = crl.QRDQN(_ScaledQuantilePolicy, "CartPole-v1", policy_kwargs=dict(n_quantiles=5), **QRDQN_ARGS)
    observations = th.randn(8, 4, generator=th.Generator().manual_seed(2))
    with th.no_grad():
        quantiles = model.policy.quantiles(observations)
        assert th.equal(quantiles, 2 * qrdqn_policies.QuantileNetwork.forward(model.quantile_net, observations))
    assert model.policy._direct_quantile_layers(model.quantile_net) is None


def _tqc(**policy_kwargs) -> crl.TQC:
    policy_kwargs = dict(net_arch=[32, 32], n_quantiles=5, **policy_kwargs)
    model = crl.TQC("MlpPolicy", "Pendulum-v1", learning_starts=0, policy_kwargs=policy_kwargs, seed=0, device="cpu")
    model.learn(100)
    return model


@pytest.mark.parametrize("target", [False, True])
def test_tqc_critics_run_their_layers_directly_with_sb3_contribs_quantiles(target: bool) -> None:
    model = _tqc(n_critics=3)
    batch = model.replay_buffer.sample(32)
    with _no_module_call():
        quantiles = model.policy.quantiles(batch.observations, batch.actions, target=target)
    critic = model.critic_target if target else model.critic
    expected = critic(batch.observations, batch.actions)
    assert quantiles.shape == (32, 3, 5) and th.equal(quantiles, expected)


@pytest.mark.parametrize("share_features_extractor", [False, True])
def test_tqc_critic_direct_pass_has_sb3_contribs_gradients(share_features_extractor: bool) -> None:
    """Also for a features extractor with parameters: sb3-contrib trains a shared one from the actor's loss only."""
    model = _tqc(features_extractor_class=_LinearExtractor, share_features_extractor=share_features_extractor)
    policy = model.policy
    batch = model.replay_buffer.sample(32)
    assert_critic_gradients_are_the_module_calls(policy, policy.quantiles, batch, share_features_extractor)


def test_tqcs_losses_call_only_the_actors_modules() -> None:
    model = _tqc()
    batch = model.replay_buffer.sample(16)
    ent_coef = th.tensor(0.1)

    def losses() -> None:
        target = model._td_target(batch, ent_coef)
        model._critic_loss(batch, target)
        actions_pi, log_prob = model.actor.action_log_prob(batch.observations)
        model._actor_loss(batch, actions_pi, log_prob.reshape(-1, 1), ent_coef)

    called = _module_calls(losses)
    actor_modules = {type(module) for module in model.actor.modules()}
    assert called and set(called) <= actor_modules
    assert len(called) == 2 * len(_module_calls(lambda: model.actor.action_log_prob(batch.observations)))


def test_a_hook_on_a_tqc_critic_sees_the_critic_loss() -> None:
    model = _tqc()
    batch = model.replay_buffer.sample(16)
    seen: list[th.Tensor] = []
    handle = model.critic.qf0[0].register_forward_hook(lambda module, inputs, output: seen.append(output))
    target = model._td_target(batch, th.tensor(0.1))
    model._critic_loss(batch, target)
    handle.remove()
    model._critic_loss(batch, target)
    assert len(seen) == 1 and seen[0].shape == (16, 32)
    assert model.policy._direct_critic_layers(model.critic) is not None


@pytest.mark.parametrize("batch_norm_training", [True, False])
def test_crossq_critics_run_their_layers_directly_with_sb3_contribs_values_and_statistics(
    batch_norm_training: bool,
) -> None:
    """In training mode the critics' BatchRenorm layers update their running statistics: alike on both paths."""
    model = crl.CrossQ(
        "MlpPolicy", "Pendulum-v1", learning_starts=0, policy_kwargs=dict(net_arch=[32, 32]), seed=0, device="cpu"
    )
    model.learn(100)
    batch = model.replay_buffer.sample(32)
    critic = model.critic
    module_critic = copy.deepcopy(critic)
    before = {name: buffer.clone() for name, buffer in critic.named_buffers()}
    critic.set_bn_training_mode(batch_norm_training)
    module_critic.set_bn_training_mode(batch_norm_training)
    with _no_module_call():
        direct = model._q_values(batch.observations, batch.actions)
    expected = module_critic(batch.observations, batch.actions)
    assert len(direct) == 2 and all(th.equal(a, b) for a, b in zip(direct, expected, strict=True))
    module_buffers = dict(module_critic.named_buffers())
    assert all(th.equal(buffer, module_buffers[name]) for name, buffer in critic.named_buffers())
    running = {name: buffer for name, buffer in critic.named_buffers() if name.endswith(("ra_mean", "ra_var"))}
    # the statistics moved in training mode only: the comparison above saw an update
    unchanged = all(th.equal(buffer, before[name]) for name, buffer in running.items())
    assert unchanged != batch_norm_training


def test_qrdqn_probe_pass_on_uint8_frames_has_the_module_calls_features() -> None:
    """The metric suite's pass normalises frames in place of their float copy: the same features, bitwise."""
    frames = th.randint(0, 256, (8, 4, 84, 84), generator=th.Generator().manual_seed(0), dtype=th.uint8)
    policy = crl.QRDQN("CnnPolicy", _Frames(), buffer_size=100, seed=0).policy
    features = policy.hidden_features(frames)["quantile_net"]
    with th.no_grad(), policy.record_features() as recorder:
        policy.quantile_net(frames)  # sb3-contrib's preprocessing, through the module call
    expected = recorder.features()["quantile_net"]
    assert list(features) == list(expected) and len(features) >= 4  # the NatureCNN's layers and the head's
    for name, layer in features.items():
        assert th.equal(layer.pre, expected[name].pre) and th.equal(layer.post, expected[name].post), name
