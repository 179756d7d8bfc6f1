"""What Continual World's baselines cost on its reference SAC: consolidation (L2, EWC, MAS), A-GEM, PackNet, ClonEx.

Each run trains Continual World's reference SAC (``crl.continual.continual_world.reference_sac``: 4 x 256 networks,
a head per task, 50 updates every 50 steps from step 1,000 of a task) for 2,000 steps on CW10's
first task, ends it (where the method measures its importance or fills its memory), switches to the
second task as the CW protocol does (replay buffer and optimizers reset), fills 1,000 steps of the
new buffer, and times the next 1,000 steps (20 gradient rounds of 50), where the method acts on
every gradient step. Configurations are interleaved, one torch thread, ``--repetitions`` times;
prints the median seconds per 1,000 steps and the task end's seconds, as a Markdown table for
docs/interventions.md.

    python bench/continual_world_methods.py [--repetitions 3] [--methods none ewc agem]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch as th

from crl.continual.continual_world import reference_sac
from crl.optim import algorithm_optimizers, clear_optimizer_state
from crl.wrappers import make_sequence

METHODS: dict[str, list[Any]] = {
    "none": [],
    "l2_previous": ["l2_previous"],
    "ewc": ["ewc"],
    "mas": ["mas"],
    "agem": ["agem"],
    # Continual World's CW20 runs retrain 100,000 steps per task end: 1,000 here, scaled in the docs
    "packnet": [{"name": "packnet", "n_tasks": 10, "retrain_steps": 1_000}],
    # the timed steps lie in the second task's 10,000 random steps: its exploration acts at every one
    "clonex": ["clonex"],
}
FIRST_TASK_STEPS = 2_000
FILL_STEPS = 1_000
TIMED_STEPS = 1_000


def one_run(method: str) -> tuple[float, float]:
    """Seconds of the timed 1,000 steps on the second task, and of the first task's end."""
    sequence = make_sequence("cw10", steps_per_task=FIRST_TASK_STEPS)
    model = reference_sac(sequence, seed=0, interventions=METHODS[method])
    model.start_task(0)
    model.learn(FIRST_TASK_STEPS)
    start = time.perf_counter()
    model.end_task()
    task_end = time.perf_counter() - start
    model.set_env(sequence.make_vec_env(1, seed=1000))
    model.start_task(1)
    model.replay_buffer.reset()
    for optimizer in algorithm_optimizers(model):
        clear_optimizer_state(optimizer)
    model.learn(FILL_STEPS)
    start = time.perf_counter()
    model.learn(TIMED_STEPS, reset_num_timesteps=False)
    return time.perf_counter() - start, task_end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = parser.parse_args()
    th.set_num_threads(1)
    timed: dict[str, list[float]] = {method: [] for method in args.methods}
    ends: dict[str, list[float]] = {method: [] for method in args.methods}
    for repetition in range(args.repetitions):
        for method in args.methods:
            seconds, task_end = one_run(method)
            timed[method].append(seconds)
            ends[method].append(task_end)
            print(f"repetition {repetition} {method:12s} {seconds:6.2f} s, task end {task_end:6.2f} s", flush=True)
    baseline = statistics.median(timed["none"]) if "none" in timed else None
    print("\n| method | s per 1,000 steps (median) | against none | task end (s) |")
    print("|---|---|---|---|")
    for method in args.methods:
        median = statistics.median(timed[method])
        ratio = f"{median / baseline:.3f}" if baseline else ""
        print(f"| `{method}` | {median:.2f} | {ratio} | {statistics.median(ends[method]):.2f} |")


if __name__ == "__main__":
    main()
