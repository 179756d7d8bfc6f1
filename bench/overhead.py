"""Wall time of crl against plain Stable-Baselines3 on the same training runs, interleaved.

``python bench/overhead.py [--table overhead|throughput] [--reps 5] [--only NAME ...] [--scale 0.1]
[--in-process] [--write docs/performance.md] [--save FILE.json] [--load FILE.json ...]``

Two tables, each from its own run:

- ``overhead`` (the default): each configuration is trained by three agents: plain SB3 (``sb3``),
  crl with no intervention and no metrics (``crl``) and crl with the default metric suite
  (``crl_metrics``: ``MetricsConfig()``, every 10,000 steps plus the baseline measurement at the first
  update). The ratio of a repetition is ``crl time / sb3 time`` (targets: ``crl`` <= 1.02,
  ``crl_metrics`` <= 1.05).
- ``throughput``: the configurations of the hot-path targets (DQN on CartPole with the single-file
  baseline's hyperparameters, DQN and PPO on Atari, SAC on Pendulum, PPO on CartPole) and a fourth
  agent, ``crl_ln_redo`` (``LayerNorm()`` and ``ReDo()``). The ratio of a repetition is
  ``crl steps/s / sb3 steps/s`` (targets per configuration, e.g. >= 1.5 for ``dqn_cartpole``).
  ``dqn_cartpole`` also times the single-file baseline's loop (``single_file``,
  :mod:`bench.single_file_dqn`) as a reference, without a target: what the 1.5 stands for. Every
  configuration also times plain SB3 with the same LayerNorms (``sb3_ln``,
  :mod:`bench.sb3_layer_norm`), the reference that does LayerNorm's arithmetic too: the table adds the
  row ``crl_ln_redo against sb3_ln`` (``sb3_ln time / crl_ln_redo time``, the configuration's target).
  The Atari configurations also time crl in a process set up as ``python -m crl.train`` sets up its
  own (``crl_train``: glibc keeps freed memory, :func:`crl.process.keep_freed_memory`) and plain SB3
  with the same allocator setting (``sb3_kept_memory``), with the row ``crl_train against
  sb3_kept_memory``: what a crl job gains over a plain SB3 script, and how much of it is the allocator.
- ``contrib``: crl's sb3-contrib algorithms against sb3-contrib's own (QR-DQN on ``dqn_cartpole``'s
  configuration, TQC and CrossQ on Pendulum); the agent ``sb3`` is sb3-contrib's class, ``crl`` and
  ``crl_metrics`` as above. The ratio is the throughput table's; crl's target is 1.0 (no slower).

Every repetition runs the agents of a configuration back to back, in an order that rotates between
repetitions, with the same seed and fresh environments, on one torch thread; only ``learn()`` is
timed; the tables show the median and the range over repetitions. Each run gets a fresh Python
process, as a training job does: runs made one after the other in one process inherit the heap the
earlier ones left, and with it how often the next one's tensors page-fault (DQN on Atari: plain SB3's
run made 2.1 million minor page faults as the first run of a process, 0.15 million after two crl runs,
and took 16 % less time). ``--in-process`` times every run in the measuring process instead (how the
tables were measured before 2026-11-22). Each agent runs its library's
stack: ``sb3`` gets SB3's ``DummyVecEnv``, the crl agents crl's (:mod:`crl.wrappers.vec_env`, what crl
builds for an env id or a task sequence).

The run lengths make each ``crl_metrics`` run pay at least the measurement density of the default
cadence: runs of 10,000 steps or fewer take the baseline measurement (and one more at 10,000), i.e.
one measurement per run or more, where a long run takes one per 10,000 steps.

``--profile STEPS`` profiles instead of timing: ``dqn_cartpole`` for STEPS steps under ``cProfile``,
once with SB3 and once with crl, and reports the cumulative time of each hot spot of the issue
(mode switches, deep copies, ``obs_to_tensor``, ...) as a share of ``learn()``. cProfile inflates
Python-heavy code, so a share is larger than its wall-time weight, but the two columns compare, also
on a loaded machine; ``--write`` puts that table between ``<!-- profile:begin -->`` and ``<!-- profile:end -->``.

``--write FILE`` replaces the table's block in ``FILE`` (between ``<!-- overhead:begin -->`` and
``<!-- overhead:end -->``, or the ``throughput`` or ``contrib`` markers) with the machine description and the table.
``--save`` keeps the measured times in a JSON file; ``--load`` makes the table from saved files instead
of measuring (e.g. two runs of different ``--only`` subsets, one after the other); a configuration in
several files gets the repetitions of all of them.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import multiprocessing
import os
import platform
import pstats
import statistics
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import ale_py
import gymnasium as gym
import sb3_contrib
import stable_baselines3 as sb3
import torch as th
from rich.console import Console
from rich.table import Table
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_atari_env, make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv as SB3DummyVecEnv
from stable_baselines3.common.vec_env import VecEnv, VecFrameStack

import crl
from crl.interventions import LayerNorm, ReDo
from crl.metrics import MetricsConfig
from crl.process import keep_freed_memory
from crl.wrappers.continual_world import metaworld_env
from crl.wrappers.vec_env import DummyVecEnv

if __package__:  # imported as bench.overhead (tests, python -m bench.time_split)
    from .sb3_layer_norm import with_layer_norm
    from .single_file_dqn import timed_single_file_dqn
else:  # run as a script: bench/ is on sys.path
    from sb3_layer_norm import with_layer_norm  # type: ignore[no-redef]
    from single_file_dqn import timed_single_file_dqn  # type: ignore[no-redef]

gym.register_envs(ale_py)

VecEnvClass = type[SB3DummyVecEnv]
Result = TypeVar("Result")


@dataclass(frozen=True)
class Config:
    """One training configuration: the algorithm, its env, its hyperparameters and the run length.

    :param algorithm: the SB3 or sb3-contrib class name (crl has a subclass of the same name)
    :param policy: the policy name
    :param make_env: builds the training ``VecEnv`` from a seed and the ``DummyVecEnv`` class to use
    :param steps: environment steps of ``learn()``
    :param hyperparameters: constructor arguments shared by SB3 and crl
    """

    algorithm: str
    policy: str
    make_env: Callable[[int, VecEnvClass], VecEnv]
    steps: int
    description: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)


def _atari(seed: int, vec_env_cls: VecEnvClass, n_envs: int = 1) -> VecEnv:
    env = make_atari_env("BreakoutNoFrameskip-v4", n_envs=n_envs, seed=seed, vec_env_cls=vec_env_cls)
    return VecFrameStack(env, n_stack=4)


def _atari_8(seed: int, vec_env_cls: VecEnvClass) -> VecEnv:
    return _atari(seed, vec_env_cls, n_envs=8)


def _cartpole(seed: int, vec_env_cls: VecEnvClass) -> VecEnv:
    return make_vec_env("CartPole-v1", n_envs=4, seed=seed, vec_env_cls=vec_env_cls)


def _cartpole_1(seed: int, vec_env_cls: VecEnvClass) -> VecEnv:
    return make_vec_env("CartPole-v1", n_envs=1, seed=seed, vec_env_cls=vec_env_cls)


def _pendulum(seed: int, vec_env_cls: VecEnvClass) -> VecEnv:
    return make_vec_env("Pendulum-v1", n_envs=1, seed=seed, vec_env_cls=vec_env_cls)


def _continual_world(seed: int, vec_env_cls: VecEnvClass) -> VecEnv:
    return make_vec_env(lambda: metaworld_env("hammer"), n_envs=1, seed=seed, vec_env_cls=vec_env_cls)


CONFIGS: dict[str, Config] = {
    "dqn_cartpole": Config(
        "DQN",
        "MlpPolicy",
        _cartpole_1,
        100_000,
        "DQN, CartPole, the single-file baseline's hyperparameters (lr 2.5e-4, buffer 10k, batch 128, updates "
        "every 10 steps from step 10k, target sync every 500, epsilon 1 -> 0.05 over 50k steps, 120x84 MLP)",
        dict(
            learning_rate=2.5e-4,
            buffer_size=10_000,
            batch_size=128,
            learning_starts=10_000,
            train_freq=10,
            target_update_interval=500,
            exploration_fraction=0.5,
            exploration_final_eps=0.05,
            gamma=0.99,
            policy_kwargs=dict(net_arch=[120, 84]),
        ),
    ),
    "dqn_atari": Config(
        "DQN",
        "CnnPolicy",
        _atari,
        10_000,
        "DQN, Breakout (SB3's Atari preprocessing, 4 frames), NatureCNN, updates every 4 from step 1k",
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
        "PPO, CartPole, 4 envs x 128 steps, 4 epochs, 64x64 tanh MLP",
        dict(n_steps=128, n_epochs=4, batch_size=64),
    ),
    "ppo_atari": Config(
        "PPO",
        "CnnPolicy",
        _atari_8,
        8_192,
        "PPO, Breakout (SB3's Atari preprocessing, 4 frames), 8 envs x 128 steps, 4 epochs, minibatch 256, NatureCNN",
        dict(n_steps=128, n_epochs=4, batch_size=256, learning_rate=2.5e-4, clip_range=0.1, ent_coef=0.01),
    ),
    "sac_pendulum": Config(
        "SAC",
        "MlpPolicy",
        _pendulum,
        3_000,
        "SAC, Pendulum, 256x256 MLPs, updates from step 100",
        dict(learning_starts=100),
    ),
    "qrdqn_cartpole": Config(
        "QRDQN",
        "MlpPolicy",
        _cartpole_1,
        50_000,
        "QR-DQN, CartPole, rl-baselines3-zoo's tuned hyperparameters (256x256 MLP, 10 quantiles, 128 gradient "
        "steps of 64 every 256 steps from step 1k, target sync every 10 updates)",
        dict(
            learning_rate=2.3e-3,
            batch_size=64,
            buffer_size=100_000,
            learning_starts=1_000,
            gamma=0.99,
            target_update_interval=10,
            train_freq=256,
            gradient_steps=128,
            exploration_fraction=0.16,
            exploration_final_eps=0.04,
            policy_kwargs=dict(net_arch=[256, 256], n_quantiles=10),
        ),
    ),
    "tqc_pendulum": Config(
        "TQC",
        "MlpPolicy",
        _pendulum,
        1_500,
        "TQC, Pendulum, 256x256 MLPs (2 critics of 25 quantiles, 2 dropped per critic), updates from step 100",
        dict(learning_starts=100),
    ),
    "crossq_pendulum": Config(
        "CrossQ",
        "MlpPolicy",
        _pendulum,
        500,
        "CrossQ, Pendulum, sb3-contrib's networks (actor 256x256, critics 1024x1024 with BatchRenorm), updates "
        "from step 100",
        dict(learning_starts=100),
    ),
    "sac_cw": Config(
        "SAC",
        "MlpPolicy",
        _continual_world,
        3_000,
        "SAC, Continual World hammer (Meta-World v3), 256x256 MLPs, updates from step 1k",
        dict(learning_starts=1_000),
    ),
}


@dataclass(frozen=True)
class TableSpec:
    """What one table compares: its agents, its runs and how a ratio is read.

    :param agents: ``sb3`` first, then the crl agents
    :param references: configuration -> agents outside SB3 and crl timed beside them (no target), e.g.
        the single-file baseline's loop (:mod:`bench.single_file_dqn`)
    :param runs: configuration -> environment steps of its ``learn()``
    :param speedup: ratios are ``sb3 time / crl time`` (steps/s against SB3's, higher is better)
        instead of ``crl time / sb3 time`` (cost against SB3's, lower is better)
    :param targets: the target of each row, by agent (overhead) or by configuration (throughput)
    :param baselines: agent -> the reference that does the same arithmetic (e.g. ``crl_ln_redo`` ->
        ``sb3_ln``): a row more gives the agent's ratio against it, with the configuration's target
    :param library: what the agent ``sb3`` is, as the table's header names it
    """

    agents: tuple[str, ...]
    runs: dict[str, int]
    speedup: bool
    targets: dict[str, float]
    references: dict[str, tuple[str, ...]] = field(default_factory=dict)
    baselines: dict[str, str] = field(default_factory=dict)
    library: str = "SB3"

    def target(self, name: str, agent: str) -> float:
        return self.targets[name] if self.speedup else self.targets[agent]

    def verdict(self, name: str, agent: str, median: float) -> str:
        """The target cell of a row: the target and whether the median ratio meets it."""
        target = self.target(name, agent)
        met = median >= target if self.speedup else median <= target
        return f"{'>=' if self.speedup else '<='} {target} {'met' if met else '**missed**'}"

    def agents_of(self, name: str) -> tuple[str, ...]:
        """The agents timed on configuration ``name``: the table's, then its references."""
        return self.agents + self.references.get(name, ())


KEPT_MEMORY_AGENTS = {"crl_train": "crl", "sb3_kept_memory": "sb3"}
"""Agents timed in a process whose glibc keeps freed memory, as ``python -m crl.train`` sets it up -> the
agent they otherwise are."""

ATARI_REFERENCES = ("sb3_ln", *KEPT_MEMORY_AGENTS)
"""The references timed beside the Atari configurations of the throughput table."""

THROUGHPUT = {
    "dqn_cartpole": 100_000,
    "dqn_atari": 4_000,
    "sac_pendulum": 1_500,
    "ppo_cartpole": 20_480,
    "ppo_atari": 4_096,
}
"""The throughput table's configurations and the environment steps of each run."""

TABLES: dict[str, TableSpec] = {
    "overhead": TableSpec(
        agents=("sb3", "crl", "crl_metrics"),
        runs={name: CONFIGS[name].steps for name in ("dqn_atari", "ppo_cartpole", "sac_pendulum", "sac_cw")},
        speedup=False,
        targets={"crl": 1.02, "crl_metrics": 1.05},
    ),
    "throughput": TableSpec(
        agents=("sb3", "crl", "crl_metrics", "crl_ln_redo"),
        runs=THROUGHPUT,
        speedup=True,
        targets={"dqn_cartpole": 1.5, "dqn_atari": 1.2, "sac_pendulum": 1.1, "ppo_cartpole": 1.0, "ppo_atari": 1.0},
        references={
            "dqn_cartpole": ("single_file", "sb3_ln"),
            "dqn_atari": ATARI_REFERENCES,
            "sac_pendulum": ("sb3_ln",),
            "ppo_cartpole": ("sb3_ln",),
            "ppo_atari": ATARI_REFERENCES,
        },
        baselines={"crl_ln_redo": "sb3_ln", "crl_train": "sb3_kept_memory"},
    ),
    "contrib": TableSpec(
        agents=("sb3", "crl", "crl_metrics"),
        runs={"qrdqn_cartpole": 50_000, "tqc_pendulum": 1_500, "crossq_pendulum": 500},
        speedup=True,
        targets={"qrdqn_cartpole": 1.0, "tqc_pendulum": 1.0, "crossq_pendulum": 1.0},
        library="sb3-contrib",
    ),
}
Times = dict[str, dict[str, list[float]]]
"""configuration -> agent -> wall time in seconds of each repetition"""

SINGLE_FILE = (
    "the single-file baseline's loop with the same hyperparameters (`bench/single_file_dqn.py`: gymnasium's "
    "`SyncVectorEnv`, SB3's replay buffer, mean squared TD error without gradient clipping, no logger or callbacks)"
)


SB3_LN = (
    "plain SB3 with a LayerNorm before every activation, where crl's `LayerNorm()` puts them "
    "(`bench/sb3_layer_norm.py`; the same parameters as crl with `LayerNorm()` after training): LayerNorm's "
    "arithmetic without crl"
)

KEPT_MEMORY = (
    "`crl_train` is crl in a process set up as `python -m crl.train` sets up its own: glibc's malloc keeps freed "
    "memory (`crl.process.keep_freed_memory`: every block from the heap, none mapped on its own, the heap trimmed "
    "only above 1 GiB free), so the gradient steps' tensors do not page-fault their memory in again; "
    "`sb3_kept_memory` is plain SB3 in a process with the same setting, the like-for-like reference for `crl_train`"
)


def build(config: Config, agent: str, seed: int) -> BaseAlgorithm:
    """The agent's model of ``config``: plain SB3 (with LayerNorms: ``sb3_ln``), or crl bare, with the
    default metrics or with LayerNorm + ReDo. The agents of :data:`KEPT_MEMORY_AGENTS` build the model
    of the agent they otherwise are."""
    agent = KEPT_MEMORY_AGENTS.get(agent, agent)
    arguments = dict(config.hyperparameters, seed=seed, device="cpu")
    if agent in ("sb3", "sb3_ln"):
        library = sb3 if hasattr(sb3, config.algorithm) else sb3_contrib
        model = getattr(library, config.algorithm)(config.policy, config.make_env(seed, SB3DummyVecEnv), **arguments)
        return with_layer_norm(model) if agent == "sb3_ln" else model
    metrics = MetricsConfig() if agent == "crl_metrics" else None
    interventions = [LayerNorm(), ReDo()] if agent == "crl_ln_redo" else None
    env = config.make_env(seed, DummyVecEnv)
    return getattr(crl, config.algorithm)(config.policy, env, metrics=metrics, interventions=interventions, **arguments)


def timed_learn(config: Config, agent: str, seed: int, steps: int) -> float:
    """Wall time in seconds of ``learn(steps)`` (construction not included), or of the single-file loop."""
    if agent == "single_file":
        return timed_single_file_dqn("CartPole-v1", steps, seed, config.hyperparameters)
    if agent in KEPT_MEMORY_AGENTS and not keep_freed_memory():
        raise RuntimeError(f"{agent}: glibc's malloc could not be set to keep freed memory here")
    model = build(config, agent, seed)
    env = model.get_env()
    start = time.perf_counter()
    model.learn(steps)
    elapsed = time.perf_counter() - start
    if env is not None:
        env.close()
    return elapsed


def timed_learn_by_name(name: str, agent: str, seed: int, steps: int) -> float:
    """:func:`timed_learn` of configuration ``name`` (a name crosses to a fresh process as it is)."""
    return timed_learn(CONFIGS[name], agent, seed, steps)


def in_fresh_process(function: Callable[..., Result], *args: Any) -> Result:
    """``function(*args)`` in a new Python process on one torch thread (``spawn``: nothing else inherited)."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn, initializer=th.set_num_threads, initargs=(1,)) as pool:
        return pool.submit(function, *args).result()


def measure(
    spec: TableSpec,
    names: list[str],
    repetitions: int,
    seed: int,
    scale: float,
    console: Console,
    fresh_processes: bool = True,
) -> Times:
    """Wall times of every agent on every configuration; the agents of a repetition run back to back.

    :param fresh_processes: each run in a new process (:func:`in_fresh_process`), else in this one
    """
    th.set_num_threads(1)
    kept = sorted({agent for name in names for agent in spec.agents_of(name) if agent in KEPT_MEMORY_AGENTS})
    if kept and not fresh_processes:
        raise SystemExit(f"--in-process: {kept} set the allocator of their process for good; time them in fresh ones")
    times: Times = {name: {agent: [] for agent in spec.agents_of(name)} for name in names}
    for repetition in range(repetitions):
        for name in names:
            # rotate the order so that no agent always runs first (a cold cache) or last
            agents = spec.agents_of(name)
            shift = repetition % len(agents)
            for agent in agents[shift:] + agents[:shift]:
                run = (name, agent, seed, round(scale * spec.runs[name]))
                seconds = in_fresh_process(timed_learn_by_name, *run) if fresh_processes else timed_learn_by_name(*run)
                times[name][agent].append(seconds)
                console.print(f"rep {repetition + 1}/{repetitions} {name} {agent}: {seconds:.2f} s")
    return times


def measure_in_parallel(names: list[str], args: argparse.Namespace, console: Console) -> Times:
    """:func:`measure` of each configuration in one of ``args.jobs`` processes (one torch thread each).

    The agents of a configuration still run in the same process, back to back, so each ratio
    compares runs made under the same load; the absolute times include the other processes' load.
    """
    times: Times = {}
    with ProcessPoolExecutor(args.jobs) as pool:
        jobs = {
            name: pool.submit(
                _measure_in_worker, args.table, name, args.reps, args.seed, args.scale, not args.in_process
            )
            for name in names
        }
        for name, job in jobs.items():
            times.update(job.result())
            console.print(f"{name}: done")
    return times


def _measure_in_worker(
    table: str, name: str, repetitions: int, seed: int, scale: float, fresh_processes: bool
) -> Times:
    # a console cannot be pickled
    return measure(TABLES[table], [name], repetitions, seed, scale, Console(), fresh_processes)


def ratio_rows(times: Times, scale: float = 1.0, table: str = "overhead") -> list[list[str]]:
    """Rows of ``table``: config, agent, median seconds, steps/s, median ratio to SB3 [min, max], target."""
    spec = TABLES[table]
    rows = []
    for name, by_agent in times.items():
        steps = round(scale * spec.runs[name])
        for agent in (agent for agent in spec.agents_of(name) if agent in by_agent):
            seconds = statistics.median(by_agent[agent])
            cells = [name, agent, f"{seconds:.2f}", f"{steps / seconds:,.0f}"]
            if agent == "sb3":
                rows.append([*cells, "1", ""])
                continue
            median, spread = _ratios(by_agent[agent], by_agent["sb3"], spec.speedup)
            if agent in spec.references.get(name, ()):
                rows.append([*cells, spread, "reference"])
                continue
            rows.append([*cells, spread, spec.verdict(name, agent, median)])
        for agent, baseline in spec.baselines.items():
            if agent in by_agent and baseline in by_agent:
                median, spread = _ratios(by_agent[agent], by_agent[baseline], spec.speedup)
                rows.append([name, f"{agent} against {baseline}", "", "", spread, spec.verdict(name, agent, median)])
    return rows


def _ratios(own: list[float], base: list[float], speedup: bool) -> tuple[float, str]:
    """The median of the per-repetition ratios and the cell ``median [min, max]``."""
    ratios = [b / o if speedup else o / b for o, b in zip(own, base, strict=True)]
    median = statistics.median(ratios)
    return median, f"{median:.3f} [{min(ratios):.3f}, {max(ratios):.3f}]"


def machine() -> str:
    return (
        f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {th.__version__} (1 thread), SB3 {sb3.__version__}, crl {crl.__version__}"
    )


def cpu_model() -> str:
    """The processor's model name from Linux's ``/proc/cpuinfo``, else what ``platform`` knows of it.

    The sessions that measure may run on different hosts, so each table names its processor.
    """
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def code_version() -> str:
    """The commit of the measured code (``bench/`` and the packages), marked when they have uncommitted changes."""
    repository = Path(__file__).resolve().parent.parent
    git = ["git", "-C", str(repository)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        changed = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", "crl", "policies", "wrappers", "bench"])
    except (OSError, subprocess.CalledProcessError):
        return "an unknown commit"
    return f"`{head.stdout.strip()}`" + (" with uncommitted changes" if changed.returncode else "")


def measured_on() -> str:
    """Where and on what code this process measures: the machine line of a table."""
    return f"{machine()}, code at {code_version()}"


def markers(table: str) -> tuple[str, str]:
    """The comments around ``table``'s generated block (``overhead``, ``throughput``, ``contrib`` or ``profile``)."""
    return f"<!-- {table}:begin -->", f"<!-- {table}:end -->"


BEGIN, END = markers("overhead")


def markdown(table: str, times: Times, command: str, scale: float, where: str) -> str:
    """The Markdown block of ``table``.

    :param where: where the times were measured (:func:`measured_on`, or the saved runs' for ``--load``)
    """
    spec = TABLES[table]
    begin, end = markers(table)
    ratio = f"{'steps/s' if spec.speedup else 'wall time'} against {spec.library}'s"
    header = f"| configuration | agent | median wall time (s) | steps/s | {ratio}: median [min, max] | target |"
    lines = [begin, "", f"Measured on: {where}.", "", f"Command: `{command}` ({repetitions(times)}).", ""]
    lines += [header, "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in ratio_rows(times, scale, table)]
    lines += ["", *(f"- `{name}`: {CONFIGS[name].description}" for name in times)]
    if any("single_file" in by_agent for by_agent in times.values()):
        lines.append(f"- `single_file`: {SINGLE_FILE}")
    if any("sb3_ln" in by_agent for by_agent in times.values()):
        lines.append(f"- `sb3_ln`: {SB3_LN}")
    if any("crl_train" in by_agent for by_agent in times.values()):
        lines.append(f"- {KEPT_MEMORY}")
    lines += ["- steps per run: " + ", ".join(f"`{name}` {round(scale * spec.runs[name]):,}" for name in times)]
    lines += ["", end]
    return "\n".join(lines)


def write_block(path: Path, block: str) -> None:
    """Replace the generated block of ``path`` that ``block`` replaces (or append it when the file has none).

    :param block: a generated block: its first line is its begin marker, its last line the end marker
    """
    lines = block.strip().splitlines()
    begin, end = lines[0], lines[-1]
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        before, rest = text.split(begin, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text + ("\n" if text else "") + block + "\n"
    path.write_text(text)


def repetitions(times: Times) -> str:
    """How many repetitions the table's medians are of: ``5 repetitions``, or the count of each configuration."""
    counts = {name: len(by_agent["sb3"]) for name, by_agent in times.items()}
    if len(set(counts.values())) == 1:
        return f"{counts.popitem()[1]} repetitions"
    return "repetitions: " + ", ".join(f"`{name}` {count}" for name, count in counts.items())


def load(paths: list[Path], table: str) -> tuple[Times, float, str]:
    """Merge the times saved by ``--save`` runs of ``table`` made at the same scale.

    A configuration saved by several runs gets the repetitions of all of them (its agents must be the
    same in each), so that its medians are over more repetitions.

    :return: the times, their scale, and where they were measured (each run's :func:`measured_on`,
        without repeats)
    """
    times: Times = {}
    scales = set()
    places: list[str] = []
    for path in paths:
        saved = json.loads(path.read_text())
        if saved["table"] != table:
            raise SystemExit(f"{path} holds the {saved['table']!r} table, not {table!r}")
        scales.add(saved["scale"])
        places.append(saved.get("measured_on", f"an unrecorded machine and commit ({path.name})"))
        for name, by_agent in saved["times"].items():
            known = times.setdefault(name, {agent: [] for agent in by_agent})
            if set(known) != set(by_agent):
                raise SystemExit(f"--load: {path} times agents {sorted(by_agent)} on {name}, before {sorted(known)}")
            for agent, seconds in by_agent.items():
                known[agent] += seconds
    if len(scales) != 1:
        raise SystemExit(f"--load files differ in scale: {sorted(scales)}")
    return times, scales.pop(), "; ".join(dict.fromkeys(places))


HOT_SPOTS: dict[str, tuple[tuple[str, str], ...]] = {
    "`nn.Module.train` (mode switches)": (("torch/nn/modules/module.py", "train"),),
    "`copy.deepcopy` (all callers)": (("copy.py", "deepcopy"),),
    "`obs_to_tensor`": (("policies", "obs_to_tensor"),),
    "policy `device` look-ups": (("policies", "device"),),
    # crl's forward passes, acting and training, run in _direct_q_values, without QNetwork.forward
    # (crl.policies.direct_forward)
    "Q-network forward (acting and training)": (
        ("dqn/policies.py", "forward"),
        ("policies/dqn.py", "_direct_q_values"),
    ),
    "`VecEnv.step` (env dynamics included)": (("vec_env/base_vec_env.py", "step"),),
    "`train()`": (("dqn.py", "train"),),
}
"""Row label -> (part of the file path, function name) of each profiled function counted (SB3's and crl's)."""


def profile(agent: str, steps: int, seed: int = 0) -> dict[str, float]:
    """Share of ``learn()``'s profiled time spent in each hot spot (and the total, in seconds)."""
    model = build(CONFIGS["dqn_cartpole"], agent, seed)
    profiler = cProfile.Profile()
    profiler.runcall(model.learn, steps)
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = max(cumulative for _, _, _, cumulative, _ in stats.values())
    shares = {"total seconds (profiled)": total}
    for label, functions in HOT_SPOTS.items():
        cumulative = sum(
            entry[3]
            for (file, _, name), entry in stats.items()
            if any(path in file and name == function for path, function in functions)
        )
        shares[label] = cumulative / total
    return shares


def profile_markdown(shares: dict[str, dict[str, float]], steps: int) -> str:
    lines = [
        "<!-- profile:begin -->",
        "",
        f"Command: `python bench/overhead.py --profile {steps}` (`dqn_cartpole` under cProfile, cumulative time "
        "of each hot spot as a share of `learn()`; a call nested in another hot spot counts in both).",
        "",
        "| hot spot | SB3 | crl |",
        "|---|---|---|",
    ]
    for label in shares["sb3"]:
        if label.startswith("total"):
            cells = [f"{shares[agent][label]:.1f} s" for agent in ("sb3", "crl")]
        else:
            cells = [f"{100 * shares[agent][label]:.1f} %" for agent in ("sb3", "crl")]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    lines += ["", "<!-- profile:end -->"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", choices=list(TABLES), default="overhead", help="which table (default overhead)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions (default 5)")
    parser.add_argument("--only", nargs="+", help="configurations of the table to run (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every run length (0.1: a quick look)")
    parser.add_argument("--write", type=Path, help="write the table into this Markdown file's generated block")
    parser.add_argument("--save", type=Path, help="save the measured times to this JSON file")
    parser.add_argument("--load", type=Path, nargs="+", help="make the table from these --save files, measure nothing")
    parser.add_argument(
        "--profile", type=int, metavar="STEPS", help="profile dqn_cartpole (SB3, crl) instead of timing"
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="processes, each timing whole configurations (the costliest first)"
    )
    parser.add_argument(
        "--in-process", action="store_true", help="time every run in the measuring process, not each in a fresh one"
    )
    args = parser.parse_args()
    if args.profile:
        th.set_num_threads(1)
        shares = {agent: profile(agent, args.profile) for agent in ("sb3", "crl")}
        table = Table("hot spot", "SB3", "crl")
        for label in shares["sb3"]:
            table.add_row(label, *(f"{shares[agent][label]:.3f}" for agent in ("sb3", "crl")))
        Console().print(table)
        if args.write:
            write_block(args.write, profile_markdown(shares, args.profile))
        return
    spec = TABLES[args.table]
    unknown = sorted(set(args.only or []) - set(spec.runs))
    if unknown:
        parser.error(f"--only {unknown}: the {args.table} table runs {list(spec.runs)}")
    console = Console()
    if args.load:
        times, scale, where = load(args.load, args.table)
        names = [name for name in spec.runs if name in times]
        times = {name: times[name] for name in names}
        command = f"python bench/overhead.py --table {args.table} --load {' '.join(str(path) for path in args.load)}"
    else:
        names = args.only or list(spec.runs)
        scale = args.scale
        where = measured_on()
        if args.jobs == 1:
            times = measure(spec, names, args.reps, args.seed, scale, console, not args.in_process)
        else:
            times = measure_in_parallel(names, args, console)
        only = f" --only {' '.join(names)}" if args.only else ""
        jobs = f" --jobs {args.jobs}" if args.jobs != 1 else ""
        in_process = " --in-process" if args.in_process else ""
        command = f"python bench/overhead.py --table {args.table} --reps {args.reps}{only}{jobs}{in_process}"
    if scale != 1.0:
        command += f" --scale {scale}"
    if args.save:
        args.save.write_text(
            json.dumps(
                {"table": args.table, "reps": args.reps, "scale": scale, "measured_on": where, "times": times}, indent=1
            )
        )
    table = Table("configuration", "agent", "median s", "steps/s", "ratio [min, max]", "target")
    for row in ratio_rows(times, scale, args.table):
        table.add_row(*row)
    console.print(table)
    if args.write:
        write_block(args.write, markdown(args.table, times, f"{command} --write {args.write}", scale, where))
        console.print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
