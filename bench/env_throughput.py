"""Environment steps per second of each task sequence's env against the raw env it wraps.

``python bench/env_throughput.py [--steps 20000] [--repeats 3]``

For every preset family, three envs are stepped with the same pre-drawn random actions: the raw
environment, the second task's own env (``task.build()``: the raw env plus the task's shift or
protocol wrappers, e.g. Continual World's layout, time limit and success flag; the second task
because the shift sequences start unshifted) and that task as the sequence serves it
(``sequence.make_env(1, monitor=False)``: plus space unification, channel padding, one-hot task id).
The best of ``--repeats`` timings is kept (the least disturbed by other processes). Costs are
``1 - rate / reference rate`` (the raw env for the task, the task env for the sequence) and the time
added per step.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from rich.console import Console
from rich.table import Table

from crl.wrappers import TaskSequence, make_sequence


@dataclass(frozen=True)
class Case:
    """A sequence and the raw env of its second task."""

    name: str
    sequence: Callable[[], TaskSequence]
    raw: Callable[[], gym.Env]
    episode_steps: int | None = None  # the raw env's own limit when it has none (Meta-World v3)


def _raw_atari() -> gym.Env:
    from stable_baselines3.common.atari_wrappers import AtariWrapper

    return AtariWrapper(gym.make("ALE/SpaceInvaders-v5", mode=1, full_action_space=True, frameskip=1))


def _raw_minatar() -> gym.Env:
    from minatar.gym import BaseEnv

    return BaseEnv(game="breakout")


def _raw_metaworld() -> gym.Env:
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    env = ALL_V3_ENVIRONMENTS["push-wall-v3"]()
    env._partially_observable = False
    env._set_task_called = True
    env._freeze_rand_vec = False
    env.seeded_rand_vec = True
    return env


CASES = (
    Case("cartpole_permuted", lambda: make_sequence("cartpole_permuted", n_tasks=2), lambda: gym.make("CartPole-v1")),
    Case("cartpole_actions", lambda: make_sequence("cartpole_actions", n_tasks=2), lambda: gym.make("CartPole-v1")),
    Case("cartpole_reward_flip", lambda: make_sequence("cartpole_reward_flip"), lambda: gym.make("CartPole-v1")),
    Case("cartpole_physics", lambda: make_sequence("cartpole_physics"), lambda: gym.make("CartPole-v1")),
    Case("space_invaders_modes", lambda: make_sequence("space_invaders_modes"), _raw_atari),
    Case("minatar_cycle", lambda: make_sequence("minatar_cycle"), _raw_minatar),
    Case("cw10", lambda: make_sequence("cw10"), _raw_metaworld, episode_steps=200),
)


def steps_per_second(env: gym.Env, actions: np.ndarray, episode_steps: int | None) -> float:
    """Step ``env`` through ``actions`` (resetting at episode ends) and return the rate."""
    env.reset(seed=0)
    length = 0
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        length += 1
        if terminated or truncated or length == episode_steps:
            env.reset()
            length = 0
    return len(actions) / (time.perf_counter() - start)


def measure(case: Case, n_steps: int, repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` steps per second of the raw env, the task's env and the sequence's env."""
    sequence = case.sequence()
    # The second task where there is one: the first task of the shift sequences is the unshifted env.
    index = min(1, len(sequence) - 1)
    envs = {"raw": case.raw(), "task": sequence[index].build(), "sequence": sequence.make_env(index, monitor=False)}
    envs["raw"].action_space.seed(0)
    actions = np.array([envs["raw"].action_space.sample() for _ in range(n_steps)])
    rates = dict.fromkeys(envs, 0.0)
    names = list(envs)
    for repeat in range(repeats):
        # interleaved, each env first in turn, so that load elsewhere and warm caches favour none
        for name in names[repeat % 3 :] + names[: repeat % 3]:
            rates[name] = max(rates[name], steps_per_second(envs[name], actions, case.episode_steps))
    return rates


def _cost(rate: float, raw: float) -> str:
    return f"{100 * (1 - rate / raw):+.1f} % ({1e6 / rate - 1e6 / raw:+.2f} us)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000, help="env steps per timing (default 20000)")
    parser.add_argument("--repeats", type=int, default=3, help="timings per env, the best is kept (default 3)")
    parser.add_argument("--only", nargs="*", default=None, help="presets to run (default: all)")
    args = parser.parse_args()
    table = Table(title=f"env steps/s, best of {args.repeats} x {args.steps} random-action steps")
    columns = ("preset", "raw env", "task env", "sequence env", "task cost", "sequence cost")
    for column in columns:
        table.add_column(column, justify="left" if column == "preset" else "right")
    for case in CASES:
        if args.only and case.name not in args.only:
            continue
        rates = measure(case, args.steps, args.repeats)
        raw, task, sequence = rates["raw"], rates["task"], rates["sequence"]
        table.add_row(
            case.name, f"{raw:,.0f}", f"{task:,.0f}", f"{sequence:,.0f}", _cost(task, raw), _cost(sequence, task)
        )
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
