"""Wall time of crl against plain Stable-Baselines3 on the same training runs, interleaved.

``python bench/overhead.py [--reps 5] [--only ppo_cartpole ...] [--scale 0.1] [--write docs/performance.md]``

Each configuration is trained by three agents: plain SB3 (``sb3``), crl with no intervention and no
metrics (``crl``) and crl with the default metric suite (``crl_metrics``: ``MetricsConfig()``, every
10,000 steps plus the baseline measurement at the first update). Every repetition runs the three
agents of a configuration back to back, in an order that rotates between repetitions, with the same
seed and fresh environments, on one torch thread; only ``learn()`` is timed. The ratio of a
repetition is ``crl time / sb3 time``; the table shows the median and the range over repetitions
(targets: ``crl`` <= 1.02, ``crl_metrics`` <= 1.05).

The run lengths make each ``crl_metrics`` run pay at least the measurement density of the default
cadence: runs of 10,000 steps or fewer take the baseline measurement (and one more at 10,000), i.e.
one measurement per run or more, where a long run takes one per 10,000 steps.

``--write FILE`` replaces the block between ``<!-- overhead:begin -->`` and ``<!-- overhead:end -->``
in ``FILE`` with the machine description and the table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ale_py
import gymnasium as gym
import stable_baselines3 as sb3
import torch as th
from rich.console import Console
from rich.table import Table
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_atari_env, make_vec_env
from stable_baselines3.common.vec_env import VecEnv, VecFrameStack

import crl
from crl.metrics import MetricsConfig
from crl.wrappers.continual_world import metaworld_env

gym.register_envs(ale_py)

AGENTS = ("sb3", "crl", "crl_metrics")
TARGETS = {"crl": 1.02, "crl_metrics": 1.05}
BEGIN, END = "<!-- overhead:begin -->", "<!-- overhead:end -->"


@dataclass(frozen=True)
class Config:
    """One training configuration: the algorithm, its env, its hyperparameters and the run length.

    :param algorithm: the SB3 class name (crl has a subclass of the same name)
    :param policy: the policy name
    :param make_env: builds the training ``VecEnv`` from a seed
    :param steps: environment steps of ``learn()``
    :param hyperparameters: constructor arguments shared by SB3 and crl
    """

    algorithm: str
    policy: str
    make_env: Callable[[int], VecEnv]
    steps: int
    description: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)


def _atari(seed: int) -> VecEnv:
    return VecFrameStack(make_atari_env("BreakoutNoFrameskip-v4", n_envs=1, seed=seed), n_stack=4)


def _cartpole(seed: int) -> VecEnv:
    return make_vec_env("CartPole-v1", n_envs=4, seed=seed)


def _pendulum(seed: int) -> VecEnv:
    return make_vec_env("Pendulum-v1", n_envs=1, seed=seed)


def _continual_world(seed: int) -> VecEnv:
    return make_vec_env(lambda: metaworld_env("hammer"), n_envs=1, seed=seed)


CONFIGS: dict[str, Config] = {
    "dqn_atari": Config(
        "DQN",
        "CnnPolicy",
        _atari,
        10_000,
        "DQN, Breakout (SB3's Atari preprocessing, 4 frames), NatureCNN, 10k steps, updates every 4 from step 1k",
        dict(
            buffer_size=10_000,
            learning_starts=1_000,
            learning_rate=1e-4,
            batch_size=32,
            train_freq=4,
            target_update_interval=1_000,
            exploration_fraction=0.1,
            exploration_final_eps=0.01,
            optimize_memory_usage=True,
            replay_buffer_kwargs=dict(handle_timeout_termination=False),
        ),
    ),
    "ppo_cartpole": Config(
        "PPO",
        "MlpPolicy",
        _cartpole,
        20_480,
        "PPO, CartPole, 4 envs x 128 steps, 4 epochs, 64x64 tanh MLP, 20k steps",
        dict(n_steps=128, n_epochs=4, batch_size=64),
    ),
    "sac_pendulum": Config(
        "SAC",
        "MlpPolicy",
        _pendulum,
        3_000,
        "SAC, Pendulum, 256x256 MLPs, 3k steps, updates from step 100",
        dict(learning_starts=100),
    ),
    "sac_cw": Config(
        "SAC",
        "MlpPolicy",
        _continual_world,
        3_000,
        "SAC, Continual World hammer (Meta-World v3), 256x256 MLPs, 3k steps, updates from step 1k",
        dict(learning_starts=1_000),
    ),
}


def build(config: Config, agent: str, seed: int) -> BaseAlgorithm:
    """The agent's model of ``config`` (plain SB3, or crl with or without the default metrics)."""
    env = config.make_env(seed)
    arguments = dict(config.hyperparameters, seed=seed, device="cpu")
    if agent == "sb3":
        return getattr(sb3, config.algorithm)(config.policy, env, **arguments)
    metrics = MetricsConfig() if agent == "crl_metrics" else None
    return getattr(crl, config.algorithm)(config.policy, env, metrics=metrics, **arguments)


def timed_learn(config: Config, agent: str, seed: int, steps: int) -> float:
    """Wall time in seconds of ``learn(steps)`` (construction not included)."""
    model = build(config, agent, seed)
    env = model.get_env()
    start = time.perf_counter()
    model.learn(steps)
    elapsed = time.perf_counter() - start
    if env is not None:
        env.close()
    return elapsed


def measure(
    names: list[str], repetitions: int, seed: int, scale: float, console: Console
) -> dict[str, dict[str, list[float]]]:
    """Config -> agent -> wall time of each repetition; agents of a repetition run back to back."""
    th.set_num_threads(1)
    times: dict[str, dict[str, list[float]]] = {name: {agent: [] for agent in AGENTS} for name in names}
    for repetition in range(repetitions):
        # rotate the order so that no agent always runs first (a cold cache) or last
        order = AGENTS[repetition % 3 :] + AGENTS[: repetition % 3]
        for name in names:
            for agent in order:
                seconds = timed_learn(CONFIGS[name], agent, seed, round(scale * CONFIGS[name].steps))
                times[name][agent].append(seconds)
                console.print(f"rep {repetition + 1}/{repetitions} {name} {agent}: {seconds:.2f} s")
    return times


def measure_in_parallel(
    names: list[str], args: argparse.Namespace, console: Console
) -> dict[str, dict[str, list[float]]]:
    """:func:`measure` of each configuration in one of ``args.jobs`` processes (one torch thread each).

    The three agents of a configuration still run in the same process, back to back, so each ratio
    compares runs made under the same load; the absolute times include the other processes' load.
    """
    times: dict[str, dict[str, list[float]]] = {}
    with ProcessPoolExecutor(args.jobs) as pool:
        jobs = {name: pool.submit(_measure_in_worker, name, args.reps, args.seed, args.scale) for name in names}
        for name, job in jobs.items():
            times.update(job.result())
            console.print(f"{name}: done")
    return times


def _measure_in_worker(name: str, repetitions: int, seed: int, scale: float) -> dict[str, dict[str, list[float]]]:
    return measure([name], repetitions, seed, scale, Console())  # a console cannot be pickled: one per worker


def ratio_rows(times: dict[str, dict[str, list[float]]], scale: float = 1.0) -> list[list[str]]:
    """Table rows: config, agent, median seconds, steps/s, median ratio to SB3 [min, max], target."""
    rows = []
    for name, by_agent in times.items():
        steps = round(scale * CONFIGS[name].steps)
        for agent in AGENTS:
            seconds = statistics.median(by_agent[agent])
            cells = [name, agent, f"{seconds:.2f}", f"{steps / seconds:,.0f}"]
            if agent == "sb3":
                rows.append([*cells, "1", ""])
                continue
            ratios = [own / base for own, base in zip(by_agent[agent], by_agent["sb3"], strict=True)]
            spread = f"{statistics.median(ratios):.3f} [{min(ratios):.3f}, {max(ratios):.3f}]"
            target = TARGETS[agent]
            verdict = "met" if statistics.median(ratios) <= target else "**missed**"
            rows.append([*cells, spread, f"<= {target} {verdict}"])
    return rows


def machine() -> str:
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {th.__version__} (1 thread), SB3 {sb3.__version__}, crl {crl.__version__}"
    )


def markdown(times: dict[str, dict[str, list[float]]], repetitions: int, command: str, scale: float) -> str:
    header = "| configuration | agent | median wall time (s) | steps/s | ratio to SB3: median [min, max] | target |"
    lines = [BEGIN, "", f"Machine: {machine()}.", "", f"Command: `{command}` ({repetitions} repetitions).", ""]
    lines += [header, "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in ratio_rows(times, scale)]
    lines += ["", *(f"- `{name}`: {CONFIGS[name].description}" for name in times), "", END]
    return "\n".join(lines)


def write_block(path: Path, block: str) -> None:
    """Replace the generated block of ``path`` (or append it when the file has none)."""
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        before, rest = text.split(BEGIN, 1)
        text = before + block + rest.split(END, 1)[1]
    else:
        text = text + ("\n" if text else "") + block + "\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="repetitions (default 5)")
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), help="configurations to run (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every run length (0.1: a quick look)")
    parser.add_argument("--write", type=Path, help="write the table into this Markdown file's generated block")
    parser.add_argument(
        "--jobs", type=int, default=1, help="processes, each timing whole configurations (the costliest first)"
    )
    args = parser.parse_args()
    console = Console()
    names = args.only or list(CONFIGS)
    if args.jobs == 1:
        times = measure(names, args.reps, args.seed, args.scale, console)
    else:
        times = measure_in_parallel(names, args, console)
    table = Table("configuration", "agent", "median s", "steps/s", "ratio [min, max]", "target")
    for row in ratio_rows(times, args.scale):
        table.add_row(*row)
    console.print(table)
    if args.write:
        only = f" --only {' '.join(names)}" if args.only else ""
        scale = f" --scale {args.scale}" if args.scale != 1.0 else ""
        jobs = f" --jobs {args.jobs}" if args.jobs != 1 else ""
        command = f"python bench/overhead.py --reps {args.reps}{only}{scale}{jobs} --write {args.write}"
        write_block(args.write, markdown(times, args.reps, command, args.scale))
        console.print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
