"""Wall-time overhead of the plasticity-metrics monitor, and the cost of each metric.

Trains PPO on CartPole and DQN on an Atari game (NatureCNN) twice each with the same seed: once
without metrics and once with the default metric cadence (``MetricsConfig()``: the suite without the
plasticity probe and the Hessian), and prints the wall-time ratio (target: at most 1.05). Then times
each part of the suite on the trained models' probe batches, including the two expensive metrics.

Usage::

    python bench/metrics_overhead.py                 # about 7 minutes on one CPU core
    python bench/metrics_overhead.py --atari-steps 3000 --ppo-steps 10000   # a quick look

The figures in docs/metrics.md come from this script.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import ale_py
import gymnasium as gym
import torch as th
from stable_baselines3.common.env_util import make_atari_env
from stable_baselines3.common.vec_env import VecFrameStack

import crl
from crl.metrics import MetricsConfig, functions, grama, hessian, losses, monitor, suite

gym.register_envs(ale_py)


def make_ppo(metrics: MetricsConfig | None) -> crl.PPO:
    return crl.PPO("MlpPolicy", "CartPole-v1", seed=0, device="cpu", metrics=metrics)


def make_dqn(metrics: MetricsConfig | None, game: str) -> crl.DQN:
    env = VecFrameStack(make_atari_env(game, n_envs=1, seed=0), n_stack=4)
    return crl.DQN(
        "CnnPolicy",
        env,
        seed=0,
        device="cpu",
        buffer_size=20_000,
        learning_starts=1_000,
        optimize_memory_usage=True,
        replay_buffer_kwargs=dict(handle_timeout_termination=False),
        metrics=metrics,
    )


def timed_learn(
    make: Callable[[MetricsConfig | None], Any], steps: int, metrics: MetricsConfig | None
) -> tuple[float, float, Any]:
    """Wall time and this process's CPU time of ``learn(steps)``."""
    model = make(metrics)
    wall, cpu = time.perf_counter(), time.process_time()
    model.learn(steps)
    return time.perf_counter() - wall, time.process_time() - cpu, model


def milliseconds(fn: Callable[[], Any], repeats: int = 3) -> float:
    """Best of ``repeats`` wall times of ``fn()``, in ms."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return 1000 * best


def gram_ranks(post: th.Tensor) -> Any:
    return functions.rank_metrics_from_singular_values(functions.gram_singular_values(post), post.shape[0])


def unit_metrics(post: th.Tensor) -> Any:
    return (
        functions.dormant_ratio([post]),
        functions.dead_units([post]),
        functions.fau([post]),
        functions.feature_norm(post),
    )


def metric_costs(model: Any, label: str) -> None:
    """Time every part of the suite on the model's probe batch, and print a table in ms."""
    batch = model.metrics_monitor.probe_batch
    policy = model.policy
    policy.set_training_mode(False)
    obs, actions = batch.observations, batch.actions
    rows: list[tuple[str, float]] = []

    def add(name: str, fn: Callable[[], Any], repeats: int = 3) -> None:
        rows.append((name, milliseconds(fn, repeats)))

    add("forward pass of all networks (hidden_features)", lambda: policy.hidden_features(obs, actions))
    seen: set[str] = set()
    for network, layers in policy.hidden_features(obs, actions).items():
        for name, record in layers.items():
            if record.path in seen:  # a shared extractor's layers are computed once
                continue
            seen.add(record.path)
            post = record.post
            size = "x".join(str(d) for d in post.reshape(post.shape[0], -1).shape)
            add(f"{network}/{name} four ranks ({size}, Gram eigenvalues)", partial(gram_ranks, post))
            add(f"{network}/{name} four ranks (SVD, for comparison)", partial(functions.rank_metrics, post), 1)
            add(f"{network}/{name} dormant_ratio, dead_units, fau, feature_norm", partial(unit_metrics, post))
    parameters = suite.network_parameters(policy)
    previous = suite.snapshot(parameters)
    add("weight_magnitude + weight_change of all networks", lambda: suite.weight_metrics(parameters, previous))
    add(
        "whole default suite (feature_metrics + weight metrics)",
        lambda: (suite.feature_metrics(policy, obs, actions), suite.weight_metrics(parameters, previous)),
    )
    grads = [th.randn_like(p) for p in losses.optimizer_parameters(policy.optimizer)]
    add("grad_norm of one step without clipping (get_total_norm)", lambda: float(th.nn.utils.get_total_norm(grads)))
    # 20 Hessian-vector products through a NatureCNN take over a minute: time 5 and scale.
    iterations = MetricsConfig().hessian_iterations
    five = milliseconds(lambda: hessian.training_loss_eigenvalues(model, batch, iterations=5), repeats=1)
    rows.append((f"hessian_top_eig, {iterations} iterations (5 timed, scaled)", five * iterations / 5))
    tau = MetricsConfig().grama_tau
    add("grama_ratio of all networks (one backward pass)", lambda: grama.grama_metrics(model, batch, tau, seed=0), 1)
    size = model.batch_size
    add(
        f"plasticity_probe of all networks, 1 epoch of {size}-sample minibatches",
        lambda: monitor.plasticity_probes(
            policy, model.algorithm_family, policy._to_tensor(obs), policy._to_tensor(actions), 1, size, 0
        ),
        1,
    )
    print(f"\n{label}: probe batch {tuple(obs.shape)}, cost in ms ({th.get_num_threads()} torch thread(s))")
    width = max(len(name) for name, _ in rows)
    for name, ms in rows:
        print(f"  {name:<{width}}  {ms:10.1f}")


def overhead(label: str, make: Callable[[MetricsConfig | None], Any], steps: int) -> Any:
    """Print the wall- and CPU-time ratios of a run with the default cadence over one without metrics.

    On a shared machine the end-to-end ratio is dominated by other load, so the script also prints
    the steady-state estimate: the measured cost of one measurement (best of 3) over the CPU time of
    ``every`` steps of the run without metrics.
    """
    off_wall, off_cpu, _ = timed_learn(make, steps, None)
    on_wall, on_cpu, model = timed_learn(make, steps, MetricsConfig())
    monitor = model.metrics_monitor
    measurements = monitor.measurements
    measure_ms = milliseconds(lambda: monitor.measure(model))
    every_ms = 1000 * off_cpu / steps * MetricsConfig().every
    print(
        f"{label}, {steps} steps, {measurements} measurements: wall {off_wall:.1f} s -> {on_wall:.1f} s, "
        f"ratio {on_wall / off_wall:.3f}; CPU {off_cpu:.1f} s -> {on_cpu:.1f} s, ratio {on_cpu / off_cpu:.3f}\n"
        f"  one measurement {measure_ms:.0f} ms, {MetricsConfig().every} steps {every_ms:.0f} ms: "
        f"steady-state ratio {1 + measure_ms / every_ms:.3f}"
    )
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ppo-steps", type=int, default=50_000)
    parser.add_argument("--atari-steps", type=int, default=12_000)
    parser.add_argument("--game", default="PongNoFrameskip-v4")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: least disturbed by other load)")
    args = parser.parse_args()
    th.set_num_threads(args.threads)
    print(f"default cadence: {MetricsConfig()}")
    ppo = overhead("PPO CartPole-v1 (MlpPolicy)", make_ppo, args.ppo_steps)
    dqn = overhead(f"DQN {args.game} (CnnPolicy)", lambda metrics: make_dqn(metrics, args.game), args.atari_steps)
    metric_costs(ppo, "PPO CartPole-v1")
    metric_costs(dqn, f"DQN {args.game}")


if __name__ == "__main__":
    main()
