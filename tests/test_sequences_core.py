"""Task sequences: space unification, task ids, synthetic shifts, presets."""

from __future__ import annotations

import functools

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecFrameStack

import crl
from crl.wrappers import (
    PRESETS,
    ActionShuffle,
    CartPolePhysics,
    IncompatibleSpacesError,
    RewardSignFlip,
    Task,
    TaskSequence,
    cartpole_physics,
    make_sequence,
    permuted_observations,
    unify_spaces,
)
from crl.wrappers.synthetic import action_permutation


class _Grid(gym.Env):
    """A fake image env: ``(2, 2, channels)`` observations filled with ``value``."""

    def __init__(self, channels: int, value: float = 1.0, high: float = 1.0, actions: int = 3) -> None:
        self.observation_space = spaces.Box(0.0, high, (2, 2, channels), np.float32)
        self.action_space = spaces.Discrete(actions)
        self.value = value

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.full(self.observation_space.shape, self.value, np.float32), {}

    def step(self, action):
        return np.full(self.observation_space.shape, self.value, np.float32), 1.0, True, False, {}


def _task(name: str, **kwargs) -> Task:
    return Task(name, functools.partial(_Grid, **kwargs), budget=10)


def test_equal_spaces_are_kept() -> None:
    space = spaces.Discrete(4)
    assert unify_spaces([("a", space), ("b", spaces.Discrete(4))], "action") is space


def test_boxes_of_one_shape_get_the_union_of_their_bounds() -> None:
    a = spaces.Box(np.float32([-1.0, 0.0]), np.float32([1.0, 2.0]), dtype=np.float32)
    b = spaces.Box(np.float32([-3.0, 1.0]), np.float32([0.5, 5.0]), dtype=np.float32)
    unified = unify_spaces([("a", a), ("b", b)], "observation")
    np.testing.assert_array_equal(unified.low, [-3.0, 0.0])
    np.testing.assert_array_equal(unified.high, [1.0, 5.0])


def test_channel_stacks_are_padded_with_zero_channels() -> None:
    sequence = TaskSequence([_task("four", channels=4, value=0.5), _task("seven", channels=7)])
    assert sequence.observation_space == spaces.Box(0.0, 1.0, (2, 2, 7), np.float32)
    observation, _ = sequence.make_env(0).reset(seed=0)
    assert observation.shape == (2, 2, 7)
    np.testing.assert_array_equal(observation[..., :4], 0.5)
    np.testing.assert_array_equal(observation[..., 4:], 0.0)
    assert sequence.make_env(0).observation_space == sequence.observation_space


def test_incompatible_spaces_fail_at_construction_printing_both() -> None:
    with pytest.raises(
        IncompatibleSpacesError,
        match=r"'three' and 'five' have action spaces (?s:.*)three: Discrete\(3\)\n  five: Discrete\(5\)",
    ):
        TaskSequence([_task("three", channels=1), _task("five", channels=1, actions=5)])
    grid = Task("grid", functools.partial(_Grid, channels=1), 10)
    cartpole = Task("cartpole", functools.partial(gym.make, "CartPole-v1"), 10)
    with pytest.raises(
        IncompatibleSpacesError, match=r"observation spaces that cannot be unified:\n  grid: Box.*\n  cartpole: Box"
    ):
        TaskSequence([grid, cartpole])
    pendulum = Task("pendulum", functools.partial(gym.make, "Pendulum-v1"), 10)
    mountain_car = Task("mountain_car", functools.partial(gym.make, "MountainCarContinuous-v0"), 10)
    with pytest.raises(  # vectors of different lengths: padding would mix one task's features into another's
        IncompatibleSpacesError,
        match=r"observation spaces that cannot be unified:\n  pendulum: Box.*\(3,\).*\n  mountain_car: Box.*\(2,\)",
    ):
        TaskSequence([pendulum, mountain_car])
    wide, narrow = spaces.Box(-1.0, 1.0, (2, 2, 3)), spaces.Box(-1.0, 1.0, (2, 2, 2))
    with pytest.raises(IncompatibleSpacesError, match="action spaces"):  # channels are padded in observations only
        unify_spaces([("wide", wide), ("narrow", narrow)], "action")


def test_one_hot_task_id_is_appended_and_bounded() -> None:
    sequence = permuted_observations(n_tasks=3, steps_per_task=10)
    with_ids = TaskSequence(sequence.tasks, task_id_in_obs=True)
    assert with_ids.observation_space.shape == (7,)
    np.testing.assert_array_equal(with_ids.observation_space.low[4:], 0)
    np.testing.assert_array_equal(with_ids.observation_space.high[4:], 1)
    plain, _ = sequence.make_env(2).reset(seed=3)
    coded, _ = with_ids.make_env(2).reset(seed=3)
    np.testing.assert_array_equal(coded, np.concatenate((plain, [0, 0, 1])))
    assert coded in with_ids.observation_space


def test_a_preset_gets_the_task_id_without_building_its_environments_again(monkeypatch) -> None:
    sequence = permuted_observations(n_tasks=3, steps_per_task=10)
    monkeypatch.setattr(TaskSequence, "_task_spaces", lambda task: pytest.fail("an environment was built again"))
    with_ids = sequence.with_task_id_in_obs()
    assert with_ids.task_id_in_obs and not sequence.task_id_in_obs
    assert with_ids.observation_space.shape == (7,) and with_ids.tasks == sequence.tasks


class _Episodes(_Grid):
    """:class:`_Grid` whose value counts the steps of an episode of three steps; a reset shows 9."""

    def reset(self, *, seed=None, options=None):
        self.steps = 0
        return np.full(self.observation_space.shape, 9.0, np.float32), {}

    def step(self, action):
        self.steps += 1
        return np.full(self.observation_space.shape, self.steps, np.float32), 0.0, False, self.steps == 3, {}


def _grids_with_ids(vec_env_wrapper=None) -> TaskSequence:
    tasks = [Task(name, functools.partial(_Episodes, channels=1, high=9.0), 10) for name in ("a", "b", "c")]
    return TaskSequence(tasks, task_id_in_obs=True, vec_env_wrapper=vec_env_wrapper)


def test_a_task_id_beside_observations_that_are_not_flat_makes_them_a_dict() -> None:
    sequence = _grids_with_ids()
    code = spaces.Box(0.0, 1.0, (3,), np.float32)
    assert sequence.observation_space == spaces.Dict({"observation": spaces.Box(0.0, 9.0, (2, 2, 1)), "task_id": code})
    observation, _ = sequence.make_env(1).reset(seed=0)
    np.testing.assert_array_equal(observation["observation"], np.full((2, 2, 1), 9.0))
    np.testing.assert_array_equal(observation["task_id"], [0, 1, 0])
    assert observation in sequence.observation_space
    vectorised = sequence.make_vec_env(2, n_envs=2, seed=0)
    assert vectorised.observation_space == sequence.observation_space
    np.testing.assert_array_equal(vectorised.reset()["task_id"], [[0, 0, 1], [0, 0, 1]])
    with pytest.raises(ValueError, match="task_id_in_obs needs a Box observation space, got Discrete"):
        TaskSequence([Task("discrete", functools.partial(gym.make, "FrozenLake-v1"), 10)], task_id_in_obs=True)


def test_a_frame_stack_stacks_the_frames_and_not_the_task_id() -> None:
    sequence = _grids_with_ids(functools.partial(VecFrameStack, n_stack=2))
    vec_env = sequence.make_vec_env(0, seed=0)
    code = spaces.Box(0.0, 1.0, (3,), np.float32)
    assert vec_env.observation_space == spaces.Dict({"observation": spaces.Box(0.0, 9.0, (2, 2, 2)), "task_id": code})
    first = vec_env.reset()
    np.testing.assert_array_equal(first["observation"][0, 0, 0], [0.0, 9.0])  # the stack starts with zeros
    np.testing.assert_array_equal(first["task_id"], [[1, 0, 0]])
    for _ in range(3):
        observations, _, dones, infos = vec_env.step(np.array([0]))
    assert dones[0]  # truncated after three steps: the terminal observation keeps its frames and gets the code
    terminal = infos[0]["terminal_observation"]
    np.testing.assert_array_equal(terminal["observation"][0, 0], [2.0, 3.0])
    np.testing.assert_array_equal(terminal["task_id"], [1, 0, 0])
    np.testing.assert_array_equal(observations["observation"][0, 0, 0], [0.0, 9.0])
    np.testing.assert_array_equal(observations["task_id"], [[1, 0, 0]])


@pytest.mark.parametrize(
    ("tasks", "kwargs", "message"),
    [
        ([], {}, "needs at least one task"),
        (
            [Task("t", functools.partial(gym.make, "CartPole-v1"), 5)],
            {"measure": "auc"},
            "measure='auc' is not allowed",
        ),
    ],
)
def test_bad_sequences_are_rejected(tasks, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        TaskSequence(tasks, **kwargs)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"budget": 0}, "budget=0: must be an int >= 1 (environment steps of task 't')"),
        ({"budget": True}, "budget=True: must be an int >= 1"),  # not a budget of 1
        ({"budget": 100.0}, "budget=100.0: must be an int >= 1"),
        ({"budget": 5, "task_id": 1.5}, "task_id=1.5: must be an int >= 0 (id of task 't', or None)"),
        ({"budget": 5, "task_id": True}, "task_id=True: must be an int >= 0"),
        ({"budget": 5, "task_id": -1}, "task_id=-1: must be an int >= 0"),
    ],
)
def test_tasks_take_integer_budgets_and_ids(options, message) -> None:
    with pytest.raises(ValueError) as error:
        Task("t", functools.partial(gym.make, "CartPole-v1"), **options)
    assert message in str(error.value)


def test_numpy_integer_budgets_and_ids_become_ints() -> None:
    task = Task("t", functools.partial(gym.make, "CartPole-v1"), np.int64(5), task_id=np.int32(2))
    assert type(task.budget) is int and type(task.task_id) is int
    assert type(TaskSequence([task]).n_task_ids) is int


def test_vec_env_seeds_are_checked_and_numpy_integers_accepted() -> None:
    sequence = permuted_observations(n_tasks=2, steps_per_task=10)
    np.testing.assert_array_equal(
        sequence.make_vec_env(1, n_envs=2, seed=np.int64(7)).reset(), sequence.make_vec_env(1, n_envs=2, seed=7).reset()
    )
    for seed, message in [(-1, "seed=-1: must be an int >= 0 (or None)"), ("0", "seed='0': must be an int >= 0")]:
        with pytest.raises(ValueError) as error:
            sequence.make_vec_env(0, seed=seed)
        assert message in str(error.value)
    with pytest.raises(ValueError, match=r"action_seed=1\.5: must be an int >= 0"):
        sequence.make_env(0, action_seed=1.5)


def test_vec_envs_are_seeded_per_copy() -> None:
    sequence = permuted_observations(n_tasks=2, steps_per_task=10)
    first = sequence.make_vec_env(1, n_envs=2, seed=7).reset()
    again = sequence.make_vec_env(1, n_envs=2, seed=7).reset()
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first[0], first[1])


def test_action_shuffle_relabels_actions() -> None:
    class _Echo(_Grid):
        def step(self, action):
            return np.full(self.observation_space.shape, action, np.float32), 0.0, False, False, {}

    env = ActionShuffle(_Echo(channels=1, actions=3), permutation=[2, 0, 1])
    env.reset(seed=0)
    assert [env.step(action)[0][0, 0, 0] for action in range(3)] == [2, 0, 1]
    with pytest.raises(ValueError, match=r"permutation must reorder range\(3\), got \[0, 0, 1\]"):
        ActionShuffle(_Echo(channels=1, actions=3), permutation=[0, 0, 1])


def test_reward_sign_flip_negates_rewards() -> None:
    env = RewardSignFlip(gym.make("CartPole-v1"))
    env.reset(seed=0)
    assert env.step(0)[1] == -1.0


def test_cartpole_physics_changes_the_dynamics() -> None:
    def pole_angles(env: gym.Env) -> list[float]:
        env.reset(seed=0)
        return [env.step(1)[0][2] for _ in range(5)]

    default = pole_angles(gym.make("CartPole-v1"))
    assert pole_angles(CartPolePhysics(gym.make("CartPole-v1"), gravity=9.8, length=0.5)) == default
    heavy = pole_angles(CartPolePhysics(gym.make("CartPole-v1"), gravity=20.0, length=0.5))
    long = CartPolePhysics(gym.make("CartPole-v1"), gravity=9.8, length=1.5)
    assert long.unwrapped.polemass_length == pytest.approx(0.1 * 1.5)
    assert heavy != default and pole_angles(long) != default
    with pytest.raises(ValueError, match="needs a CartPole environment, got PendulumEnv"):
        CartPolePhysics(gym.make("Pendulum-v1"))


def test_cartpole_physics_sequence_shares_one_space() -> None:
    sequence = cartpole_physics(steps_per_task=100)
    assert len(sequence) == 4 and sequence.action_space == spaces.Discrete(2)
    assert sequence.task_names[1] == "g20-l0.5"


def test_presets_build_and_unknown_names_list_them() -> None:
    assert make_sequence("cartpole_permuted", n_tasks=2, steps_per_task=50).budgets == [50, 50]
    with pytest.raises(ValueError, match=r"unknown task sequence 'cw30'; presets: \['atari_cycle'"):
        make_sequence("cw30")
    assert {"cw10", "cw20", "space_invaders_modes", "freeway_modes", "breakout_modes", "atari_cycle"} <= set(PRESETS)


@pytest.mark.parametrize("seed", range(4))
def test_every_switch_of_cartpole_actions_relabels_the_actions(seed: int) -> None:
    sequence = make_sequence("cartpole_actions", n_tasks=5, steps_per_task=10, seed=seed)
    permutations = []
    for task in sequence.tasks:
        env = task.make_env()
        permutations.append(env.permutation.tolist() if isinstance(env, ActionShuffle) else [0, 1])
    assert permutations == [[0, 1], [1, 0], [0, 1], [1, 0], [0, 1]]
    assert not np.array_equal(action_permutation(4, 3, seed), action_permutation(4, 2, seed))
    with pytest.raises(ValueError, match="needs at least two of them, got 1"):
        action_permutation(1, 1, seed)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("cartpole_actions", {"env_id": "Pendulum-v1"}, "env_id='Pendulum-v1': shuffled actions need a Discrete"),
        ("cartpole_actions", {"seed": -3}, "seed=-3: must be an int >= 0"),
        ("cw10", {"n_tasks": 3}, "task sequence 'cw10' has no option(s) ['n_tasks']; its options: ['steps_per_task']"),
        ("cartpole_permuted", {"steps_per_task": 0}, "steps_per_task=0: must be an int >= 1"),
        ("minatar_cycle", {"games": "Breakout"}, "games='Breakout': must be a list of MinAtar game names"),
        ("minatar_cycle", {"cycles": 2.0}, "cycles=2.0: must be an int >= 1"),
        ("cartpole_physics", {"physics": [(9.8,)]}, "physics[0]=(9.8,): must be a pair (gravity, half pole length)"),
        ("cartpole_physics", {"physics": []}, "physics=[]: must be a non-empty list of (gravity, half pole length)"),
        ("cartpole_physics", {"physics": 9.8}, "physics=9.8: must be a non-empty list"),
        (
            "cartpole_permuted",
            {"env_id": "NoSuchEnv-v0"},
            "env_id='NoSuchEnv-v0': gymnasium cannot make it (NameNotFound",
        ),
        (
            "cartpole_actions",
            {"env_id": "CartPole-v9"},
            "env_id='CartPole-v9': gymnasium cannot make it (VersionNotFound",
        ),
        ("cartpole_reward_flip", {"env_id": "NoSuchEnv-v0"}, "env_id='NoSuchEnv-v0': gymnasium cannot make it"),
        ("cartpole_reward_flip", {"env_id": 3}, "env_id=3: must be a gymnasium environment id"),
    ],
)
def test_bad_preset_options_name_the_option_before_any_task_is_built(name, options, message) -> None:
    with pytest.raises(ValueError) as error:
        make_sequence(name, **options)
    assert message in str(error.value)


def test_an_off_policy_agent_stores_the_task_id_with_its_terminal_observations() -> None:
    """SB3 takes a truncated episode's next observation from ``terminal_observation``: a dict here."""
    sequence = _grids_with_ids(functools.partial(VecFrameStack, n_stack=2))
    model = crl.DQN("MultiInputPolicy", sequence.make_vec_env(1, seed=0), buffer_size=100, learning_starts=100)
    model.learn(12)  # four episodes of three steps
    buffer = model.replay_buffer
    np.testing.assert_array_equal(buffer.next_observations["task_id"][:12, 0], np.tile([0, 1, 0], (12, 1)))
    newest = buffer.next_observations["observation"][:12, 0, 0, 0, 1]  # the newest frame of each stack
    np.testing.assert_array_equal(newest, [1, 2, 3] * 4)  # the episodes' last steps keep their own frames
