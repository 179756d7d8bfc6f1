"""From a validated :class:`~crl.config.curriculum.Curriculum` to the objects that train: sequence and model.

Building is the last check before training: it constructs every task's environment (the sequence
unifies their spaces, and fails on spaces that cannot be unified) and the model on the first task's
environment (SB3 checks the policy against the spaces). Any failure is a one-line
:class:`~crl.config.errors.ConfigError`.
"""

from __future__ import annotations

import functools
from typing import Any

import gymnasium as gym
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecFrameStack

from crl.algorithms import ContinualAlgorithm
from crl.config.curriculum import SCHEDULE_HYPERPARAMETERS, Curriculum, TaskSpec
from crl.config.errors import ConfigError, one_line
from crl.config.schedules import parse_schedule
from crl.continual.continual_world import reference_sac
from crl.interventions import InterventionError
from crl.metrics import MetricsError
from crl.wrappers import Task, TaskSequence, make_sequence

BUILD_ERRORS = (ValueError, TypeError, AssertionError, RuntimeError, gym.error.Error, InterventionError, MetricsError)
"""What the builders raise on a configuration that validation could not see (e.g. mismatched spaces, a
preset option naming an unregistered env: ``gym.error.Error``, a device torch does not know: ``RuntimeError``)."""


def build_sequence(curriculum: Curriculum, source: str = "curriculum") -> TaskSequence:
    """The curriculum's task sequence, every task's environment built once.

    :raises ConfigError: e.g. tasks whose spaces cannot be unified, a preset option of the wrong type
    """
    spec = curriculum.sequence
    try:
        if spec.preset is not None:
            steps = {} if spec.steps_per_task is None else {"steps_per_task": spec.steps_per_task}
            preset = make_sequence(spec.preset, **steps, **spec.options)
            return preset.with_task_id_in_obs() if spec.task_id_in_obs else preset
        assert spec.tasks is not None
        tasks = [_task(task, index, spec.steps_per_task) for index, task in enumerate(spec.tasks)]
        atari = any(task.atari is not None for task in spec.tasks)
        return TaskSequence(
            tasks,
            name=spec.name,
            task_id_in_obs=spec.task_id_in_obs,
            measure=spec.measure,
            vec_env_wrapper=_atari_frame_stack() if atari else None,
        )
    except BUILD_ERRORS as error:
        raise ConfigError(f"{source}: sequence: {one_line(str(error) or type(error).__name__)}") from None


def _task(spec: TaskSpec, index: int, steps_per_task: int | None) -> Task:
    budget = spec.budget if spec.budget is not None else steps_per_task
    assert budget is not None  # validation requires one of them
    if spec.atari is not None:
        from crl.wrappers.atari import atari_task

        task = atari_task(spec.atari, spec.mode, spec.difficulty, budget, spec.task_id, **spec.kwargs)
        return task if spec.name is None else Task(spec.name, task.make_env, budget, task.wrapper, task.task_id)
    assert spec.env is not None
    name = spec.name if spec.name is not None else f"{index}-{spec.env}"
    make_env = functools.partial(gym.make, spec.env, **spec.kwargs)  # type: ignore[arg-type]
    return Task(name, make_env, budget, task_id=spec.task_id)


def _atari_frame_stack() -> Any:
    from crl.wrappers.atari import FRAME_STACK

    return functools.partial(VecFrameStack, n_stack=FRAME_STACK)


def model_arguments(curriculum: Curriculum) -> dict[str, Any]:
    """The constructor arguments of the algorithm besides policy, env and seed (schedules parsed)."""
    hyperparameters = {
        name: parse_schedule(value) if name in SCHEDULE_HYPERPARAMETERS and isinstance(value, str) else value
        for name, value in curriculum.hyperparameters.items()
    }
    return dict(
        policy_kwargs=curriculum.policy_options.policy_kwargs(),
        interventions=curriculum.interventions,
        metrics=curriculum.metrics,
        **hyperparameters,
    )


def check_policy_fits(policy: str, sequence: TaskSequence, source: str) -> None:
    """Refuse a policy that cannot read a sequence of dict observations: ``MultiInputPolicy`` can, and
    ``MultiHeadPolicy`` where the dict holds the task id.

    :raises ConfigError: naming the key, the policy and where the dict comes from
    """
    space = sequence.observation_space
    if not isinstance(space, spaces.Dict):
        return
    readers = ["MultiInputPolicy", *(["MultiHeadPolicy"] if sequence.task_id_in_obs else [])]
    if policy not in readers:
        origin = " (the task id beside observations that are not flat)" if sequence.task_id_in_obs else ""
        raise ConfigError(
            f"{source}: key 'policy' = {policy!r}: sequence {sequence.name!r} gives dict observations with keys "
            f"{list(space.spaces)}{origin}; use {' or '.join(readers)}"
        )


def multi_head_options(policy_kwargs: dict[str, Any], sequence: TaskSequence, source: str) -> dict[str, Any]:
    """``MultiHeadPolicy``'s options: by default one head per task id of the sequence, which must show the ids.

    :raises ConfigError: the sequence does not give the one-hot task id the heads are chosen by, or
        ``n_heads`` is not its length
    """
    if not sequence.task_id_in_obs:
        raise ConfigError(
            f"{source}: key 'policy' = 'MultiHeadPolicy' chooses a head by the one-hot task id in "
            f"each observation, which sequence {sequence.name!r} does not give; set "
            "'sequence.task_id_in_obs: true'"
        )
    n_heads = policy_kwargs.get("n_heads", sequence.n_task_ids)
    if n_heads != sequence.n_task_ids:
        raise ConfigError(
            f"{source}: key 'policy_options.n_heads' = {n_heads}: the heads are chosen by {sequence.task_id_place}, "
            f"and sequence {sequence.name!r} gives a one-hot task id of {sequence.n_task_ids}; leave n_heads out "
            f"or set it to {sequence.n_task_ids}"
        )
    return {**policy_kwargs, "n_heads": n_heads}


def build_model(
    curriculum: Curriculum, sequence: TaskSequence, seed: int, source: str = "curriculum", verbose: int = 0
) -> ContinualAlgorithm:
    """The curriculum's algorithm (or ``agent``) on the sequence's first task.

    :raises ConfigError: e.g. a policy that does not fit the observation space, a hyperparameter of the
        wrong kind, an intervention that does not fit the network
    """
    check_policy_fits(curriculum.policy, sequence, source)
    try:
        arguments = model_arguments(curriculum)
        if curriculum.policy == "MultiHeadPolicy":
            arguments["policy_kwargs"] = multi_head_options(arguments["policy_kwargs"], sequence, source)
        if curriculum.agent == "continual_world_reference":
            del arguments["policy_kwargs"]  # the agent's own architecture
            return reference_sac(sequence, seed=seed, verbose=verbose, **arguments)
        env = sequence.make_vec_env(0, n_envs=curriculum.n_envs, seed=seed)
        return curriculum.algorithm_class(  # type: ignore[call-arg]
            curriculum.policy, env, seed=seed, verbose=verbose, **arguments
        )
    except ConfigError:
        raise
    except BUILD_ERRORS as error:
        raise ConfigError(f"{source}: {curriculum.algorithm}: {one_line(str(error) or type(error).__name__)}") from None
