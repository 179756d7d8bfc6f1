"""Instructions per environment step of DQN's collection on CartPole, crl against plain SB3 (callgrind).

``python -m bench.instructions [--steps 1000] [--agents sb3 crl ...] [--write docs/performance.md]`` (from
the repository root; needs valgrind: ``apt-get install valgrind``)

Wall times on a shared machine move by 10 % or more between runs of the same code, more than a
shortcut of a few microseconds per step changes; the number of instructions a step executes does not.
Each agent (by default ``sb3``, ``crl``, ``sb3_ln`` and ``crl_ln_redo`` of ``bench/overhead.py``) runs in
its own process under valgrind's callgrind, two at a time:
the model of ``dqn_cartpole`` (``bench/overhead.py``), without gradient steps (``gradient_steps=0``,
``learning_starts=0``), collects 1,000 steps to warm up, then callgrind counts the instructions of the
next ``--steps`` (``callgrind_control --zero`` and ``--dump`` around that ``learn()``). By then the
exploration rate is at its floor, so 95 % of the counted steps act greedily. The count covers the
whole process: acting, the environment, the replay buffer, callbacks and logging (no gradient step,
so ReDo never checks: ``crl_ln_redo`` counts LayerNorm's acting cost). Each agent is compared with the
SB3 agent that does the same arithmetic: ``crl_ln_redo`` with ``sb3_ln`` (SB3 with the same LayerNorms),
the others with ``sb3``. ``--write FILE`` replaces the block between ``<!-- instructions:begin -->``
and ``<!-- instructions:end -->``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch as th
from rich.console import Console

from bench.overhead import CONFIGS, TABLES, build, write_block

AGENTS = ("sb3", "crl", "sb3_ln", "crl_ln_redo")
"""The agents counted by default."""
CHOICES = (*AGENTS, "crl_metrics")
WARM_UP = 1_000


def count_in_this_process(agent: str, steps: int) -> None:
    """Run under callgrind: warm up, then have callgrind count ``steps`` collection steps and dump."""
    th.set_num_threads(1)
    config = CONFIGS["dqn_cartpole"]
    collecting = dataclasses.replace(
        config, hyperparameters=dict(config.hyperparameters, learning_starts=0, gradient_steps=0)
    )
    model = build(collecting, agent, seed=0)
    model.learn(WARM_UP)
    pid = str(os.getpid())
    subprocess.run(["callgrind_control", "--zero", pid], check=True, capture_output=True)
    model.learn(steps, reset_num_timesteps=False)
    subprocess.run(["callgrind_control", "--dump=counted", pid], check=True, capture_output=True)


def instructions_per_step(steps: int, agents: tuple[str, ...] = AGENTS) -> dict[str, float]:
    """Each agent's instructions per environment step, counted two at a time (one per core)."""
    counts = {}
    for pair in (agents[index : index + 2] for index in range(0, len(agents), 2)):
        counts.update(_count_side_by_side(steps, pair))
    return counts


def _count_side_by_side(steps: int, agents: tuple[str, ...]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as directory:
        runs = {}
        for agent in agents:
            command = [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={directory}/{agent}.out",
                sys.executable,
                "-m",
                "bench.instructions",
                "--count-in-this-process",
                agent,
                "--steps",
                str(steps),
            ]
            runs[agent] = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        counts = {}
        for agent, run in runs.items():
            _, errors = run.communicate()
            if run.returncode != 0:
                raise RuntimeError(f"callgrind run of {agent} failed:\n{errors[-2000:]}")
            # The dump made after --zero (suffix .1) holds the counted steps only
            counts[agent] = total_instructions(Path(directory, f"{agent}.out.1").read_text()) / steps
        return counts


def total_instructions(dump: str) -> int:
    """The instruction count of a callgrind dump (its ``summary:`` line, or ``totals:``)."""
    match = re.search(r"^(?:summary|totals): (\d+)", dump, flags=re.MULTILINE)
    if match is None:
        raise ValueError("the callgrind dump has no 'summary:' or 'totals:' line")
    return int(match.group(1))


def markdown(counts: dict[str, float], steps: int) -> str:
    """The table: each agent's count, and against the count of the SB3 agent doing the same arithmetic
    (the throughput table's baseline of the agent, else ``sb3``) when that was counted."""

    def against(agent: str) -> str:
        if agent == "sb3":
            return "1.00"
        baseline = TABLES["throughput"].baselines.get(agent, "sb3")
        if baseline not in counts:
            return ""
        return f"{counts[agent] / counts[baseline]:.2f} (`{baseline}`)"

    return "\n".join(
        [
            "<!-- instructions:begin -->",
            "",
            f"Command: `python -m bench.instructions --steps {steps} --agents {' '.join(counts)}` (callgrind, "
            "`dqn_cartpole` collecting "
            f"without gradient steps, {steps:,} steps after {WARM_UP:,} of warm-up).",
            "",
            "| agent | instructions per environment step | against SB3 doing the same arithmetic |",
            "|---|---|---|",
            *(f"| {agent} | {count:,.0f} | {against(agent)} |" for agent, count in counts.items()),
            "",
            "<!-- instructions:end -->",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000, help="environment steps counted per agent")
    parser.add_argument("--agents", nargs="+", choices=CHOICES, default=list(AGENTS), help="agents to count")
    parser.add_argument("--write", type=Path, help="write the table into this Markdown file's block")
    parser.add_argument("--count-in-this-process", choices=CHOICES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count_in_this_process:
        count_in_this_process(args.count_in_this_process, args.steps)
        return
    counts = instructions_per_step(args.steps, tuple(args.agents))
    table = markdown(counts, args.steps)
    Console().print(table)
    if args.write:
        write_block(args.write, table)


if __name__ == "__main__":
    main()
