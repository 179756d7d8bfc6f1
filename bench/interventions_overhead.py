"""Wall-time overhead of each intervention at its default settings.

For every algorithm an intervention supports, train the same short run (same seed, one torch thread)
of two tasks of one environment (half the steps each, so the interventions that act at task ends and
starts act once) with and without it and report ``time(with) / time(without)``, for wall time and
for the process's CPU time (steadier on a shared machine). The image augmentation is timed on
Breakout with SB3's Atari preprocessing. Runs are interleaved (baseline, then each intervention,
``--repeats`` times) and the minimum per configuration is used. Prints a Markdown table for
docs/interventions.md.

    python bench/interventions_overhead.py [--repeats 3] [--runs DQN PPO SAC DQN-Breakout] [--interventions agem ...]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import ale_py
import gymnasium as gym
import torch as th
from stable_baselines3.common.env_util import make_atari_env
from stable_baselines3.common.vec_env import VecFrameStack

import crl
from crl.interventions import Intervention, InterventionError, make_intervention


class Run(NamedTuple):
    """One benchmarked training run; SB3 defaults apart from ``kwargs``."""

    algorithm: str
    policy: str
    env: Callable[[], Any]
    steps: int
    kwargs: dict[str, Any]
    only: tuple[str, ...] | None = None
    """The interventions timed on this run (``None``: every one that applies)."""


def breakout() -> Any:
    gym.register_envs(ale_py)
    return VecFrameStack(make_atari_env("BreakoutNoFrameskip-v4", n_envs=1, seed=0), 4)


RUNS: dict[str, Run] = {
    "DQN": Run("DQN", "MlpPolicy", lambda: "CartPole-v1", 6_000, dict(learning_starts=1_000)),
    "PPO": Run("PPO", "MlpPolicy", lambda: "CartPole-v1", 6_144, dict()),
    "SAC": Run("SAC", "MlpPolicy", lambda: "Pendulum-v1", 1_200, dict(learning_starts=200)),
    # the image augmentation on SB3's Atari preprocessing (a short DQN run: 2,000 steps of training)
    "DQN-Breakout": Run(
        "DQN", "CnnPolicy", breakout, 2_500, dict(learning_starts=500, buffer_size=10_000), only=("random_shift",)
    ),
}

TARGETS = {"layer_norm": 1.15, "pfo": 1.25, "redo": 1.10, "continual_backprop": 1.10, "shrink_perturb": 1.10}


def defaults(name: str, run: Run) -> dict[str, Any]:
    """The intervention's defaults, plus what it needs to act within the run."""
    if name == "plasticity_injection":
        return {"name": name, "at_step": run.steps // 2}
    if name == "packnet":  # two tasks; a short retraining (PPO has no data to retrain on)
        return {"name": name, "n_tasks": 2, "retrain_steps": 0 if run.algorithm == "PPO" else 100}
    if name == "clonex":  # the runs' policies have one head: cloning without the heads' exploration
        return {"name": name, "exploration": "uniform"}
    return {"name": name}


def build(run: Run, interventions: list[Intervention], **kwargs: Any) -> Any:
    return getattr(crl, run.algorithm)(run.policy, run.env(), interventions=interventions, **run.kwargs, **kwargs)


def applies(name: str, run_name: str) -> bool:
    """Whether the intervention accepts the run (``random_shift`` needs images); says why not."""
    run = RUNS[run_name]
    if run.only is not None:
        return name in run.only
    try:
        build(run, [make_intervention(defaults(name, run))])
    except InterventionError as error:
        print(f"{name:24s} {run_name}: skipped ({error})", flush=True)
        return False
    return True


def timed_run(run: Run, interventions: list[Intervention]) -> tuple[float, float]:
    """``(wall seconds, CPU seconds)`` of two tasks of half the steps each, the boundary included."""
    model = build(run, interventions, seed=0)
    wall, cpu = time.perf_counter(), time.process_time()
    model.start_task(0)
    model.learn(run.steps // 2)
    model.end_task(0)
    model.start_task(1)
    model.learn(run.steps - run.steps // 2, reset_num_timesteps=False)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--interventions", nargs="+", help="time only these (default: every registered one)")
    args = parser.parse_args()
    th.set_num_threads(1)

    rows = []
    for run_name in args.runs:
        run = RUNS[run_name]
        names = [
            name
            for name, cls in crl.interventions.registered_interventions().items()
            if (args.interventions is None or name in args.interventions)
            and (cls.algorithms is None or run.algorithm in cls.algorithms)
            and applies(name, run_name)
        ]
        best: dict[str | None, tuple[float, float]] = {}
        for _ in range(args.repeats):
            for name in [None, *names]:
                interventions = [] if name is None else [make_intervention(defaults(name, run))]
                wall, cpu = timed_run(run, interventions)
                previous = best.get(name, (float("inf"), float("inf")))
                best[name] = (min(previous[0], wall), min(previous[1], cpu))
        base_wall, base_cpu = best[None]
        for name in names:
            wall, cpu = best[name]
            rows.append((name, run_name, wall / base_wall, cpu / base_cpu))
            print(f"{name:24s} {run_name}: wall {wall / base_wall:.3f}  cpu {cpu / base_cpu:.3f}", flush=True)
        print(f"{'(none)':24s} {run_name}: wall {base_wall:.2f}s  cpu {base_cpu:.2f}s", flush=True)

    print("\n| intervention | run | wall time ratio | CPU time ratio | target |")
    print("|---|---|---|---|---|")
    for name, run_name, wall_ratio, cpu_ratio in rows:
        target = TARGETS.get(name)
        bound = f"<= {target:.2f}" if target else ""
        print(f"| `{name}` | {run_name} | {wall_ratio:.2f} | {cpu_ratio:.2f} | {bound} |")


if __name__ == "__main__":
    main()
