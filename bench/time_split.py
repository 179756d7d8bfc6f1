"""Where a throughput run's wall time goes, without a profiler: gradient steps against collection.

``python -m bench.time_split [--config dqn_cartpole] [--steps 100000] [--reps 3] [--in-process]
[--write docs/performance.md]``

Trains the configuration of ``bench/overhead.py`` with plain SB3 and with crl (no interventions, no
metrics), interleaved, each run in a fresh process on one torch thread (as ``bench/overhead.py`` does;
``--in-process``: all in this one), and times the ``train()`` calls inside ``learn()``; the rest
of ``learn()`` is the collection (acting, environment steps, replay buffer, callbacks, logging).
Gradient steps do the same computation in both libraries, so SB3's ``train()`` time bounds the speedup
any collection shortcut can give: ``sb3 total / sb3 train time``. ``--write FILE`` replaces the
block between ``<!-- split:begin -->`` and ``<!-- split:end -->``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch as th
from rich.console import Console
from rich.table import Table
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

from bench.overhead import CONFIGS, build, in_fresh_process, write_block

AGENTS = ("sb3", "crl")
Split = dict[str, list[tuple[float, float]]]
"""agent -> (learn() seconds, seconds inside train()) of each repetition"""


def timed_split(config: str, agent: str, steps: int, seed: int = 0) -> tuple[float, float]:
    """Seconds of ``learn(steps)`` and of the ``train()`` calls inside it."""
    model = build(CONFIGS[config], agent, seed)
    assert isinstance(model, OffPolicyAlgorithm | OnPolicyAlgorithm)
    train = model.train
    inside = 0.0

    def timed_train(*args: Any, **kwargs: Any) -> None:
        nonlocal inside
        start = time.perf_counter()
        train(*args, **kwargs)
        inside += time.perf_counter() - start

    model.train = timed_train  # type: ignore[method-assign]
    start = time.perf_counter()
    model.learn(steps)
    elapsed = time.perf_counter() - start
    env = model.get_env()
    if env is not None:
        env.close()
    return elapsed, inside


def measure(config: str, steps: int, repetitions: int, console: Console, fresh_processes: bool = True) -> Split:
    """:param fresh_processes: each run in a new process (``bench.overhead.in_fresh_process``), else in this one"""
    th.set_num_threads(1)
    split: Split = {agent: [] for agent in AGENTS}
    for repetition in range(repetitions):
        for agent in AGENTS[repetition % 2 :] + AGENTS[: repetition % 2]:
            run = (config, agent, steps)
            total, train = in_fresh_process(timed_split, *run) if fresh_processes else timed_split(*run)
            split[agent].append((total, train))
            console.print(f"rep {repetition + 1}/{repetitions} {agent}: {total:.2f} s, train() {train:.2f} s")
    return split


def rows(split: Split, steps: int) -> list[list[str]]:
    """Per agent: median learn(), train() and collection seconds, collection us per step."""
    table = []
    for agent, runs in split.items():
        total = statistics.median(run[0] for run in runs)
        train = statistics.median(run[1] for run in runs)
        collect = statistics.median(run[0] - run[1] for run in runs)
        table.append([agent, f"{total:.2f}", f"{train:.2f}", f"{collect:.2f}", f"{1e6 * collect / steps:.0f}"])
    return table


def markdown(split: Split, config: str, steps: int, repetitions: int, in_process: bool = False) -> str:
    sb3_total = statistics.median(run[0] for run in split["sb3"])
    sb3_train = statistics.median(run[1] for run in split["sb3"])
    lines = [
        "<!-- split:begin -->",
        "",
        f"Command: `python -m bench.time_split --config {config} --steps {steps} --reps {repetitions}"
        f"{' --in-process' if in_process else ''}` "
        f"(medians of {repetitions} repetitions).",
        "",
        "| agent | `learn()` (s) | inside `train()` (s) | collection (s) | collection per env step (us) |",
        "|---|---|---|---|---|",
        *(f"| {' | '.join(row)} |" for row in rows(split, steps)),
        "",
        f"Bound on any collection-only speedup: SB3's `learn()` / SB3's `train()` = "
        f"{sb3_total / sb3_train:.2f}x (collection free of cost).",
        "",
        "<!-- split:end -->",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="dqn_cartpole", choices=sorted(CONFIGS))
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--in-process", action="store_true", help="time every run in this process")
    parser.add_argument("--write", type=Path, help="write the table into this Markdown file's split block")
    args = parser.parse_args()
    console = Console()
    split = measure(args.config, args.steps, args.reps, console, not args.in_process)
    table = Table("agent", "learn() s", "train() s", "collection s", "us/step")
    for row in rows(split, args.steps):
        table.add_row(*row)
    console.print(table)
    if args.write:
        write_block(args.write, markdown(split, args.config, args.steps, args.reps, args.in_process))


if __name__ == "__main__":
    main()
