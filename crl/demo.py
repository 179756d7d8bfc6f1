"""The main job: does a DQN lose plasticity across task switches, and does LayerNorm help?

``python -m crl.demo`` trains DQN (rl-baselines3-zoo's CartPole hyperparameters) through a sequence
of CartPole tasks, each seeing the observations through a different fixed permutation and sign flip
(:class:`crl.wrappers.ObservationShift`, SPEC.md §5), in three variants: one network trained on
through all tasks, the same with LayerNorm, and a fresh network per task (the reference for how well
a task can be learned from scratch). It prints the mean return of the last 20 % of each task's
episodes. Default budget: 4 tasks x 15k steps x 3 variants, about 3 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from rich.console import Console
from rich.table import Table
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from crl import DQN, LayerNorm
from crl.interventions import Intervention
from crl.wrappers import ObservationShift

# rl-baselines3-zoo's tuned DQN hyperparameters for CartPole-v1
ZOO_CARTPOLE_DQN: dict[str, Any] = dict(
    learning_rate=2.3e-3,
    batch_size=64,
    buffer_size=100_000,
    learning_starts=1000,
    gamma=0.99,
    target_update_interval=10,
    train_freq=256,
    gradient_steps=128,
    exploration_fraction=0.16,
    exploration_final_eps=0.04,
    policy_kwargs=dict(net_arch=[256, 256]),
)


@dataclass(frozen=True)
class Variant:
    """How the agent meets the task sequence.

    :param name: label in the summary
    :param interventions: factory of the interventions (fresh objects per run)
    :param fresh_network_per_task: start every task from a new network (the no-plasticity-loss reference)
    """

    name: str
    interventions: Callable[[], list[Intervention]] = field(default=list)
    fresh_network_per_task: bool = False


VARIANTS = (
    Variant("one network, trained on"),
    Variant("one network + LayerNorm", interventions=lambda: [LayerNorm()]),
    Variant("fresh network per task", fresh_network_per_task=True),
)


def make_task_env(task_id: int, seed: int) -> DummyVecEnv:
    """CartPole seen through the observation shift of task ``task_id`` (task 0 is unshifted)."""

    def make() -> gym.Env:
        env = gym.make("CartPole-v1")
        if task_id == 0:
            # The identity shift still gives task 0 the unbounded space every shifted task has.
            env = ObservationShift(env, np.arange(4), np.ones(4))
        else:
            env = ObservationShift.random(env, seed=1000 * seed + task_id)
        return Monitor(env)

    return DummyVecEnv([make])


def _new_model(variant: Variant, env: DummyVecEnv, seed: int) -> DQN:
    return DQN("MlpPolicy", env, seed=seed, interventions=variant.interventions(), **ZOO_CARTPOLE_DQN)


def run_variant(variant: Variant, n_tasks: int, steps_per_task: int, seed: int) -> list[float]:
    """Train through the tasks; return each task's mean return over its last 20 % of episodes."""
    scores = []
    model: DQN | None = None
    for task_id in range(n_tasks):
        env = make_task_env(task_id, seed)
        if model is None or variant.fresh_network_per_task:
            model = _new_model(variant, env, seed + task_id)
        else:
            model.set_env(env)
        model.start_task(task_id)
        # A new learn() call restarts the exploration schedule and the warm-up for each task;
        # the replay buffer and the network carry over.
        model.learn(steps_per_task, reset_num_timesteps=True)
        model.end_task()
        returns = env.envs[0].get_episode_rewards()  # type: ignore[attr-defined]
        tail = returns[-max(1, len(returns) // 5) :]
        scores.append(float(np.mean(tail)))
    return scores


def _summary(results: dict[str, list[float]], n_tasks: int) -> Table:
    table = Table(title="Mean return, last 20 % of each task's episodes (CartPole max 500)")
    table.add_column("variant")
    for task_id in range(n_tasks):
        table.add_column(f"task {task_id + 1}", justify="right")
    for name, scores in results.items():
        table.add_row(name, *(f"{score:.0f}" for score in scores))
    return table


def main(argv: Sequence[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(prog="python -m crl.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=4, help="number of tasks (default 4)")
    parser.add_argument("--steps", type=int, default=15_000, help="env steps per task (default 15000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.steps < 1:
        parser.error(f"--tasks and --steps must be positive, got --tasks {args.tasks} --steps {args.steps}")

    console = Console()
    results = {}
    for variant in VARIANTS:
        start = time.perf_counter()
        results[variant.name] = run_variant(variant, args.tasks, args.steps, args.seed)
        console.print(f"{variant.name}: done in {time.perf_counter() - start:.0f} s")
    console.print(_summary(results, args.tasks))
    return results


if __name__ == "__main__":
    main()
