"""Wall-time overhead of each intervention at its default settings.

For every algorithm an intervention supports, train the same short run (same seed, one torch thread)
of two tasks of one environment (half the steps each, so the interventions that act at task ends and
starts act once) with and without it and report ``time(with) / time(without)``, for wall time and for the process's
CPU time (steadier on a shared machine). Runs are interleaved (baseline, then each intervention,
``--repeats`` times) and the minimum per configuration is used. Prints a Markdown table for
docs/interventions.md.

    python bench/interventions_overhead.py [--repeats 3] [--algorithms DQN PPO SAC]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch as th

import crl
from crl.interventions import Intervention, InterventionError, make_intervention

RUNS: dict[str, tuple[str, int, dict[str, Any]]] = {
    # algorithm: (env, timesteps, constructor arguments); SB3 defaults otherwise
    "DQN": ("CartPole-v1", 6_000, dict(learning_starts=1_000)),
    "PPO": ("CartPole-v1", 6_144, dict()),
    "SAC": ("Pendulum-v1", 1_200, dict(learning_starts=200)),
}

TARGETS = {"layer_norm": 1.15, "pfo": 1.25, "redo": 1.10, "continual_backprop": 1.10, "shrink_perturb": 1.10}


def defaults(name: str, algorithm: str) -> dict[str, Any]:
    """The intervention's defaults, plus what it needs to act within the run."""
    steps = RUNS[algorithm][1]
    if name == "plasticity_injection":
        return {"name": name, "at_step": steps // 2}
    return {"name": name}


def applies(name: str, algorithm: str) -> bool:
    """Whether the intervention accepts the run (``random_shift`` needs images); says why not."""
    env, _, kwargs = RUNS[algorithm]
    try:
        intervention = make_intervention(defaults(name, algorithm))
        getattr(crl, algorithm)("MlpPolicy", env, interventions=[intervention], **kwargs)
    except InterventionError as error:
        print(f"{name:24s} {algorithm}: skipped ({error})", flush=True)
        return False
    return True


def timed_run(algorithm: str, interventions: list[Intervention]) -> tuple[float, float]:
    """``(wall seconds, CPU seconds)`` of two tasks of half the steps each, the boundary included."""
    env, steps, kwargs = RUNS[algorithm]
    model = getattr(crl, algorithm)("MlpPolicy", env, seed=0, interventions=interventions, **kwargs)
    wall, cpu = time.perf_counter(), time.process_time()
    model.start_task(0)
    model.learn(steps // 2)
    model.end_task(0)
    model.start_task(1)
    model.learn(steps - steps // 2, reset_num_timesteps=False)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--algorithms", nargs="+", default=list(RUNS), choices=list(RUNS))
    args = parser.parse_args()
    th.set_num_threads(1)

    rows = []
    for algorithm in args.algorithms:
        names = [
            name
            for name, cls in crl.interventions.registered_interventions().items()
            if (cls.algorithms is None or algorithm in cls.algorithms) and applies(name, algorithm)
        ]
        best: dict[str | None, tuple[float, float]] = {}
        for _ in range(args.repeats):
            for name in [None, *names]:
                interventions = [] if name is None else [make_intervention(defaults(name, algorithm))]
                wall, cpu = timed_run(algorithm, interventions)
                previous = best.get(name, (float("inf"), float("inf")))
                best[name] = (min(previous[0], wall), min(previous[1], cpu))
        base_wall, base_cpu = best[None]
        for name in names:
            wall, cpu = best[name]
            rows.append((name, algorithm, wall / base_wall, cpu / base_cpu))
            print(f"{name:24s} {algorithm}: wall {wall / base_wall:.3f}  cpu {cpu / base_cpu:.3f}", flush=True)
        print(f"{'(none)':24s} {algorithm}: wall {base_wall:.2f}s  cpu {base_cpu:.2f}s", flush=True)

    print("\n| intervention | algorithm | wall time ratio | CPU time ratio | target |")
    print("|---|---|---|---|---|")
    for name, algorithm, wall_ratio, cpu_ratio in rows:
        target = TARGETS.get(name)
        bound = f"<= {target:.2f}" if target else ""
        print(f"| `{name}` | {algorithm} | {wall_ratio:.2f} | {cpu_ratio:.2f} | {bound} |")


if __name__ == "__main__":
    main()
