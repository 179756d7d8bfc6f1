"""What one head per task costs: ``MultiHeadPolicy`` against ``MlpPolicy`` on the same observations.

Each configuration trains on task 0 of a two-task sequence that appends the one-hot task id
(``permuted_observations``), once with the algorithm's ``MlpPolicy`` and once with its
``MultiHeadPolicy`` (two heads), interleaved, in one process with one torch thread. The difference
is the head selection: reading the task id off each observation and picking each sample's block
of the output layers, at every acting pass and every gradient step. Prints a Markdown table of
median steps/s for docs/sequences.md.

    python bench/multi_head_cost.py [--repetitions 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch as th

import crl
from crl.wrappers import TaskSequence, permuted_observations


@dataclass(frozen=True)
class Configuration:
    """One algorithm on one environment, with the hyperparameters both policies train with."""

    algorithm: str
    env_id: str
    steps: int
    hyperparameters: dict[str, Any]
    n_envs: int = 1


CONFIGURATIONS = {
    "ppo_cartpole": Configuration("PPO", "CartPole-v1", 20_480, dict(n_steps=128, batch_size=64, n_epochs=4), n_envs=4),
    "ppo_pendulum": Configuration("PPO", "Pendulum-v1", 20_480, dict(n_steps=128, batch_size=64, n_epochs=4), n_envs=4),
    "dqn_cartpole": Configuration(
        "DQN", "CartPole-v1", 20_000, dict(learning_starts=1_000, train_freq=4, batch_size=64)
    ),
    "sac_pendulum": Configuration("SAC", "Pendulum-v1", 1_500, dict(learning_starts=100)),
}


def steps_per_second(configuration: Configuration, policy: str) -> float:
    """One training run's environment steps per second (construction excluded)."""
    tasks = permuted_observations(configuration.env_id, n_tasks=2, steps_per_task=configuration.steps).tasks
    env = TaskSequence(tasks, task_id_in_obs=True).make_vec_env(0, n_envs=configuration.n_envs, seed=0)
    policy_kwargs = {"n_heads": 2} if policy == "MultiHeadPolicy" else {}
    algorithm = getattr(crl, configuration.algorithm)
    model = algorithm(policy, env, policy_kwargs=policy_kwargs, seed=0, device="cpu", **configuration.hyperparameters)
    start = time.perf_counter()
    model.learn(configuration.steps)
    return configuration.steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--configurations", nargs="+", default=list(CONFIGURATIONS), choices=list(CONFIGURATIONS))
    args = parser.parse_args()
    th.set_num_threads(1)
    print("| configuration | MlpPolicy steps/s | MultiHeadPolicy steps/s | ratio: median [min, max] |")
    print("|---|---|---|---|")
    for name in args.configurations:
        configuration = CONFIGURATIONS[name]
        single, multi = [], []
        for _ in range(args.repetitions):  # interleaved, so that drifts of the machine hit both
            single.append(steps_per_second(configuration, "MlpPolicy"))
            multi.append(steps_per_second(configuration, "MultiHeadPolicy"))
        ratios = [m / s for m, s in zip(multi, single, strict=True)]
        print(
            f"| {name} | {statistics.median(single):,.0f} | {statistics.median(multi):,.0f} | "
            f"{statistics.median(ratios):.3f} [{min(ratios):.3f}, {max(ratios):.3f}] |",
            flush=True,
        )


if __name__ == "__main__":
    main()
