"""The gradient step's shortcuts (optimizer calls, replay sampling): torch's and SB3's results, bit for bit."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import stable_baselines3 as sb3
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer
from test_sb3_equivalence import CASES, _train, assert_same_training
from torch.optim.optimizer import register_optimizer_step_post_hook

import crl
from crl.algorithms.replay import sample_replay
from crl.optim import KEPT_GRADIENT_BYTES, drop_unreached, optimizer_step, use_multi_tensor_updates, zero_grad

ADAMS = [
    (th.optim.Adam, {}),
    (th.optim.Adam, {"amsgrad": True, "weight_decay": 0.1, "maximize": True}),
    (th.optim.AdamW, {"weight_decay": 0.1}),
    (th.optim.Adam, {"foreach": False}),
]


def _adam_run(optimizer_class: type, kwargs: dict, step: Callable[[th.optim.Optimizer], None]) -> list[th.Tensor]:
    """Parameters and optimizer state after 30 updates, with a tensor left without gradient at some
    steps and one whose state is dropped halfway (as a reset does), so that state is initialised twice."""
    generator = th.Generator().manual_seed(0)
    parameters = [th.randn(shape, generator=generator).requires_grad_() for shape in ((7, 5), (7,), (3, 7), (3,))]
    optimizer = optimizer_class(parameters, lr=1e-2, **kwargs)
    use_multi_tensor_updates(optimizer)
    for index in range(30):
        for parameter in parameters:
            parameter.grad = th.randn(parameter.shape, generator=generator)
        if index % 4 == 1:
            parameters[1].grad = None
        if index == 15:
            del optimizer.state[parameters[2]]
        step(optimizer)
    moments = [value for p in parameters for value in optimizer.state[p].values()]
    return [p.detach() for p in parameters] + moments


@pytest.mark.parametrize(("optimizer_class", "kwargs"), ADAMS)
def test_optimizer_step_is_torchs_step_bit_for_bit(optimizer_class: type, kwargs: dict) -> None:
    ours = _adam_run(optimizer_class, kwargs, optimizer_step)
    torchs = _adam_run(optimizer_class, kwargs, lambda optimizer: optimizer.step())
    assert len(ours) == len(torchs)
    assert all(a.dtype == b.dtype and th.equal(a, b) for a, b in zip(ours, torchs, strict=True))


def _adam_with_gradient() -> tuple[th.Tensor, th.optim.Adam]:
    parameter = th.ones(3, requires_grad=True)
    parameter.grad = th.ones(3)
    return parameter, th.optim.Adam([parameter], lr=0.1)


def test_optimizer_step_updates_without_recording_a_graph_where_gradients_are_on() -> None:
    parameter, optimizer = _adam_with_gradient()
    with th.enable_grad():
        optimizer_step(optimizer)
    assert parameter.grad_fn is None and parameter.is_leaf
    assert th.all(parameter < 1.0)


def test_optimizer_step_runs_the_hooks_of_the_instance_and_global_ones() -> None:
    calls: list[str] = []
    _, optimizer = _adam_with_gradient()
    optimizer.register_step_pre_hook(lambda *_: calls.append("pre"))
    optimizer_step(optimizer)
    handle = register_optimizer_step_post_hook(lambda *_: calls.append("global post"))
    try:
        _, other = _adam_with_gradient()
        optimizer_step(other)
    finally:
        handle.remove()
    assert calls == ["pre", "global post"]


def test_optimizer_step_keeps_an_lr_schedulers_wrapper() -> None:
    _, optimizer = _adam_with_gradient()
    scheduler = th.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    optimizer._opt_called = False
    optimizer_step(optimizer)
    assert optimizer._opt_called
    scheduler.step()


def _profiled(call: Callable[[th.optim.Optimizer], None]) -> list[str]:
    _, optimizer = _adam_with_gradient()
    with th.profiler.profile(activities=[th.profiler.ProfilerActivity.CPU]) as profiler:
        call(optimizer)
    return [event.name for event in profiler.events()]


def test_a_running_profiler_sees_torchs_optimizer_spans() -> None:
    assert "Optimizer.step#Adam.step" in _profiled(optimizer_step)
    assert "Optimizer.zero_grad#Adam.zero_grad" in _profiled(zero_grad)


def test_optimizer_step_calls_a_replaced_step_and_other_optimizers_step() -> None:
    calls: list[str] = []

    class LoggedAdam(th.optim.Adam):
        def step(self, closure=None):  # type: ignore[override]
            calls.append("class")
            return super().step(closure)

    class ProfiledAdam(th.optim.Adam):  # torch's step wrapper calls this hook after each step
        def _optimizer_step_code(self) -> None:
            calls.append("subclass hook")

    for optimizer_class in (LoggedAdam, ProfiledAdam):
        parameter, _ = _adam_with_gradient()
        optimizer_step(optimizer_class([parameter]))
    _, adam = _adam_with_gradient()
    step = adam.step
    adam.step = lambda *args: calls.append("instance") or step(*args)  # type: ignore[method-assign]
    optimizer_step(adam)
    assert calls == ["class", "subclass hook", "instance"]

    parameter, _ = _adam_with_gradient()
    optimizer_step(th.optim.SGD([parameter], lr=0.25))
    assert th.equal(parameter.detach(), th.full((3,), 0.75))


def test_zero_grad_sets_every_gradient_to_none_and_calls_a_replaced_one() -> None:
    parameter, optimizer = _adam_with_gradient()
    other = th.ones(2, requires_grad=True)
    optimizer.add_param_group({"params": [other]})
    other.grad = th.ones(2)
    zero_grad(optimizer)
    assert parameter.grad is None and other.grad is None

    calls: list[bool] = []

    class KeepingAdam(th.optim.Adam):
        def zero_grad(self, set_to_none: bool = True) -> None:
            calls.append(set_to_none)
            super().zero_grad(set_to_none=False)

    parameter.grad = th.ones(3)
    zero_grad(KeepingAdam([parameter]))
    assert calls == [True] and th.equal(parameter.grad, th.zeros(3))


def test_zero_grad_keeps_large_cpu_gradients_zeroed_and_drops_small_ones() -> None:
    large = th.ones(KEPT_GRADIENT_BYTES // 4, requires_grad=True)  # float32: exactly the threshold
    small = th.ones(KEPT_GRADIENT_BYTES // 4 - 1, requires_grad=True)
    optimizer = th.optim.Adam([large, small])
    large.grad, small.grad = th.ones_like(large), th.ones_like(small)
    kept_gradient = large.grad
    kept = zero_grad(optimizer)
    assert large.grad is kept_gradient and not large.grad.any()
    assert small.grad is None
    assert [parameter for parameter, _, _ in kept] == [large]


def _bits(tensor: th.Tensor) -> th.Tensor:
    """The tensor's bit patterns, so that a comparison also tells -0.0 from 0.0."""
    return tensor.detach().view(th.int32)


def _train_with_gaps(optimizer_class: type, kwargs: dict, dropping: bool) -> list[th.Tensor]:
    """Parameters after 12 steps of a loss that skips the large ``second`` at every third step and
    one ``create_graph`` backward; each step's gradients dropped (SB3's ``zero_grad``) or kept."""
    generator = th.Generator().manual_seed(0)
    first, second = (th.randn(64, 1024, generator=generator).requires_grad_() for _ in range(2))
    optimizer = optimizer_class([first, second], lr=1e-2, **kwargs)
    for index in range(12):
        inputs = th.randn(1024, 8, generator=generator)
        reaches_second = index % 3 != 1
        weights = first + second if reaches_second else first
        loss = (weights @ inputs).tanh().square().mean()
        if dropping:
            optimizer.zero_grad()
            loss.backward(create_graph=index == 5)
        else:
            kept = zero_grad(optimizer)
            loss.backward(create_graph=index == 5)
            drop_unreached(kept)
            assert (second.grad is not None) == reaches_second
        optimizer.step()
    return [first, second]


@pytest.mark.parametrize(
    ("optimizer_class", "kwargs"),
    [(th.optim.Adam, {}), (th.optim.AdamW, {"weight_decay": 0.1}), (th.optim.SGD, {"momentum": 0.9})],
)
def test_kept_gradients_train_bitwise_like_dropped_ones(optimizer_class: type, kwargs: dict) -> None:
    """A kept gradient that backward did not reach is dropped again, so the optimizer skips it."""
    kept = _train_with_gaps(optimizer_class, kwargs, dropping=False)
    dropped = _train_with_gaps(optimizer_class, kwargs, dropping=True)
    assert all(th.equal(_bits(a), _bits(b)) for a, b in zip(kept, dropped, strict=True))


@pytest.mark.parametrize("name", list(CASES))
def test_every_gradient_kept_trains_like_sb3(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = _train(getattr(sb3, name), name)
    monkeypatch.setattr(crl.optim, "KEPT_GRADIENT_BYTES", 0)
    kept_counts: list[int] = []

    def counting_zero_grad(optimizer: th.optim.Optimizer) -> list:
        kept = zero_grad(optimizer)
        kept_counts.append(len(kept))
        return kept

    monkeypatch.setattr(crl.optim, "zero_grad", counting_zero_grad)
    candidate = _train(getattr(crl, name), name)
    assert_same_training(reference, candidate)
    assert max(kept_counts) >= 4  # every step after the first kept its network's gradients


LAYOUTS = {
    "timeouts": {"handle_timeout_termination": True},
    "no_timeouts": {"handle_timeout_termination": False},
    # SB3's usual Atari setting: one array of observations, a transition's next one in the following slot
    "memory_saving": {"optimize_memory_usage": True, "handle_timeout_termination": False},
}
"""Replay buffer keyword arguments of each layout SB3 stores transitions in."""


def _filled_buffer(
    observation_space: spaces.Space, action_space: spaces.Space, n_envs: int, steps: int, **kwargs
) -> ReplayBuffer:
    """A replay buffer of 50 slots after ``steps`` additions of seeded random transitions, some ended by time limit."""
    buffer = ReplayBuffer(50, observation_space, action_space, device="cpu", n_envs=n_envs, **kwargs)
    rng = np.random.default_rng(0)
    observation_space.seed(0)
    action_space.seed(0)
    for _ in range(steps):
        observations = np.stack([observation_space.sample() for _ in range(n_envs)])
        next_observations = np.stack([observation_space.sample() for _ in range(n_envs)])
        actions = np.stack([action_space.sample() for _ in range(n_envs)])
        dones = rng.random(n_envs) < 0.3
        infos = [{"TimeLimit.truncated": bool(rng.random() < 0.5)} for _ in range(n_envs)]
        buffer.add(observations, next_observations, actions, rng.standard_normal(n_envs), dones, infos)
    return buffer


@pytest.mark.parametrize(
    ("observation_space", "action_space"),
    [
        (spaces.Box(-1.0, 1.0, (4,), np.float32), spaces.Discrete(3)),
        (spaces.Box(0, 255, (2, 6, 6), np.uint8), spaces.Discrete(4)),
        (spaces.Box(-1.0, 1.0, (3,), np.float64), spaces.Box(-2.0, 2.0, (2,), np.float32)),
    ],
)
@pytest.mark.parametrize(("n_envs", "steps"), [(1, 30), (3, 30), (2, 80)])
@pytest.mark.parametrize("layout", LAYOUTS, ids=list(LAYOUTS))
def test_sample_replay_is_sb3s_minibatch(
    observation_space: spaces.Space, action_space: spaces.Space, n_envs: int, steps: int, layout: str
) -> None:
    """Same entries from the same draws, same dtypes, shapes and strides; a full buffer (80 additions) too."""
    buffer = _filled_buffer(observation_space, action_space, n_envs, steps, **LAYOUTS[layout])
    np.random.seed(1)
    sb3s = buffer.sample(16)
    next_draw_after_sb3s = np.random.randint(1 << 30)
    np.random.seed(1)
    ours = sample_replay(buffer, 16)
    assert np.random.randint(1 << 30) == next_draw_after_sb3s  # the same draws consumed
    for name in sb3s._fields:
        theirs, mine = getattr(sb3s, name), getattr(ours, name)
        if theirs is None:
            assert mine is None, name
            continue
        assert mine.dtype == theirs.dtype and mine.shape == theirs.shape and mine.stride() == theirs.stride(), name
        assert th.equal(mine, theirs), name


def test_sampled_tensors_share_no_memory_with_the_buffer() -> None:
    buffer = _filled_buffer(spaces.Box(-1.0, 1.0, (4,), np.float32), spaces.Discrete(3), 1, 30)
    stored = [array.copy() for array in (buffer.observations, buffer.next_observations, buffer.actions)]
    batch = sample_replay(buffer, 8)
    for tensor in (batch.observations, batch.next_observations, batch.actions, batch.dones, batch.rewards):
        tensor.add_(1)
    kept = (buffer.observations, buffer.next_observations, buffer.actions)
    assert all(np.array_equal(a, b) for a, b in zip(stored, kept, strict=True))


def test_sample_replay_leaves_other_buffers_and_normalized_envs_to_their_sample() -> None:
    calls: list[str] = []

    class CountingBuffer(ReplayBuffer):
        def sample(self, batch_size, env=None):
            calls.append(type(self).__name__ if env is None else "with env")
            return super().sample(batch_size, env)

    box, discrete = spaces.Box(-1.0, 1.0, (4,), np.float32), spaces.Discrete(3)
    own = CountingBuffer(50, box, discrete, device="cpu")
    own.add(np.zeros((1, 4)), np.ones((1, 4)), np.array([[1]]), np.ones(1), np.zeros(1), [{}])
    sample_replay(own, 4)
    replaced = _filled_buffer(box, discrete, 1, 30)
    replaced.sample = lambda batch_size, env=None: calls.append("instance")  # type: ignore[method-assign]
    sample_replay(replaced, 4)
    gathered = _filled_buffer(box, discrete, 1, 30)
    gathered._get_samples = lambda batch_inds, env=None: calls.append("gather")  # type: ignore[method-assign]
    sample_replay(gathered, 4)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(ReplayBuffer, "sample", lambda self, batch_size, env=None: calls.append("sb3"))
        sample_replay(_filled_buffer(box, discrete, 1, 30, **LAYOUTS["memory_saving"]), 4)  # the fast path
        sample_replay(_filled_buffer(box, discrete, 1, 30), 4, env=object())  # type: ignore[arg-type]
    assert calls == ["CountingBuffer", "instance", "gather", "sb3"]


@pytest.mark.parametrize("algorithm", ["DQN", "SAC"])
def test_training_with_adamw_through_the_direct_step_is_sb3s(algorithm: str) -> None:
    """AdamW with weight decay takes the direct optimizer step in every update of both algorithms."""
    env_id = "CartPole-v1" if algorithm == "DQN" else "Pendulum-v1"
    policy_kwargs = {"optimizer_class": th.optim.AdamW, "optimizer_kwargs": {"weight_decay": 0.1}}
    models = []
    for library in (sb3, crl):  # each built and trained in turn: building one seeds the global generators
        model = getattr(library, algorithm)(
            "MlpPolicy", env_id, learning_starts=100, batch_size=32, policy_kwargs=policy_kwargs, seed=0
        )
        models.append(model.learn(400))
    assert_same_training(*models)
