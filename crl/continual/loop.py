"""The continual training loop: one model trained through every task of a sequence, evaluated on all tasks.

Per task ``i``: a fresh training env of the task (``model.set_env``: the sequence guarantees identical
spaces, SPEC.md §6), ``model.start_task(i)``, the optional per-task resets, ``model.learn(budget,
reset_num_timesteps=True)``, ``model.end_task()``. Every ``eval_every`` environment steps of the whole
sequence and at the end of every task, every task is evaluated into one column of the performance
matrix (:class:`~crl.continual.results.ContinualResult`).

``reset_num_timesteps=True`` restarts SB3's progress-based schedules (DQN's epsilon, learning-rate
schedules) and the warm-up (``learning_starts`` random steps) at every task. To keep a schedule running
over the whole sequence instead, the loop hands SB3 a schedule of the sequence's progress
(``restart_exploration=False`` / ``restart_learning_rate=False``).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.type_aliases import MaybeCallback, Schedule
from stable_baselines3.common.vec_env import VecEnv

from crl.algorithms import ContinualAlgorithm
from crl.continual.results import ContinualResult
from crl.optim import algorithm_optimizers, clear_optimizer_state
from crl.random_draws import forked_devices
from crl.wrappers.sequence import TaskSequence, check_count

EVAL_SEED_OFFSET = 100_000
"""Evaluation envs are seeded apart from the training envs (``seed + EVAL_SEED_OFFSET + task``)."""
EPSILON_GREEDY = frozenset({"DQN", "QRDQN"})
"""Algorithm families whose epsilon is exploration, not policy: evaluated greedily by default."""


@dataclass(frozen=True)
class SequenceProgress:
    """A schedule of the whole sequence's progress, fed SB3's per-task progress.

    SB3 calls schedules with ``progress_remaining`` running from 1 to 0 over one ``learn()`` call (one
    task). This maps it to the progress remaining over the sequence:
    ``1 - (start + (1 - progress_remaining) * budget) / total``.

    :param schedule: the model's original schedule
    :param start: environment steps of the sequence before this task
    :param budget: this task's steps
    :param total: the sequence's steps
    """

    schedule: Schedule
    start: int
    budget: int
    total: int

    def __call__(self, progress_remaining: float) -> float:
        done = self.start + (1.0 - progress_remaining) * self.budget
        return float(self.schedule(1.0 - done / self.total))


@contextlib.contextmanager
def preserved_random_state(model: BaseAlgorithm) -> Iterator[None]:
    """Leave torch's (CPU and the model's device), numpy's and the action space's random streams as they
    were (evaluation is a monitor)."""
    numpy_state = np.random.get_state()
    action_sampler = model.action_space.np_random.bit_generator
    action_state = action_sampler.state
    with th.random.fork_rng(**forked_devices(model.device)):
        yield
    np.random.set_state(numpy_state)
    action_sampler.state = action_state


@dataclass
class ContinualPosition:
    """Where a run through a sequence is: what :func:`learn_continual` needs to continue it.

    :param task: the index of the task being trained (``len(sequence)`` when all are done)
    :param steps_done: environment steps of that task already trained
    :param eval_steps: the global steps of the evaluations so far
    :param eval_columns: their performance columns (one value per task)
    :param env: the training env mid-task (its episodes continue), or ``None`` for a fresh one
    :param eval_envs: the evaluation envs, one per task (their random streams continue), or ``None``
        for fresh ones
    :param task_started: whether the task's start (``model.start_task``, which applies the task-boundary
        interventions, and the per-task resets) is made: a checkpoint at the task's first rollout start
        (a Ctrl-C) is taken after it, the one at the previous task's end before it
    """

    task: int = 0
    steps_done: int = 0
    eval_steps: list[int] = field(default_factory=list)
    eval_columns: list[np.ndarray] = field(default_factory=list)
    env: VecEnv | None = None
    eval_envs: list[VecEnv] | None = None
    task_started: bool = False


CheckpointHook = Callable[[ContinualPosition], None]
"""Called with the position at each checkpoint (the model and its env are in a consistent state)."""

TaskEndHook = Callable[[int, ContinualResult], None]
"""Called after each task's last evaluation with the task's index and the evaluations so far."""

EvaluationHook = Callable[[int, np.ndarray], None]
"""Called after every evaluation with its global step and its column (one value per task)."""


EVALUATION_PREFIX = "continual/"
"""The prefix of the evaluations' logged values (:func:`task_metric`, ``continual/average``, ``continual/step``)."""
EVALUATION_STEP_KEY = f"{EVALUATION_PREFIX}step"
"""The evaluation's global step, recorded with its values for the formats without a step axis (csv, json, stdout)."""


def task_metric(index: int, name: str) -> str:
    """The logged name of the evaluations of task ``index`` named ``name``: ``continual/<index>_<name>``
    (the index keeps repeated tasks, as in CW20 or game cycles, apart)."""
    return f"{EVALUATION_PREFIX}{index}_{name}"


@contextlib.contextmanager
def set_aside_records(logger: Logger) -> Iterator[dict[str, tuple[Any, tuple[str, ...] | None]]]:
    """Inside the block the logger records from scratch; after it, the values recorded before the block
    are pending again, and the yielded dict holds what was recorded inside (key -> value, exclusion)."""
    pending = logger.name_to_value, logger.name_to_count, logger.name_to_excluded
    logger.name_to_value, logger.name_to_count, logger.name_to_excluded = defaultdict(float), defaultdict(int), {}
    recorded: dict[str, tuple[Any, tuple[str, ...] | None]] = {}
    try:
        yield recorded
    finally:
        recorded.update({key: (value, logger.name_to_excluded.get(key)) for key, value in logger.name_to_value.items()})
        logger.name_to_value, logger.name_to_count, logger.name_to_excluded = pending


def dump_evaluation(
    logger: Logger,
    step: int,
    values: dict[str, float],
    task_end: Mapping[str, tuple[Any, tuple[str, ...] | None]] | None = None,
) -> None:
    """Write one evaluation's values to the logger's output formats at once, at its global ``step``.

    Dumped on their own: SB3 dumps at its task-local ``num_timesteps`` (restarted at every task) and
    only every few rollouts or episodes, so recorded values would wait for a later, task-local step,
    be overwritten by the next evaluation, or (the last one) never be written. The values SB3 has
    recorded since its last dump are set aside meanwhile and stay pending for that dump, at its step.

    :param logger: the model's SB3 logger
    :param step: the evaluation's global step (environment steps of the whole sequence)
    :param values: key -> value of the evaluation (``continual/...``)
    :param task_end: what the interventions recorded at the task's end (:func:`set_aside_records`),
        written with the evaluation of that end, at its global step
    """
    with set_aside_records(logger):
        for key, (value, excluded) in (task_end or {}).items():
            logger.record(key, value, exclude=excluded)
        for key, value in values.items():
            logger.record(key, value)
        # TensorBoard has the step as its axis (SB3's EvalCallback excludes its step key there too).
        logger.record(EVALUATION_STEP_KEY, step, exclude="tensorboard")
        logger.dump(step)


class TaskEvaluator:
    """Evaluates a model on every task of a sequence into the columns of a performance matrix.

    :param sequence: the tasks
    :param n_eval_episodes: episodes per task and evaluation
    :param deterministic: act greedily (``True``) or sample the policy's actions
    :param seed: seed of the first task's evaluation env (task ``i`` gets ``seed + i``)
    :param envs: the evaluation envs to use instead (a checkpoint's)
    :param on_evaluation: called with the step and the column after every evaluation
    """

    def __init__(
        self,
        sequence: TaskSequence,
        n_eval_episodes: int,
        deterministic: bool,
        seed: int | None,
        envs: list[VecEnv] | None = None,
        on_evaluation: EvaluationHook | None = None,
    ) -> None:
        self.sequence = sequence
        self.n_eval_episodes = n_eval_episodes
        self.deterministic = deterministic
        self.on_evaluation = on_evaluation
        self.envs: list[VecEnv] = envs or [
            sequence.make_vec_env(index, seed=None if seed is None else seed + index) for index in range(len(sequence))
        ]
        self.steps: list[int] = []
        self.columns: list[np.ndarray] = []

    def evaluate(
        self,
        model: BaseAlgorithm,
        step: int,
        task_end: Mapping[str, tuple[Any, tuple[str, ...] | None]] | None = None,
    ) -> np.ndarray:
        """Evaluate every task at global step ``step``; write the column to the model's logger (see
        :func:`dump_evaluation`, with ``task_end``'s records), hand it to ``on_evaluation`` and return it."""
        with preserved_random_state(model):
            column = np.array([self._evaluate_task(model, index, env) for index, env in enumerate(self.envs)])
        self.steps.append(step)
        self.columns.append(column)
        values = {
            task_metric(index, name): float(value)
            for index, (name, value) in enumerate(zip(self.sequence.task_names, column, strict=True))
        }
        values[f"{EVALUATION_PREFIX}average"] = float(column.mean())
        dump_evaluation(model.logger, step, values, task_end)
        if self.on_evaluation is not None:
            self.on_evaluation(step, column)
        return column

    def _evaluate_task(self, model: BaseAlgorithm, index: int, env: VecEnv) -> float:
        # A crl model tells its interventions which task is evaluated (PackNet shows that task's parameters).
        evaluating = getattr(model, "evaluating", None)
        with contextlib.nullcontext() if evaluating is None else evaluating(index):
            return self._evaluated_performance(model, env)

    def _evaluated_performance(self, model: BaseAlgorithm, env: VecEnv) -> float:
        successes: list[bool] = []

        def record_success(local_vars: dict[str, Any], _globals: dict[str, Any]) -> None:
            # Read where SB3's EvalCallback reads it: the info of the step that ends a whole episode.
            info = local_vars["info"]
            if local_vars["done"] and "episode" in info:
                successes.append(bool(info.get("is_success", False)))

        returns, _ = evaluate_policy(
            model,  # type: ignore[arg-type]
            env,
            n_eval_episodes=self.n_eval_episodes,
            deterministic=self.deterministic,
            callback=record_success,
            return_episode_rewards=True,
        )
        if self.sequence.measure == "success_rate":
            return float(np.mean(successes))
        return float(np.mean(returns))

    def result(self, seed: int | None) -> ContinualResult:
        return evaluations_result(self.sequence, self.steps, self.columns, seed)

    def close(self) -> None:
        for env in self.envs:
            env.close()


def evaluations_result(
    sequence: TaskSequence, steps: list[int], columns: list[np.ndarray], seed: int | None
) -> ContinualResult:
    """The result of the evaluations made so far on ``sequence``: one column of performances per step.

    :param steps: the global steps of the evaluations (e.g. a :class:`ContinualPosition`'s ``eval_steps``)
    :param columns: their performance columns, one value per task
    """
    return ContinualResult(
        sequence=sequence.name,
        task_names=tuple(sequence.task_names),
        budgets=tuple(sequence.budgets),
        measure=sequence.measure,
        eval_steps=np.asarray(steps),
        performance=np.stack(columns, axis=1),
        seed=seed,
    )


class _PeriodicCheckpoint(BaseCallback):
    """Calls ``save`` at the first rollout start at or after every multiple of ``every`` global steps.

    A rollout's start is the one point inside ``learn()`` where the model is consistent: every
    collected transition is stored, the update that follows a rollout is done, and ``_last_obs`` is
    the env's current observation. ``every=None`` saves only when ``requested`` is set (Ctrl-C).
    """

    def __init__(self, save: Callable[[int], None], every: int | None, start: int, done: int) -> None:
        super().__init__()
        self.save = save
        self.every = every
        self.start = start
        self.next_save = None if every is None else ((start + done) // every + 1) * every
        self.requested = False

    def _on_rollout_start(self) -> None:
        step = self.start + self.model.num_timesteps
        due = self.next_save is not None and step >= self.next_save
        if due or self.requested:
            self.save(self.model.num_timesteps)
        if due:
            assert self.every is not None
            self.next_save = (step // self.every + 1) * self.every
        if self.requested:
            raise KeyboardInterrupt

    def _on_step(self) -> bool:
        return True


class _PeriodicEvaluation(BaseCallback):
    """Evaluates at every multiple of ``eval_every`` global steps that falls inside the current task."""

    def __init__(self, evaluator: TaskEvaluator, eval_every: int, start: int, budget: int, done: int = 0) -> None:
        super().__init__()
        self.evaluator = evaluator
        self.eval_every = eval_every
        self.start = start
        self.end = start + budget
        self.next_eval = ((start + done) // eval_every + 1) * eval_every

    def _on_step(self) -> bool:
        step = self.start + self.model.num_timesteps
        # The task's last point is evaluated after learn() returns, at the nominal end of the task.
        while self.next_eval <= step and self.next_eval < self.end:
            self.evaluator.evaluate(self.model, self.next_eval)
            self.next_eval += self.eval_every
        return True


def _check(model: BaseAlgorithm, reset_replay_buffer: bool) -> None:
    # Spaces are checked by SB3's set_env on the first task's env, before any training.
    if not isinstance(model, ContinualAlgorithm):
        name = type(model).__name__
        raise TypeError(f"learn_continual needs a crl algorithm (crl.DQN/PPO/SAC/QRDQN/TQC/CrossQ), got {name}")
    if reset_replay_buffer and not isinstance(model, OffPolicyAlgorithm):
        raise ValueError(f"reset_replay_buffer=True needs an off-policy algorithm, got {type(model).__name__}")


def check_task_heads(model: BaseAlgorithm, sequence: TaskSequence) -> None:
    """Refuse a multi-head policy (:mod:`crl.policies.multihead`) whose heads the sequence cannot choose.

    The policy reads the last ``n_heads`` entries of each observation as the one-hot task id: without
    the id, or with one of another length, it would read observation features as task ids and train
    the wrong heads, and nothing would say so.

    :raises ValueError: naming the policy option, its value and the sequence's task id
    """
    n_heads = getattr(model.policy, "n_heads", None)
    if n_heads is None:
        return
    if not sequence.task_id_in_obs:
        raise ValueError(
            f"policy option n_heads={n_heads}: the multi-head policy chooses a head by the one-hot task id in "
            f"each observation, which sequence {sequence.name!r} does not give; build it with task_id_in_obs=True"
        )
    if n_heads != sequence.n_task_ids:
        raise ValueError(
            f"policy option n_heads={n_heads}: the heads are chosen by {sequence.task_id_place}, and sequence "
            f"{sequence.name!r} gives a one-hot task id of {sequence.n_task_ids}; use n_heads={sequence.n_task_ids}"
        )


def check_schedules(model: object, sequence: TaskSequence, whole_training: bool = False) -> None:
    """Refuse interventions timed at a task, or (``whole_training``) a step, that ``sequence`` never reaches.

    Such an intervention would never act, and nothing would say so.

    :param model: the crl algorithm and its interventions
    :param sequence: the tasks it is about to learn
    :param whole_training: the sequence is all the model will train on (``crl.train``'s curricula), so
        a step past its total budget is never reached either
    :raises ValueError: naming the intervention, the parameter, its value and what is allowed
    """
    n_tasks, total = len(sequence), sequence.total_budget
    for index, intervention in enumerate(getattr(model, "interventions", [])):
        at_task = getattr(intervention, "at_task", None)
        if at_task is not None and at_task >= n_tasks:
            raise ValueError(
                f"key 'interventions[{index}].at_task' = {at_task} ({intervention.name}): not a task of the "
                f"{n_tasks}-task sequence {sequence.name!r}; allowed: 0 to {n_tasks - 1}"
            )
        if not whole_training:
            continue
        for key in ("at_step", "at_steps"):
            value = getattr(intervention, key, None)
            steps = value if isinstance(value, list) else [] if value is None else [value]
            late = [step for step in steps if step > total]
            if late:
                raise ValueError(
                    f"key 'interventions[{index}].{key}' = {value} ({intervention.name}): {late} lie past the "
                    f"sequence's {total} environment steps; allowed: 1 to {total}"
                )


def _check_position(position: ContinualPosition, sequence: TaskSequence) -> None:
    """A position inside ``sequence``: a task of it with fewer steps done than its budget, or its end
    (``task == len(sequence)``) with the evaluations made so far.

    :raises ValueError: naming the field, its value and what is allowed
    """
    n_tasks = len(sequence)
    if not 0 <= position.task <= n_tasks:
        raise ValueError(
            f"position.task must lie in [0, {n_tasks}] (a task of the {n_tasks}-task sequence {sequence.name!r}, "
            f"or {n_tasks} once all are done), got {position.task}"
        )
    budget = sequence.budgets[position.task] if position.task < n_tasks else 1
    if not 0 <= position.steps_done < budget:
        raise ValueError(
            f"position.steps_done must lie in [0, {budget - 1}] (steps of task {position.task} already trained), "
            f"got {position.steps_done}"
        )
    if len(position.eval_steps) != len(position.eval_columns):
        raise ValueError(
            f"position.eval_steps has {len(position.eval_steps)} entries but position.eval_columns "
            f"{len(position.eval_columns)}: they must pair up"
        )
    if position.task == n_tasks and not position.eval_steps:
        raise ValueError(f"position.task = {n_tasks} is the end of the sequence, but the position has no evaluations")


_ACTIVE_CHECKPOINTS: list[_PeriodicCheckpoint] = []
"""The checkpoint callback of the ``learn()`` call in progress (at most one), for :func:`request_checkpoint`."""


def request_checkpoint() -> bool:
    """Ask the running :func:`learn_continual` to checkpoint at the next rollout start and stop.

    Safe to call from a signal handler. :return: whether a run with a checkpoint hook is in progress
    """
    for callback in _ACTIVE_CHECKPOINTS:
        callback.requested = True
    return bool(_ACTIVE_CHECKPOINTS)


def _saver(checkpoint: CheckpointHook, evaluator: TaskEvaluator, index: int) -> Callable[[int], None]:
    def save(steps_done: int) -> None:
        steps, columns = list(evaluator.steps), list(evaluator.columns)
        # Inside learn(): the task has started, also at its first rollout start (steps_done 0).
        checkpoint(ContinualPosition(index, steps_done, steps, columns, None, evaluator.envs, task_started=True))

    return save


def learn_continual(
    model: BaseAlgorithm,
    sequence: TaskSequence,
    eval_every: int,
    n_eval_episodes: int = 10,
    deterministic_eval: bool | None = None,
    restart_exploration: bool = True,
    restart_learning_rate: bool = True,
    reset_replay_buffer: bool = False,
    reset_optimizers: bool = False,
    seed: int | None = None,
    callback: MaybeCallback = None,
    progress_bar: bool = False,
    position: ContinualPosition | None = None,
    checkpoint: CheckpointHook | None = None,
    checkpoint_every: int | None = None,
    checkpoint_at_task_end: bool = True,
    on_task_end: TaskEndHook | None = None,
    on_evaluation: EvaluationHook | None = None,
) -> ContinualResult:
    """Train ``model`` through every task of ``sequence``; return the performance matrix.

    :param model: a crl algorithm built on the sequence's spaces, e.g. on ``sequence.make_vec_env(0)``
        (its ``n_envs`` is kept; the loop builds every task's env itself)
    :param sequence: the tasks, in order
    :param eval_every: evaluate every task every this many environment steps of the sequence (the end
        of every task is always evaluated as well); a positive integer (NumPy's integers too)
    :param n_eval_episodes: episodes per task and evaluation (CW: 10), at least 1
    :param deterministic_eval: greedy evaluation; by default greedy for DQN and QR-DQN (their epsilon is
        exploration, not policy) and stochastic otherwise (CW evaluates SAC's stochastic policy)
    :param restart_exploration: restart DQN's and QR-DQN's epsilon schedule at every task (else one
        schedule over the sequence); other algorithms have no exploration schedule
    :param restart_learning_rate: restart the learning-rate schedule at every task (else one schedule
        over the sequence)
    :param reset_replay_buffer: empty the replay buffer at every task switch (CW's reference SAC)
    :param reset_optimizers: clear every optimizer's state at every task switch (CW's reference SAC)
    :param seed: seeds the training envs (task ``i``: ``seed + 1000 * i``) and evaluation envs; an
        integer >= 0 (NumPy's integers too), default: the model's seed
    :param callback: SB3 callback(s) passed to every ``learn()`` call
    :param position: continue a run from here (a checkpoint's; the model restored with it): its
        evaluations are kept, its task is not started again, and mid-task its env continues. Its
        ``task`` lies in ``[0, len(sequence)]`` and its ``steps_done`` below that task's budget
    :param checkpoint: called with the position at every checkpoint: after every task's last
        evaluation (``checkpoint_at_task_end``), at the first rollout start at or after every multiple
        of ``checkpoint_every`` global steps, and at the next rollout start after
        :func:`request_checkpoint` (then training stops with ``KeyboardInterrupt``)
    :param checkpoint_every: a positive integer, or ``None`` for no periodic checkpoint
    :param on_task_end: called after every task's last evaluation with the task's index and the
        result so far (e.g. to report intermediate values to a hyperparameter search, which may stop
        training by raising)
    :param on_evaluation: called after every evaluation with its global step and its column (one
        value per task), e.g. to log it elsewhere. The model's SB3 logger gets every evaluation anyway:
        ``continual/<index>_<task>``, ``continual/average`` and ``continual/step``, dumped at once at
        the evaluation's global step (:func:`dump_evaluation`)
    :return: the run's :class:`~crl.continual.results.ContinualResult`
    :raises ValueError: an argument out of range (before any training), naming it, its value and what is allowed
    """
    _check(model, reset_replay_buffer)
    assert isinstance(model, ContinualAlgorithm)  # for the type checker, after the readable check
    eval_every = check_count("eval_every", eval_every, counts="environment steps")
    n_eval_episodes = check_count("n_eval_episodes", n_eval_episodes, counts="episodes per task and evaluation")
    if checkpoint_every is not None:
        checkpoint_every = check_count("checkpoint_every", checkpoint_every, counts="environment steps, or None")
    seed = model.seed if seed is None else check_count("seed", seed, minimum=0, counts="or None for the model's seed")
    deterministic = model.algorithm_family in EPSILON_GREEDY if deterministic_eval is None else deterministic_eval
    position = position if position is not None else ContinualPosition()
    _check_position(position, sequence)
    check_schedules(model, sequence)
    check_task_heads(model, sequence)
    for intervention in model.interventions:
        intervention.check_sequence(len(sequence))
    eval_seed = None if seed is None else seed + EVAL_SEED_OFFSET
    evaluator = TaskEvaluator(sequence, n_eval_episodes, deterministic, eval_seed, position.eval_envs, on_evaluation)
    lr_schedule = model.lr_schedule
    exploration_schedule = getattr(model, "exploration_schedule", None)
    given_callbacks = [] if callback is None else list(callback) if isinstance(callback, list) else [callback]
    evaluator.steps, evaluator.columns = list(position.eval_steps), list(position.eval_columns)
    starts = np.concatenate(([0], np.cumsum(sequence.budgets))).astype(int)
    try:
        for index in range(position.task, len(sequence)):
            task, start = sequence.tasks[index], int(starts[index])
            done = position.steps_done if index == position.task else 0
            previous_env = model.get_env()
            continued = bool(done) and position.env is not None
            env = position.env if continued else None
            if env is None:
                task_seed = None if seed is None else seed + 1000 * index
                env = sequence.make_vec_env(index, n_envs=model.n_envs, seed=task_seed)
            # Mid-task with the checkpoint's env, its episodes continue from the model's last observation.
            model.set_env(env, force_reset=not continued)
            if previous_env is not None and previous_env is not env:
                previous_env.close()
            if not restart_learning_rate:
                model.lr_schedule = SequenceProgress(lr_schedule, start, task.budget, sequence.total_budget)
            if not restart_exploration and exploration_schedule is not None:
                model.exploration_schedule = SequenceProgress(  # type: ignore[attr-defined]
                    exploration_schedule, start, task.budget, sequence.total_budget
                )
            # A second start would apply the task-boundary interventions (a reset, shrink & perturb) twice.
            if not done and not (index == position.task and position.task_started):
                model.start_task(index)
                if index > 0 and reset_replay_buffer:
                    model.replay_buffer.reset()  # type: ignore[attr-defined]
                if index > 0 and reset_optimizers:
                    for optimizer in algorithm_optimizers(model):
                        clear_optimizer_state(optimizer)
            callbacks: list[BaseCallback] = [_PeriodicEvaluation(evaluator, eval_every, start, task.budget, done)]
            if checkpoint is not None:
                save = _saver(checkpoint, evaluator, index)
                periodic_checkpoint = _PeriodicCheckpoint(save, checkpoint_every, start, done)
                _ACTIVE_CHECKPOINTS.append(periodic_checkpoint)
                callbacks.append(periodic_checkpoint)
            try:
                # reset_num_timesteps=False mid-task: SB3 adds the steps done, so the task still ends at its budget.
                model.learn(
                    task.budget - done,
                    callback=[*given_callbacks, *callbacks],
                    reset_num_timesteps=not done,
                    progress_bar=progress_bar,
                )
            finally:
                _ACTIVE_CHECKPOINTS.clear()
            # What the interventions record at the task's end goes out with its evaluation, at the
            # sequence's step: left pending, it would wait for the next task's first SB3 dump at that
            # task's own step, and the last task's would never be written.
            with set_aside_records(model.logger) as task_end:
                model.end_task()
            evaluator.evaluate(model, start + task.budget, task_end)
            if checkpoint is not None and checkpoint_at_task_end:
                steps, columns = list(evaluator.steps), list(evaluator.columns)
                checkpoint(ContinualPosition(index + 1, 0, steps, columns, None, evaluator.envs))
            if on_task_end is not None:
                on_task_end(index, evaluator.result(seed))
    finally:
        model.lr_schedule = lr_schedule
        if exploration_schedule is not None:
            model.exploration_schedule = exploration_schedule  # type: ignore[attr-defined]
        evaluator.close()
    return evaluator.result(seed)
