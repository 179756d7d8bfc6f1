"""Estimated wall time of each preset sequence: time a short training run, extrapolate to the budget.

``python bench/sequence_wall_time.py [--steps 3000] [--only cw10 ...]``

Each preset is trained for ``--steps`` environment steps with the algorithm it is meant for, after a
warm-up of ``--steps / 3`` steps that is not timed (network updates running from the start, so the
rate is the steady state, not the cheaper random warm-up). The estimate is
``seconds per step x the preset's total budget``: training only, evaluation not included. One torch
thread by default (on 2 cores, two such runs in parallel use the machine best; more threads than
free cores slow torch down badly). A single short run on a shared machine: read the figures as the
order of magnitude.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch as th
from rich.console import Console
from rich.table import Table
from stable_baselines3.common.base_class import BaseAlgorithm

import crl
from crl.config.build import build_model, model_arguments
from crl.config.curriculum import load_curriculum
from crl.continual.continual_world import reference_sac
from crl.wrappers import TaskSequence, make_sequence

# rl-baselines3-zoo's CartPole DQN, as the default curriculum has it; training alone is timed (no metrics)
DEFAULT_CURRICULUM = load_curriculum(Path(__file__).parents[1] / "curricula" / "default.yaml")
ZOO_CARTPOLE_DQN = {**model_arguments(DEFAULT_CURRICULUM), "metrics": None}
# rl-baselines3-zoo's Atari PPO (CompoNet trains PPO on the mode sequences), 8 envs
ZOO_ATARI_PPO = dict(n_steps=128, n_epochs=4, batch_size=256, learning_rate=2.5e-4, clip_range=0.1, ent_coef=0.01)


@dataclass(frozen=True)
class Preset:
    """A preset and the agent its estimate is timed with."""

    name: str
    agent: str
    build: Callable[[TaskSequence], BaseAlgorithm]


def _dqn_cartpole(sequence: TaskSequence) -> BaseAlgorithm:
    return crl.DQN("MlpPolicy", sequence.make_vec_env(0, seed=0), seed=0, **{**ZOO_CARTPOLE_DQN, "learning_starts": 0})


def _dqn_minatar(sequence: TaskSequence) -> BaseAlgorithm:
    return crl.DQN("MlpPolicy", sequence.make_vec_env(0, seed=0), seed=0, learning_starts=0)


def _ppo_atari(sequence: TaskSequence) -> BaseAlgorithm:
    return crl.PPO("CnnPolicy", sequence.make_vec_env(0, n_envs=8, seed=0), seed=0, **ZOO_ATARI_PPO)


def _reference_sac(sequence: TaskSequence) -> BaseAlgorithm:
    return reference_sac(sequence, seed=0, learning_starts=0, random_steps=0, buffer_size=100_000)


CW10_TQC = load_curriculum(Path(__file__).parents[1] / "curricula" / "cw10_tqc.yaml")


def _cw10_tqc(sequence: TaskSequence) -> BaseAlgorithm:
    """``curricula/cw10_tqc.yaml``'s multi-head TQC, updating from the start, without metrics."""
    hyperparameters = {**CW10_TQC.hyperparameters, "learning_starts": 0, "buffer_size": 100_000}
    return build_model(CW10_TQC.model_copy(update={"hyperparameters": hyperparameters, "metrics": None}), sequence, 0)


PRESETS = (
    Preset("cartpole_permuted", "DQN, zoo CartPole", _dqn_cartpole),
    Preset("cartpole_physics", "DQN, zoo CartPole", _dqn_cartpole),
    Preset("minatar_cycle", "DQN, SB3 defaults", _dqn_minatar),
    Preset("space_invaders_modes", "PPO, zoo Atari, 8 envs", _ppo_atari),
    Preset("freeway_modes", "PPO, zoo Atari, 8 envs", _ppo_atari),
    Preset("breakout_modes", "PPO, zoo Atari, 8 envs", _ppo_atari),
    Preset("atari_cycle", "PPO, zoo Atari, 8 envs", _ppo_atari),
    Preset("cw10", "CW reference SAC", _reference_sac),
    Preset("cw10", "multi-head TQC, cw10_tqc.yaml", _cw10_tqc),
    Preset("cw20", "CW reference SAC", _reference_sac),
)


def seconds_per_step(model: BaseAlgorithm, steps: int) -> float:
    model.learn(steps // 3)
    start = time.perf_counter()
    model.learn(steps, reset_num_timesteps=False)
    return (time.perf_counter() - start) / steps


def _duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 48 * 3600 else f"{seconds / 86400:.1f} days"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="timed env steps per preset (default 3000)")
    parser.add_argument("--only", nargs="*", default=None, help="presets to time (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: one run per core)")
    args = parser.parse_args()
    th.set_num_threads(args.threads)
    table = Table(title=f"estimated training wall time ({th.get_num_threads()} torch threads)")
    for column in ("preset", "tasks x budget", "agent", "steps/s", "estimated"):
        table.add_column(column, justify="left" if column in ("preset", "agent") else "right")
    console = Console(width=140)
    for preset in PRESETS:
        if args.only and preset.name not in args.only:
            continue
        sequence = make_sequence(preset.name)
        per_step = seconds_per_step(preset.build(sequence), args.steps)
        budget = f"{len(sequence)} x {sequence.budgets[0]:,}"
        total = per_step * sequence.total_budget
        console.log(f"{preset.name}: {1 / per_step:,.0f} steps/s")
        table.add_row(preset.name, budget, preset.agent, f"{1 / per_step:,.0f}", _duration(total))
    console.print(table)


if __name__ == "__main__":
    main()
