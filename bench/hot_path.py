"""What each hot-path shortcut of crl saves against SB3's code for the same call (microbenchmarks).

``python bench/hot_path.py [--number 20000] [--write docs/performance.md]``

Each row times one call the way SB3 makes it and the way crl makes it, on the same objects, on one
torch thread (median of 5 timing runs of ``--number`` calls each, the two interleaved). ``--write
FILE`` replaces the block between ``<!-- shortcuts:begin -->`` and ``<!-- shortcuts:end -->``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics
import timeit
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import ale_py
import gymnasium as gym
import numpy as np
import stable_baselines3 as sb3
import torch as th
from overhead import write_block  # bench/ is on sys.path when this runs as a script
from rich.console import Console
from rich.table import Table
from sb3_layer_norm import with_layer_norm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, ConvertCallback
from stable_baselines3.common.env_util import make_atari_env, make_vec_env
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy as SB3ActorCriticPolicy
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.utils import polyak_update
from stable_baselines3.common.vec_env import DummyVecEnv as SB3DummyVecEnv
from stable_baselines3.common.vec_env import VecFrameStack
from stable_baselines3.dqn.policies import DQNPolicy as SB3DQNPolicy

import crl
from crl.algorithms import soft_actor_critic
from crl.algorithms.base import _HookCallback, logged_mean
from crl.algorithms.replay import sample_replay
from crl.interventions import LayerNorm
from crl.metrics import MetricsConfig
from crl.optim import algorithm_optimizers, clip_grad_norm_, optimizer_step, zero_grad
from crl.policies.module_tree import listed_parameters
from crl.wrappers.vec_env import DummyVecEnv

gym.register_envs(ale_py)

Call = Callable[[], object]
POLICY_KWARGS = {"DQN": dict(net_arch=[120, 84]), "PPO": None}


def per_call(sb3_call: Call, crl_call: Call, number: int) -> tuple[float, float]:
    """Median microseconds per call of SB3's and crl's version, timed alternately."""
    times: dict[str, list[float]] = {"sb3": [], "crl": []}
    for _ in range(5):
        for name, call in (("sb3", sb3_call), ("crl", crl_call)):
            times[name].append(timeit.timeit(call, number=number) / number * 1e6)
    return statistics.median(times["sb3"]), statistics.median(times["crl"])


def _policy_and_sb3_switch(algorithm: str, env_id: str) -> tuple[BasePolicy, Callable[[BasePolicy, bool], None]]:
    """A crl policy, and SB3's switch: the method of the first SB3 class after crl's mixin in the MRO."""
    policy = getattr(crl, algorithm)("MlpPolicy", env_id, device="cpu").policy
    sb3_class = next(cls for cls in type(policy).__mro__ if cls.__module__.startswith("stable_baselines3"))
    return policy, sb3_class.set_training_mode  # type: ignore[attr-defined]


def _mode_switch(algorithm: str, env_id: str) -> tuple[Call, Call]:
    policy, sb3_switch = _policy_and_sb3_switch(algorithm, env_id)
    return (lambda: sb3_switch(policy, False)), (lambda: policy.set_training_mode(False))


def _mode_change(algorithm: str, env_id: str) -> tuple[Call, Call]:
    """A switch that changes the mode each call (as each ``train()`` call of DQN and SAC does, twice)."""
    policy, sb3_switch = _policy_and_sb3_switch(algorithm, env_id)
    modes = itertools.cycle([True, False])
    return (lambda: sb3_switch(policy, next(modes))), (lambda: policy.set_training_mode(next(modes)))


def _device() -> tuple[Call, Call]:
    policy = crl.DQN("MlpPolicy", "CartPole-v1", device="cpu").policy
    return (lambda: BasePolicy.device.fget(policy)), (lambda: policy.device)  # type: ignore[attr-defined]


def _obs_to_tensor(env_id: str) -> tuple[Call, Call]:
    if env_id == "CartPole-v1":
        policy = crl.DQN("MlpPolicy", env_id, device="cpu").policy
    else:
        env = VecFrameStack(make_atari_env(env_id, n_envs=1, seed=0), n_stack=4)
        policy = crl.DQN("CnnPolicy", env, buffer_size=1, device="cpu").policy
    space = policy.observation_space
    assert space.shape is not None
    observation = np.zeros((1, *space.shape), space.dtype)
    return (lambda: BasePolicy.obs_to_tensor(policy, observation)), (lambda: policy.obs_to_tensor(observation))


def _without_gradient(call: Call) -> Call:
    """``call`` under ``th.no_grad()``, as SB3 acts."""

    def without() -> object:
        with th.no_grad():
            return call()

    return without


def _greedy_action() -> tuple[Call, Call]:
    """DQN's acting forward pass on the single-file baseline's 120x84 MLP, as ``predict()`` makes it."""
    policy = crl.DQN("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[120, 84]), device="cpu").policy
    policy.set_training_mode(False)
    observation = th.zeros(1, 4)

    return (
        _without_gradient(lambda: SB3DQNPolicy._predict(policy, observation)),
        _without_gradient(lambda: policy._predict(observation)),
    )


def _predict(algorithm: str, env_id: str, layer_norm: bool = False) -> tuple[Call, Call]:
    """A whole acting call on one observation: SB3's policy against crl's, with the same weights.

    SB3's ``predict`` builds a ``no_grad`` context and converts the observation with ``th.as_tensor``;
    crl's switches the gradients off itself and wraps the array with ``th.from_numpy``, around the
    direct forward pass. With ``layer_norm``, crl's policy has ``LayerNorm()`` and SB3's the same
    LayerNorms (``bench/sb3_layer_norm.py``).
    """
    kwargs: dict = {"policy_kwargs": POLICY_KWARGS["DQN"]} if algorithm == "DQN" else {}
    sb3_model = getattr(sb3, algorithm)("MlpPolicy", env_id, seed=0, **kwargs)
    interventions = [LayerNorm()] if layer_norm else None
    sb3s = (with_layer_norm(sb3_model) if layer_norm else sb3_model).policy
    crls = getattr(crl, algorithm)("MlpPolicy", env_id, seed=0, interventions=interventions, **kwargs).policy
    sb3s.load_state_dict(crls.state_dict())
    observation = np.zeros((1, *crls.observation_space.shape), np.float32)
    return (
        lambda: sb3s.predict(observation, deterministic=True),
        lambda: crls.predict(observation, deterministic=True),
    )


def _atari_dqn(learn: int = 0) -> crl.DQN:
    """crl's DQN on Breakout (SB3's Atari preprocessing, 4 frames), with ``learn`` steps in its replay buffer."""
    env = VecFrameStack(make_atari_env("BreakoutNoFrameskip-v4", n_envs=1, seed=0, vec_env_cls=DummyVecEnv), 4)
    model = crl.DQN("CnnPolicy", env, buffer_size=1_000, learning_starts=10_000, seed=0, device="cpu")
    if learn:
        model.learn(learn)
    return model


def _greedy_action_on_frames() -> tuple[Call, Call]:
    """DQN's acting forward pass on a stack of 4 Atari frames (uint8), NatureCNN."""
    policy = _atari_dqn().policy
    policy.set_training_mode(False)
    frames = th.zeros((1, 4, 84, 84), dtype=th.uint8)

    return (
        _without_gradient(lambda: SB3DQNPolicy._predict(policy, frames)),
        _without_gradient(lambda: policy._predict(frames)),
    )


def _actor_critic_forward() -> tuple[Call, Call]:
    """PPO's forward pass at a collection step of 4 CartPoles (64x64 MLPs), action sampled."""
    policy = crl.PPO("MlpPolicy", "CartPole-v1", device="cpu").policy
    policy.set_training_mode(False)
    observations = th.zeros(4, 4)

    return (
        _without_gradient(lambda: SB3ActorCriticPolicy.forward(policy, observations)),
        _without_gradient(lambda: policy.forward(observations)),
    )


def _evaluate_actions(atari: bool) -> tuple[Call, Call]:
    """PPO's pass over a minibatch at a gradient step (autograd on, no backward): 64 CartPole states
    through the 64x64 MLPs, or 256 stacks of 4 Atari frames (uint8) through the NatureCNN."""
    if atari:
        env = VecFrameStack(make_atari_env("BreakoutNoFrameskip-v4", n_envs=8, seed=0, vec_env_cls=DummyVecEnv), 4)
        model = crl.PPO("CnnPolicy", env, n_steps=32, batch_size=256, device="cpu", seed=0)
    else:
        model = crl.PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=64, device="cpu", seed=0)
    model.learn(model.n_steps * model.n_envs)  # one rollout in the buffer
    batch = next(model.rollout_buffer.get(model.batch_size))
    policy, actions = model.policy, batch.actions.long().flatten()
    policy.set_training_mode(True)
    return (
        lambda: SB3ActorCriticPolicy.evaluate_actions(policy, batch.observations, actions),
        lambda: policy.evaluate_actions(batch.observations, actions),
    )


def _vec_env_step(n_envs: int) -> tuple[Call, Call]:
    envs = [
        make_vec_env("CartPole-v1", n_envs=n_envs, seed=0, vec_env_cls=cls) for cls in (SB3DummyVecEnv, DummyVecEnv)
    ]
    actions = np.zeros(n_envs, dtype=np.int64)
    for env in envs:
        env.reset()
    return (lambda: envs[0].step(actions)), (lambda: envs[1].step(actions))


def _hooks_relay() -> tuple[Call, Call]:
    model = crl.DQN("MlpPolicy", "CartPole-v1", metrics=MetricsConfig(), device="cpu")
    listed = CallbackList([ConvertCallback(None), _HookCallback(model._hooks)])
    listed.init_callback(model)
    alone = model._init_callback(None)
    return _step_events(listed), _step_events(alone)


def _step_events(callback: BaseCallback) -> Call:
    """What ``collect_rollouts`` does with the callback at every environment step."""
    variables = {f"local_{index}": index for index in range(25)}  # about what collect_rollouts holds

    def call() -> None:
        callback.update_locals(variables)
        callback.on_step()

    return call


def _no_callback() -> tuple[Call, Call]:
    """The callback events of one environment step when ``learn()`` gets no callback."""
    model = crl.DQN("MlpPolicy", "CartPole-v1", device="cpu")
    sb3_empty = ConvertCallback(None)
    sb3_empty.init_callback(model)
    return _step_events(sb3_empty), _step_events(model._init_callback(None))


def _store_transition() -> tuple[Call, Call]:
    """Storing one CartPole transition in the replay buffer (DQN, one env)."""
    model = crl.DQN("MlpPolicy", "CartPole-v1", learning_starts=10_000, device="cpu")
    model.learn(8)
    new_obs, action, reward, done = np.zeros((1, 4), dtype=np.float32), np.array([0]), np.ones(1), np.zeros(1)
    buffer = model.replay_buffer
    assert buffer is not None

    def sb3s() -> None:
        OffPolicyAlgorithm._store_transition(model, buffer, action, new_obs, reward, done, [{}])

    return sb3s, (lambda: model._store_transition(buffer, action, new_obs, reward, done, [{}]))


def _dqn_training_forwards(atari: bool = False) -> tuple[Call, Call]:
    """The TD target and the Huber loss of one DQN gradient step (forward passes only).

    On CartPole's 120x84 MLP with batch 128, or on NatureCNN with a batch of 32 Atari frame stacks.
    """
    if atari:
        model, batch_size = _atari_dqn(learn=200), 32
    else:
        model = crl.DQN("MlpPolicy", "CartPole-v1", policy_kwargs=POLICY_KWARGS["DQN"], learning_starts=0, device="cpu")
        model.learn(300)
        batch_size = 128
    assert model.replay_buffer is not None
    batch = model.replay_buffer.sample(batch_size)

    def sb3s() -> None:  # SB3's DQN.train, the lines between sampling and the optimizer
        with th.no_grad():
            next_q_values, _ = model.q_net_target(batch.next_observations).max(dim=1)
            target_q_values = batch.rewards + (1 - batch.dones) * model.gamma * next_q_values.reshape(-1, 1)
        current_q_values = th.gather(model.q_net(batch.observations), dim=1, index=batch.actions.long())
        th.nn.functional.smooth_l1_loss(current_q_values, target_q_values)

    return sb3s, (lambda: model._td_loss(batch, model._td_target(batch)))


def _logged_loss() -> tuple[Call, Call]:
    """The loss mean ``train()`` logs after one gradient step."""
    losses = [0.25]
    return (lambda: np.mean(losses)), (lambda: logged_mean(losses))


@contextlib.contextmanager
def _single_tensor_updates(optimizers: Iterable[th.optim.Optimizer]) -> Iterator[None]:
    """torch's default on CPU (SB3's optimizer), instead of crl's multi-tensor Adam, for a while."""
    groups = [group for optimizer in optimizers for group in optimizer.param_groups]
    chosen = [group["foreach"] for group in groups]
    for group in groups:
        group["foreach"] = False
    try:
        yield
    finally:
        for group, foreach in zip(groups, chosen, strict=True):
            group["foreach"] = foreach


def _adam_step(algorithm: str, env_id: str) -> tuple[Call, Call]:
    """One Adam step of a policy's optimizer, on gradients of the policy's size."""
    model = getattr(crl, algorithm)("MlpPolicy", env_id, policy_kwargs=POLICY_KWARGS[algorithm], device="cpu")
    optimizer = model.policy.optimizer
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            parameter.grad = th.full_like(parameter, 1e-3)

    def single_tensor() -> None:
        with _single_tensor_updates([optimizer]):
            optimizer.step()

    return single_tensor, (lambda: optimizer_step(optimizer))


def _adam_step_on_frames() -> tuple[Call, Call]:
    """One Adam step of DQN's NatureCNN with every other unit dormant: half of each layer's rows get no gradient.

    Their second moments stay exactly zero, as a dormant unit's do, which sends torch's square root
    to MKL's scalar routine; crl's raises them to ``tiny`` first (:mod:`crl.adam`).
    """
    optimizer = _atari_dqn().policy.optimizer
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            parameter.grad = th.full_like(parameter, 1e-3)
            parameter.grad[::2] = 0.0

    def single_tensor() -> None:
        with _single_tensor_updates([optimizer]):
            optimizer.step()

    return single_tensor, (lambda: optimizer_step(optimizer))


def _zero_grad() -> tuple[Call, Call]:
    """Dropping the gradients of DQN's 120x84 MLP before a backward pass (they are set again for the next call)."""
    model = crl.DQN("MlpPolicy", "CartPole-v1", policy_kwargs=POLICY_KWARGS["DQN"], device="cpu")
    optimizer = model.policy.optimizer
    parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]
    gradients = [th.zeros_like(parameter) for parameter in parameters]

    def regrown(drop: Callable[[], None]) -> Call:
        def call() -> None:
            drop()
            for parameter, gradient in zip(parameters, gradients, strict=True):
                parameter.grad = gradient

        return call

    return regrown(optimizer.zero_grad), regrown(lambda: zero_grad(optimizer))


def _replay_sample(atari: bool) -> tuple[Call, Call]:
    """Drawing a DQN minibatch: 128 CartPole transitions, or 32 of stacked Atari frames."""
    if atari:
        model, batch_size = _atari_dqn(learn=200), 32
    else:
        model = crl.DQN("MlpPolicy", "CartPole-v1", learning_starts=10_000, device="cpu")
        model.learn(1_000)
        batch_size = 128
    buffer = model.replay_buffer
    assert buffer is not None
    return (lambda: buffer.sample(batch_size)), (lambda: sample_replay(buffer, batch_size))


def _gradient_clip(algorithm: str, env_id: str, clipping: bool) -> tuple[Call, Call]:
    """Clipping the gradient norm of a policy at ``max_grad_norm``, as ``train()`` does.

    :param clipping: gradients above ``max_grad_norm`` (each call scales them by a factor below 1) or
        below it (the factor is 1)
    """
    model = getattr(crl, algorithm)("MlpPolicy", env_id, policy_kwargs=POLICY_KWARGS[algorithm], device="cpu")
    for group in model.policy.optimizer.param_groups:
        for parameter in group["params"]:
            parameter.grad = th.full_like(parameter, 1.0 if clipping else 1e-3)
    policy, max_norm = model.policy, model.max_grad_norm
    return (lambda: th.nn.utils.clip_grad_norm_(policy.parameters(), max_norm)), (
        lambda: clip_grad_norm_(listed_parameters(policy), max_norm)
    )


def _gradient_step(algorithm: str, env_id: str, batch_size: int) -> tuple[Call, Call]:
    """A ``train()`` call of one gradient step: SB3's (with torch's single-tensor Adam) and crl's, on one model."""
    policy_kwargs = POLICY_KWARGS.get(algorithm)
    model = getattr(crl, algorithm)(
        "MlpPolicy", env_id, policy_kwargs=policy_kwargs, learning_starts=0, device="cpu", seed=0
    )
    model.learn(300)
    sb3_train = getattr(sb3, algorithm).train

    def sb3s() -> None:
        with _single_tensor_updates(algorithm_optimizers(model)):
            sb3_train(model, gradient_steps=1, batch_size=batch_size)

    return sb3s, (lambda: model.train(gradient_steps=1, batch_size=batch_size))


def _polyak() -> tuple[Call, Call]:
    model = crl.SAC("MlpPolicy", "Pendulum-v1", device="cpu")
    critic, target = list(model.critic.parameters()), list(model.critic_target.parameters())
    return (
        (lambda: polyak_update(critic, target, 0.005)),
        (lambda: soft_actor_critic.polyak_update(critic, target, 0.005)),
    )


ROWS: dict[str, tuple[Callable[[], tuple[Call, Call]], float]] = {
    "mode switch when already set, DQN MLP (`set_training_mode`)": (lambda: _mode_switch("DQN", "CartPole-v1"), 1),
    "mode switch when already set, SAC MLP": (lambda: _mode_switch("SAC", "Pendulum-v1"), 1),
    "mode switch that changes the mode, DQN MLP": (lambda: _mode_change("DQN", "CartPole-v1"), 0.5),
    "mode switch that changes the mode, SAC MLP": (lambda: _mode_change("SAC", "Pendulum-v1"), 0.2),
    "policy `device`": (_device, 1),
    "`obs_to_tensor` (device look-up aside), CartPole": (lambda: _obs_to_tensor("CartPole-v1"), 1),
    "`obs_to_tensor` (device look-up aside), Atari frames": (lambda: _obs_to_tensor("BreakoutNoFrameskip-v4"), 0.2),
    "greedy action, DQN 120x84 MLP (`_predict`)": (_greedy_action, 1),
    "greedy action, DQN NatureCNN, 4 Atari frames (`_predict`)": (_greedy_action_on_frames, 0.02),
    "acting call, DQN 120x84 MLP, 1 observation (`predict`, SB3's policy against crl's)": (
        lambda: _predict("DQN", "CartPole-v1"),
        0.5,
    ),
    "acting call, SAC 256x256 actor, 1 observation (`predict`, SB3's policy against crl's)": (
        lambda: _predict("SAC", "Pendulum-v1"),
        0.2,
    ),
    "acting call, DQN 120x84 MLP with LayerNorm, 1 observation (`predict`, SB3 with the same LayerNorms)": (
        lambda: _predict("DQN", "CartPole-v1", layer_norm=True),
        0.5,
    ),
    "actor-critic forward, PPO 64x64 MLP, 4 envs (`forward`)": (_actor_critic_forward, 0.5),
    "PPO's minibatch pass, 64x64 MLPs, 64 CartPole states (`evaluate_actions`)": (
        lambda: _evaluate_actions(atari=False),
        0.2,
    ),
    "PPO's minibatch pass, NatureCNN, 256 stacks of 4 Atari frames": (lambda: _evaluate_actions(atari=True), 0.0005),
    "`VecEnv.step`, 1 CartPole (env included)": (lambda: _vec_env_step(1), 1),
    "`VecEnv.step`, 4 CartPoles (envs included)": (lambda: _vec_env_step(4), 0.5),
    "callbacks per step, default metrics on": (_hooks_relay, 1),
    "callbacks per step, no callback given (`learn()`)": (_no_callback, 1),
    "storing a transition, CartPole (`_store_transition`)": (_store_transition, 0.5),
    "DQN TD target and Huber loss, 120x84 MLP, batch 128 (`train`)": (_dqn_training_forwards, 0.2),
    "DQN TD target and Huber loss, NatureCNN, batch 32 of 4 Atari frames": (
        lambda: _dqn_training_forwards(atari=True),
        0.005,
    ),
    "loss logged after one gradient step (`np.mean`)": (_logged_loss, 1),
    "minibatch from the replay buffer, 128 CartPole transitions (`sample`)": (lambda: _replay_sample(False), 0.5),
    "minibatch from the replay buffer, 32 stacks of 4 Atari frames": (lambda: _replay_sample(True), 0.05),
    "gradients dropped, DQN 120x84 MLP (`zero_grad`)": (_zero_grad, 1),
    "Adam step, DQN 120x84 MLP (6 tensors)": (lambda: _adam_step("DQN", "CartPole-v1"), 0.2),
    "Adam step, PPO 64x64 MLPs (12 tensors)": (lambda: _adam_step("PPO", "CartPole-v1"), 0.2),
    "Adam step, DQN NatureCNN (10 tensors), every other unit dormant": (_adam_step_on_frames, 0.005),
    "gradient-norm clip, DQN 120x84 MLP, norm below `max_grad_norm` (`clip_grad_norm_`)": (
        lambda: _gradient_clip("DQN", "CartPole-v1", clipping=False),
        0.2,
    ),
    "gradient-norm clip, DQN 120x84 MLP, norm above `max_grad_norm`": (
        lambda: _gradient_clip("DQN", "CartPole-v1", clipping=True),
        0.2,
    ),
    "gradient-norm clip, PPO 64x64 MLPs, norm above `max_grad_norm`": (
        lambda: _gradient_clip("PPO", "CartPole-v1", clipping=True),
        0.2,
    ),
    "DQN gradient step, 120x84 MLP, batch 128 (`train`)": (lambda: _gradient_step("DQN", "CartPole-v1", 128), 0.05),
    "SAC gradient step, 256 x 256, batch 256 (`train`)": (lambda: _gradient_step("SAC", "Pendulum-v1", 256), 0.005),
    "SAC target update (`polyak_update`)": (_polyak, 0.05),
}
"""Row label -> (builds SB3's and crl's call, share of ``--number`` to time: slow calls get fewer)."""


def markdown(rows: list[tuple[str, float, float]], number: int) -> str:
    lines = [
        "<!-- shortcuts:begin -->",
        "",
        f"Command: `python bench/hot_path.py --number {number}` (microseconds per call, median of 5).",
        "",
        "| call | SB3 (us) | crl (us) | saved |",
        "|---|---|---|---|",
    ]
    for label, sb3_us, crl_us in rows:
        lines.append(f"| {label} | {sb3_us:,.1f} | {crl_us:,.1f} | {100 * (1 - crl_us / sb3_us):.0f} % |")
    lines += ["", "<!-- shortcuts:end -->"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20_000, help="calls per timing run of the fast calls")
    parser.add_argument("--write", type=Path, help="write the table into this Markdown file's shortcuts block")
    args = parser.parse_args()
    th.set_num_threads(1)
    rows = []
    table = Table("call", "SB3 (us)", "crl (us)", "saved")
    for label, (make, share) in ROWS.items():
        sb3_us, crl_us = per_call(*make(), number=max(1, round(share * args.number)))
        rows.append((label, sb3_us, crl_us))
        table.add_row(label, f"{sb3_us:,.1f}", f"{crl_us:,.1f}", f"{100 * (1 - crl_us / sb3_us):.0f} %")
    Console().print(table)
    if args.write:
        write_block(args.write, markdown(rows, args.number))


if __name__ == "__main__":
    main()
