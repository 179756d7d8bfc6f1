"""The acting and storing shortcuts of the sixth hot-path round: SB3's results, bit for bit."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import stable_baselines3 as sb3
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.vec_env import VecNormalize

import crl
from crl.algorithms.replay import add_transition
from crl.policies.base import array_as_tensor
from crl.policies.direct_forward import layer_step, step_layer
from crl.wrappers.vec_env import DummyVecEnv, copy_infos


def _policies() -> dict[str, BasePolicy]:
    """A crl policy of each kind, each trained a little so that its outputs are not all alike."""
    return {
        "dqn": crl.DQN("MlpPolicy", "CartPole-v1", learning_starts=0, seed=0).learn(64).policy,
        "sac": crl.SAC("MlpPolicy", "Pendulum-v1", learning_starts=0, seed=0).learn(16).policy,
        # Actions spread wide of Pendulum's bounds, so that predict() clips them
        "ppo_box": crl.PPO(
            "MlpPolicy", "Pendulum-v1", n_steps=32, batch_size=32, policy_kwargs={"log_std_init": 2.0}, seed=0
        )
        .learn(32)
        .policy,
        "ppo_discrete": crl.PPO("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32, seed=0).learn(32).policy,
    }


@pytest.fixture(scope="module")
def policies() -> dict[str, BasePolicy]:
    return _policies()


@pytest.mark.parametrize("name", ["dqn", "sac", "ppo_box", "ppo_discrete"])
@pytest.mark.parametrize("deterministic", [True, False])
@pytest.mark.parametrize("batch", [None, 1, 5])
def test_predict_is_sb3s(policies: dict[str, BasePolicy], name: str, deterministic: bool, batch: int | None) -> None:
    """Same actions (values, dtype, shape; unbatched observations squeezed) from the same random draws."""
    policy = policies[name]
    space = policy.observation_space
    space.seed(0)
    observation = space.sample() if batch is None else np.stack([space.sample() for _ in range(batch)])
    th.manual_seed(1)
    theirs, their_state = BasePolicy.predict(policy, observation, deterministic=deterministic)
    next_draw_after_sb3s = th.rand(1)
    th.manual_seed(1)
    ours, state = policy.predict(observation, deterministic=deterministic)
    assert th.equal(th.rand(1), next_draw_after_sb3s)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape and np.array_equal(ours, theirs)
    assert state is None and their_state is None


@pytest.mark.parametrize("grad_enabled", [True, False])
def test_predict_computes_without_gradients_and_restores_the_grad_mode(
    policies: dict[str, BasePolicy], grad_enabled: bool
) -> None:
    policy = policies["sac"]
    seen: list[bool] = []
    predict = policy._predict

    def recording_predict(observation: th.Tensor, deterministic: bool = False) -> th.Tensor:
        seen.append(th.is_grad_enabled())
        return predict(observation, deterministic)

    policy._predict = recording_predict  # type: ignore[method-assign]
    try:
        with th.set_grad_enabled(grad_enabled):
            policy.predict(np.zeros(3, np.float32))
            assert th.is_grad_enabled() is grad_enabled
    finally:
        del policy._predict
    assert seen == [False]


def test_predict_restores_the_grad_mode_when_the_network_raises(policies: dict[str, BasePolicy]) -> None:
    policy = policies["dqn"]

    def failing_predict(observation: th.Tensor, deterministic: bool = False) -> th.Tensor:
        raise RuntimeError("network failed")

    policy._predict = failing_predict  # type: ignore[method-assign]
    try:
        with pytest.raises(RuntimeError, match="network failed"):
            policy.predict(np.zeros(4, np.float32))
    finally:
        del policy._predict
    assert th.is_grad_enabled()


def test_predict_rejects_gyms_reset_tuple_with_sb3s_message(policies: dict[str, BasePolicy]) -> None:
    policy = policies["dqn"]
    mistaken = (np.zeros(4, np.float32), {})
    with pytest.raises(ValueError) as sb3_error:
        BasePolicy.predict(policy, mistaken)  # type: ignore[arg-type]
    with pytest.raises(ValueError) as ours_error:
        policy.predict(mistaken)  # type: ignore[arg-type]
    assert str(ours_error.value) == str(sb3_error.value)
    assert "mixing Gym API with SB3 VecEnv API" in str(ours_error.value)


def test_a_scalar_box_observation_is_not_taken_for_a_batch() -> None:
    """For a space of shape ``()`` an array of shape ``()`` is one observation (SB3 checks that first)."""
    policy = crl.policies.DQNPolicy(spaces.Box(-1.0, 1.0, (), np.float32), spaces.Discrete(2), lambda _: 1e-3)
    for observation in (np.full((), 0.5, np.float32), np.ones(3, np.float32)):
        ours, vectorized = policy.obs_to_tensor(observation)
        theirs, sb3_vectorized = BasePolicy.obs_to_tensor(policy, observation)
        assert vectorized == sb3_vectorized and ours.shape == theirs.shape and th.equal(ours, theirs)


def test_a_transposed_image_batch_reaches_the_network_with_sb3s_strides() -> None:
    """``VecTransposeImage`` hands over a transposed view; SB3's reshape to the same shape changes the
    stride of its batch axis of length 1, and the convolution's path (and last bits) with it."""
    space = spaces.Box(0, 255, (3, 36, 36), np.uint8)
    policy = crl.policies.DQNCnnPolicy(space, spaces.Discrete(2), lambda _: 1e-3)
    observation = np.random.default_rng(0).integers(0, 256, (1, 36, 36, 3), np.uint8).transpose(0, 3, 1, 2)
    ours, vectorized = policy.obs_to_tensor(observation)
    theirs, sb3_vectorized = BasePolicy.obs_to_tensor(policy, observation)
    assert vectorized == sb3_vectorized and ours.stride() == theirs.stride() and th.equal(ours, theirs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8, np.int64, np.bool_])
@pytest.mark.parametrize("layout", ["contiguous", "fortran", "strided"])
def test_array_as_tensor_is_as_tensor(dtype: type, layout: str) -> None:
    base = (np.arange(24).reshape(4, 6) % 7).astype(dtype)
    array = {"contiguous": base, "fortran": np.asfortranarray(base), "strided": base[:, ::2]}[layout]
    ours, theirs = array_as_tensor(array, th.device("cpu")), th.as_tensor(array, device=th.device("cpu"))
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape and ours.stride() == theirs.stride()
    assert th.equal(ours, theirs)
    assert ours.data_ptr() == theirs.data_ptr() == array.__array_interface__["data"][0]  # both share the array


def test_array_as_tensor_leaves_other_devices_to_as_tensor() -> None:
    array = np.ones((2, 3), np.float32)
    tensor = array_as_tensor(array, th.device("meta"))
    assert tensor.device.type == "meta" and tensor.shape == (2, 3)


def _stored(store: str, n_envs: int, steps: int, observation_space: spaces.Space, **buffer_kwargs) -> ReplayBuffer:
    """A buffer of 20 slots after ``steps`` transitions stored SB3's way or with ``add_transition``.

    Episodes end at random (terminal observations in the infos, some by time limit), and the
    arrays passed are checked to be left as they were.
    """
    buffer = ReplayBuffer(20, observation_space, spaces.Discrete(3), device="cpu", n_envs=n_envs, **buffer_kwargs)
    rng = np.random.default_rng(0)
    observation_space.seed(0)
    obs = np.stack([observation_space.sample() for _ in range(n_envs)])
    for _ in range(steps):
        new_obs = np.stack([observation_space.sample() for _ in range(n_envs)])
        actions, rewards = rng.integers(0, 3, n_envs), rng.standard_normal(n_envs).astype(np.float32)
        dones = rng.random(n_envs) < 0.3
        infos: list[dict] = [{"TimeLimit.truncated": bool(rng.random() < 0.5)} for _ in range(n_envs)]
        for info, done in zip(infos, dones, strict=True):
            if done:
                info["terminal_observation"] = observation_space.sample()
        passed = [array.copy() for array in (obs, new_obs, actions, rewards, dones)]
        if store == "sb3":
            next_obs = new_obs.copy()
            for i, done in enumerate(dones):
                if done:
                    next_obs[i] = infos[i]["terminal_observation"]
            buffer.add(obs, next_obs, actions, rewards, dones, infos)
        else:
            add_transition(buffer, obs, new_obs, actions, rewards, dones, infos)
        after = (obs, new_obs, actions, rewards, dones)
        assert all(np.array_equal(a, b) for a, b in zip(passed, after, strict=True))
        obs = new_obs
    return buffer


@pytest.mark.parametrize(
    "observation_space",
    [
        spaces.Box(-1.0, 1.0, (4,), np.float32),
        spaces.Box(0, 255, (2, 5, 5), np.uint8),
        spaces.Box(-2, 2, (3,)),
        spaces.Discrete(6),  # stored through SB3's add, which reshapes several envs' observations
    ],
)
@pytest.mark.parametrize(("n_envs", "steps"), [(1, 12), (3, 12), (2, 45)])
@pytest.mark.parametrize(
    "kwargs",
    [
        {"handle_timeout_termination": True},
        {"handle_timeout_termination": False},
        {"optimize_memory_usage": True, "handle_timeout_termination": False},  # next observations in observations
    ],
    ids=["timeouts", "no_timeouts", "memory_saving"],
)
def test_add_transition_stores_sb3s_entries(
    observation_space: spaces.Space, n_envs: int, steps: int, kwargs: dict[str, bool]
) -> None:
    """Every field, the position and the fullness; 45 steps wrap the 20 slots twice."""
    sb3s = _stored("sb3", n_envs, steps, observation_space, **kwargs)
    ours = _stored("crl", n_envs, steps, observation_space, **kwargs)
    assert sb3s.dones.sum() > 0  # some episodes ended
    for field in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
        if not hasattr(sb3s, field):  # the memory-saving layout keeps no array of next observations
            assert not hasattr(ours, field), field
            continue
        theirs, mine = getattr(sb3s, field), getattr(ours, field)
        assert mine.dtype == theirs.dtype and np.array_equal(mine, theirs), field
    assert (ours.pos, ours.full) == (sb3s.pos, sb3s.full)


def test_add_transition_shares_no_memory_with_the_arrays_it_stores() -> None:
    buffer = ReplayBuffer(5, spaces.Box(-1.0, 1.0, (4,), np.float32), spaces.Discrete(2), device="cpu")
    obs, new_obs = np.zeros((1, 4), np.float32), np.ones((1, 4), np.float32)
    add_transition(buffer, obs, new_obs, np.array([1]), np.ones(1, np.float32), np.zeros(1, bool), [{}])
    obs += 5
    new_obs += 5
    assert np.array_equal(buffer.observations[0], np.zeros((1, 4))) and np.array_equal(
        buffer.next_observations[0], np.ones((1, 4))
    )


def test_add_transition_leaves_other_buffers_and_arrays_to_the_buffers_add() -> None:
    """Each case SB3's ``add`` stores differently from a plain assignment gets ``add`` with SB3's next observations."""
    box = spaces.Box(-1.0, 1.0, (4,), np.float32)
    calls: list[tuple[str, np.ndarray]] = []

    class CountingBuffer(ReplayBuffer):
        def add(self, obs, next_obs, action, reward, done, infos):
            calls.append((type(self).__name__, next_obs.copy()))
            super().add(obs, next_obs, action, reward, done, infos)

    def transition(obs_dtype: type = np.float32) -> tuple:
        terminal = np.full(4, 7.0)
        return (
            np.zeros((1, 4), obs_dtype),
            np.ones((1, 4), obs_dtype),
            np.array([1]),
            np.ones(1, np.float32),
            np.ones(1, bool),
            [{"terminal_observation": terminal}],
        )

    add_transition(CountingBuffer(5, box, spaces.Discrete(2), device="cpu"), *transition())
    replaced = ReplayBuffer(5, box, spaces.Discrete(2), device="cpu")
    replaced.add = lambda *args: calls.append(("instance", args[1].copy()))  # type: ignore[method-assign]
    add_transition(replaced, *transition())
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(ReplayBuffer, "add", lambda self, *args: calls.append((str(self.obs_shape), args[1])))
        add_transition(ReplayBuffer(5, spaces.Discrete(6), spaces.Discrete(2), device="cpu"), *transition())
        # float64 observations for a float32 buffer: SB3 writes the terminal one into their float64 copy first
        add_transition(ReplayBuffer(5, box, spaces.Discrete(2), device="cpu"), *transition(np.float64))
        listed = list(transition())
        listed[3] = [1.0]
        add_transition(ReplayBuffer(5, box, spaces.Discrete(2), device="cpu"), *listed)
    assert [name for name, _ in calls] == ["CountingBuffer", "instance", "(1,)", "(4,)", "(4,)"]
    assert all(np.array_equal(next_obs, np.full((1, 4), 7.0)) for _, next_obs in calls)
    assert calls[3][1].dtype == np.float64


def test_algorithms_store_sb3s_transitions_through_add_transition() -> None:
    """DQN (also with the memory-saving layout) and SAC learn from buffers equal to SB3's, through the fast path."""
    memory_saving = {"optimize_memory_usage": True, "replay_buffer_kwargs": {"handle_timeout_termination": False}}
    for name, env_id, kwargs in (
        ("DQN", "CartPole-v1", {}),
        ("DQN", "CartPole-v1", memory_saving),
        ("SAC", "Pendulum-v1", {}),
    ):
        buffers = {}
        for library in (sb3, crl):
            env = DummyVecEnv([lambda env_id=env_id: gym.make(env_id)] * 2)
            model = getattr(library, name)(
                "MlpPolicy", env, learning_starts=10_000, buffer_size=250, seed=0, device="cpu", **kwargs
            )
            with pytest.MonkeyPatch.context() as monkeypatch:
                if library is crl:
                    monkeypatch.setattr(ReplayBuffer, "add", None)  # the fast path does not call it
                model.learn(300)
            buffers[library] = model.replay_buffer
        for field in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
            theirs, mine = getattr(buffers[sb3], field, None), getattr(buffers[crl], field, None)
            assert (theirs is mine is None) or np.array_equal(mine, theirs), (name, kwargs, field)
        assert (buffers[crl].pos, buffers[crl].full) == (buffers[sb3].pos, True)  # wrapped around


@pytest.mark.parametrize(
    "infos",
    [
        [{"TimeLimit.truncated": False}],
        [{"a": 1, "b": np.float32(2.0)}, {"c": None, "d": "x"}],
        [{"episode": {"r": 1.0}}],
        [{"a": (1, [2])}],
        [{1: True}],
    ],
)
def test_copy_infos_is_deepcopy(infos: list[dict]) -> None:
    copies = copy_infos(infos)
    assert copies == infos
    assert all(copy is not info for copy, info in zip(copies, infos, strict=True))


def test_copy_infos_keeps_a_dict_shared_by_two_envs_shared_as_deepcopy_does() -> None:
    shared = {"TimeLimit.truncated": False}
    copies = copy_infos([shared, shared])
    assert copies[0] is copies[1] and copies[0] is not shared


def test_copy_infos_copies_nested_values_and_subclasses_deeply() -> None:
    class Info(dict):
        pass

    nested = [{"episode": {"r": 1.0}, "frames": np.zeros(2)}]
    copied = copy_infos(nested)[0]
    assert copied["episode"] is not nested[0]["episode"] and copied["episode"] == nested[0]["episode"]
    assert not np.shares_memory(copied["frames"], nested[0]["frames"])
    subclassed = [Info(a=1)]
    assert type(copy_infos(subclassed)[0]) is Info


def test_a_normalized_env_stores_the_original_observations_as_sb3_does() -> None:
    buffers = {}
    for library in (sb3, crl):
        env = VecNormalize(DummyVecEnv([lambda: gym.make("Pendulum-v1")]))
        model = library.SAC("MlpPolicy", env, learning_starts=10_000, seed=0, device="cpu")
        model.learn(250)
        buffers[library] = model.replay_buffer
    for field in ("observations", "next_observations", "rewards"):
        assert np.array_equal(getattr(buffers[crl], field), getattr(buffers[sb3], field)), field
    assert np.abs(buffers[crl].observations[:250]).max() > 5  # Pendulum's raw angular velocities, not normalized ones


def test_a_linear_step_is_the_layers_forward_with_its_gradients() -> None:
    generator = th.Generator().manual_seed(0)
    for bias in (True, False):
        layer = th.nn.Linear(5, 3, bias=bias)
        inputs = th.randn(7, 5, generator=generator)
        step = layer_step(layer)
        assert step_layer(step) is layer and step.__func__ is not th.nn.Linear.forward  # type: ignore[attr-defined]
        ours = step(inputs)
        ours.square().sum().backward()
        ours_grads = [p.grad.clone() for p in layer.parameters()]
        layer.zero_grad()
        theirs = layer.forward(inputs)
        theirs.square().sum().backward()
        assert th.equal(ours, theirs)
        assert all(th.equal(a, p.grad) for a, p in zip(ours_grads, layer.parameters(), strict=True))


def test_a_linear_step_uses_a_parameter_replaced_after_it_was_made() -> None:
    layer = th.nn.Linear(4, 2)
    step = layer_step(layer)
    layer.weight = th.nn.Parameter(th.ones(2, 4))
    inputs = th.ones(1, 4)
    assert th.equal(step(inputs), th.full((1, 2), 4.0) + layer.bias)


def test_other_layers_keep_their_forward() -> None:
    class ScaledLinear(th.nn.Linear):
        def forward(self, inputs: th.Tensor) -> th.Tensor:
            return 2 * super().forward(inputs)

    class ShiftedLayerNorm(th.nn.LayerNorm):
        def forward(self, inputs: th.Tensor) -> th.Tensor:
            return super().forward(inputs) + 1

    spectral = th.nn.utils.parametrizations.spectral_norm(th.nn.Linear(4, 2))
    for layer in (ScaledLinear(4, 2), spectral, ShiftedLayerNorm(4), th.nn.ReLU(), th.nn.Tanh()):
        step = layer_step(layer)
        assert step_layer(step) is layer and step.__func__ is type(layer).forward  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "layer",
    [
        th.nn.LayerNorm(6),
        th.nn.LayerNorm(6, bias=False),
        th.nn.LayerNorm(6, elementwise_affine=False),
        th.nn.LayerNorm((3, 2, 6), eps=1e-3),
    ],
    ids=["affine", "no_bias", "no_affine", "conv_shape_eps"],
)
def test_a_layer_norm_step_is_the_layers_forward_with_its_gradients(layer: th.nn.LayerNorm) -> None:
    generator = th.Generator().manual_seed(0)
    with th.no_grad():
        for parameter in layer.parameters():  # away from the initial ones and zeros
            parameter.copy_(th.randn(parameter.shape, generator=generator))
    inputs = th.randn(5, 3, 2, 6, generator=generator, requires_grad=True)
    step = layer_step(layer)
    assert step_layer(step) is layer and step.__func__ is not th.nn.LayerNorm.forward  # type: ignore[attr-defined]
    results = {}
    for name, run in (("step", step), ("forward", layer.forward)):
        layer.zero_grad()
        inputs.grad = None
        outputs = run(inputs)
        (outputs * th.arange(outputs.shape[-1])).square().sum().backward()
        results[name] = [outputs, inputs.grad, *(p.grad for p in layer.parameters())]
    assert all(th.equal(a, b) for a, b in zip(results["step"], results["forward"], strict=True))


def test_a_layer_norm_step_reads_the_layer_at_each_call() -> None:
    layer = th.nn.LayerNorm(4)
    step = layer_step(layer)
    inputs = th.tensor([[1.0, 2.0, 3.0, 6.0]])
    layer.weight = th.nn.Parameter(th.full((4,), 2.0))
    layer.eps = 100.0
    assert th.equal(step(inputs), layer.forward(inputs))
    assert th.allclose(step(inputs), 2 * (inputs - 3) / th.sqrt(th.tensor(3.5 + 100.0)))


def test_a_layer_norm_step_hands_a_torch_function_mode_what_the_forward_does() -> None:
    class Recorded(th.overrides.TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.functions: list = []

        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            self.functions.append(func)
            return func(*args, **(kwargs or {}))

    layer, inputs = th.nn.LayerNorm(4, eps=0.5), th.randn(2, 4)
    calls = {}
    for name, run in (("step", layer_step(layer)), ("forward", layer.forward)):
        with Recorded() as mode:
            outputs = run(inputs)
        calls[name] = (mode.functions, outputs)
    assert calls["step"][0] == calls["forward"][0] == [th.nn.functional.layer_norm]
    assert th.equal(calls["step"][1], calls["forward"][1])
