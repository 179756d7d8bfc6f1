"""DQN on CartPole: a categorical (two-hot) Q-head against SB3's scalar head, in the scalar head's budget.

Both heads train with rl-baselines3-zoo's tuned DQN hyperparameters for CartPole-v1 (50,000 steps,
256 x 256 ReLU network); the categorical head adds only the policy option ``two_hot`` (support
[0, 100], 51 bins: with gamma = 0.99 and reward 1 per step, Q lies in [0, 100]). Every
``--eval-every`` steps the greedy policy is evaluated on 10 episodes of a separately seeded env. A
run "has learned" CartPole at the first evaluation with mean return >= 475 (gymnasium's threshold
for CartPole-v1). Prints a Markdown table per seed and the means for docs/interventions.md.

    python bench/two_hot_cartpole.py [--seeds 0 1 2] [--steps 50000] [--eval-every 2500]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

import crl
from crl.config.build import model_arguments
from crl.config.curriculum import load_curriculum

# rl-baselines3-zoo's CartPole DQN, as the default curriculum (the README's main job) has it
ZOO_CARTPOLE_DQN = {
    **model_arguments(load_curriculum(Path(__file__).parents[1] / "curricula" / "default.yaml")),
    "metrics": None,
}

HEADS: dict[str, dict[str, Any]] = {
    "scalar (SB3)": {},
    "two-hot [0, 100], 51 bins": {"two_hot": {"low": 0.0, "high": 100.0, "bins": 51}},
}
THRESHOLD = 475.0


@dataclass
class Curve:
    """Greedy evaluations of one run: ``(env steps, mean return over the episodes)``."""

    points: list[tuple[int, float]] = field(default_factory=list)

    def first_at_or_above(self, threshold: float) -> int | None:
        return next((step for step, value in self.points if value >= threshold), None)

    def last_mean(self, count: int) -> float:
        """Mean of the last ``count`` evaluations (steadier than the final one)."""
        return float(np.mean([value for _, value in self.points[-count:]]))


class Evaluate(BaseCallback):
    """Evaluates the greedy policy every ``every`` steps into ``curve``."""

    def __init__(self, env: gym.Env, every: int, episodes: int, curve: Curve) -> None:
        super().__init__()
        self.env, self.every, self.episodes, self.curve = env, every, episodes, curve

    def _on_step(self) -> bool:
        if self.num_timesteps % self.every == 0:
            mean, _ = evaluate_policy(self.model, self.env, n_eval_episodes=self.episodes, deterministic=True)
            self.curve.points.append((self.num_timesteps, float(mean)))
        return True


def run(head: dict[str, Any], seed: int, steps: int, eval_every: int) -> tuple[Curve, float]:
    """One training run; its evaluation curve and wall time."""
    hyperparameters = {**ZOO_CARTPOLE_DQN, "policy_kwargs": {**ZOO_CARTPOLE_DQN["policy_kwargs"], **head}}
    model = crl.DQN("MlpPolicy", "CartPole-v1", seed=seed, **hyperparameters)
    eval_env = Monitor(gym.make("CartPole-v1"))
    eval_env.reset(seed=10_000 + seed)
    curve = Curve()
    started = time.perf_counter()
    model.learn(steps, callback=Evaluate(eval_env, eval_every, 10, curve))
    return curve, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--eval-every", type=int, default=2_500)
    args = parser.parse_args()
    th.set_num_threads(1)

    last = 5
    print(f"| head | seed | first step with return >= 475 | best return | mean of the last {last} evaluations |")
    print("|---|---|---|---|---|")
    summary: dict[str, list[tuple[int | None, float, float]]] = {name: [] for name in HEADS}
    for seed in args.seeds:
        for name, head in HEADS.items():
            curve, seconds = run(head, seed, args.steps, args.eval_every)
            first = curve.first_at_or_above(THRESHOLD)
            best, final = max(value for _, value in curve.points), curve.last_mean(last)
            summary[name].append((first, best, final))
            reached = f"{first:,}" if first is not None else "not reached"
            print(f"| {name} | {seed} | {reached} | {best:.1f} | {final:.1f} |", flush=True)
            print(f"<!-- {name}, seed {seed}: {seconds:.0f} s, curve {curve.points} -->", flush=True)
    print()
    print(f"| head | runs reaching 475 | mean first step (runs reaching it) | mean best | mean of the last {last} |")
    print("|---|---|---|---|---|")
    for name, rows in summary.items():
        firsts = [first for first, _, _ in rows if first is not None]
        mean_first = f"{np.mean(firsts):,.0f}" if firsts else "-"
        best, final = np.mean([row[1] for row in rows]), np.mean([row[2] for row in rows])
        print(f"| {name} | {len(firsts)}/{len(rows)} | {mean_first} | {best:.1f} | {final:.1f} |")


if __name__ == "__main__":
    main()
