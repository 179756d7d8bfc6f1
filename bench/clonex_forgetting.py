"""Does ClonEx's cloning keep an earlier task? Fine-tuning against ``clonex`` on two Pendulum tasks.

A multi-head SAC (64 x 64, a head per task) trains on two tasks of ``permuted_observations("Pendulum-v1")``
(the second permutes and sign-flips the observation) with Continual World's protocol (replay buffer
and optimizers reset at the switch), ``--steps`` per task, ``learning_starts`` 1,000 per task. Each task
is evaluated (``--episodes`` stochastic episodes) at the end of each task. Variants: fine-tuning (no
intervention), ``clonex`` with cloning only (``exploration="uniform"``), and ``clonex`` as ClonEx-SAC
(``best_return``). Prints, per variant, task 0's return at its own end and at the sequence's end (the
forgetting is their difference) and task 1's final return, medians over ``--seeds``, as a Markdown table
for docs/interventions.md. One torch thread per run, two runs at a time.

    python bench/clonex_forgetting.py [--seeds 0 1 2 3 4] [--steps 8000] [--episodes 10]
"""

from __future__ import annotations

import argparse
import statistics
from concurrent.futures import ProcessPoolExecutor
from typing import Any

VARIANTS: dict[str, list[Any]] = {
    "fine-tuning": [],
    "cloning only": [{"name": "clonex", "exploration": "uniform"}],
    "ClonEx-SAC": [{"name": "clonex"}],
}


def one_run(variant: str, seed: int, steps: int, episodes: int) -> tuple[float, float, float]:
    """Task 0's return after task 0 and after task 1, and task 1's return after task 1."""
    import torch as th

    import crl
    from crl.continual.metrics import final_performance, performance_after_training
    from crl.wrappers import TaskSequence, permuted_observations

    th.set_num_threads(1)
    tasks = permuted_observations("Pendulum-v1", n_tasks=2, steps_per_task=steps).tasks
    sequence = TaskSequence(tasks, task_id_in_obs=True)
    model = crl.SAC("MultiHeadPolicy", sequence.make_vec_env(0, seed=seed), interventions=VARIANTS[variant],
                    learning_starts=1000, policy_kwargs=dict(net_arch=[64, 64], n_heads=2), seed=seed)  # fmt: skip
    result = crl.learn_continual(model, sequence, eval_every=steps, n_eval_episodes=episodes,
                                 reset_replay_buffer=True, reset_optimizers=True)  # fmt: skip
    after_own, final = performance_after_training(result), final_performance(result)
    return float(after_own[0]), float(final[0]), float(final[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--episodes", type=int, default=10)
    args = parser.parse_args()
    jobs = [(variant, seed) for seed in args.seeds for variant in VARIANTS]
    with ProcessPoolExecutor(max_workers=2) as pool:
        futures = {job: pool.submit(one_run, *job, args.steps, args.episodes) for job in jobs}
        results = {job: future.result() for job, future in futures.items()}
    for (variant, seed), (own, kept, second) in sorted(results.items()):
        print(f"{variant:14s} seed {seed}: task 0 {own:8.1f} -> {kept:8.1f}, task 1 {second:8.1f}", flush=True)
    print("\n| variant | task 0 after task 0 | task 0 after task 1 | forgetting | task 1 after task 1 |")
    print("|---|---|---|---|---|")
    for variant in VARIANTS:
        rows = [results[(variant, seed)] for seed in args.seeds]
        own, kept, second = (statistics.median(column) for column in zip(*rows, strict=True))
        forgetting = statistics.median(row[0] - row[1] for row in rows)
        print(f"| {variant} | {own:.1f} | {kept:.1f} | {forgetting:.1f} | {second:.1f} |")


if __name__ == "__main__":
    main()
