"""bench/overhead.py's throughput table: speed-up ratios, per-configuration targets, its block, its reference loop."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from unittest.mock import patch

import pytest
import sb3_contrib
import stable_baselines3 as sb3
import torch as th
from rich.console import Console
from stable_baselines3.common.env_util import make_atari_env
from stable_baselines3.common.torch_layers import NatureCNN
from stable_baselines3.common.vec_env import VecFrameStack

import crl
from bench.overhead import (
    BEGIN,
    CONFIGS,
    END,
    TableSpec,
    build,
    code_version,
    cpu_model,
    in_fresh_process,
    load,
    markdown,
    markers,
    measure,
    measured_on,
    ratio_rows,
    repetitions,
    timed_learn,
    timed_learn_by_name,
    write_block,
)
from bench.sb3_layer_norm import with_layer_norm
from bench.single_file_dqn import timed_single_file_dqn
from crl.interventions import LayerNorm


def test_throughput_ratios_are_sb3_time_over_crl_time_with_per_configuration_targets() -> None:
    times = {
        "dqn_cartpole": {
            "sb3": [30.0, 33.0, 36.0],
            "crl": [20.0, 20.0, 30.0],  # speed-ups 1.5, 1.65, 1.2
            "crl_metrics": [20.0, 22.0, 24.0],  # 1.5 each
            "crl_ln_redo": [30.0, 30.0, 30.0],  # 1.0, 1.1, 1.2
        }
    }
    rows = {row[1]: row for row in ratio_rows(times, table="throughput")}
    assert rows["sb3"][2:] == ["33.00", "3,030", "1", ""]
    assert rows["crl"][4:] == ["1.500 [1.200, 1.650]", ">= 1.5 met"]
    assert rows["crl_metrics"][4:] == ["1.500 [1.500, 1.500]", ">= 1.5 met"]
    assert rows["crl_ln_redo"][4:] == ["1.100 [1.000, 1.200]", ">= 1.5 **missed**"]

    times = {"ppo_atari": {"sb3": [10.0], "crl": [10.0], "crl_metrics": [11.0], "crl_ln_redo": [9.0]}}
    targets = {row[1]: row[5] for row in ratio_rows(times, table="throughput")}
    assert targets == {"sb3": "", "crl": ">= 1.0 met", "crl_metrics": ">= 1.0 **missed**", "crl_ln_redo": ">= 1.0 met"}


def test_each_table_writes_only_its_own_block(tmp_path: Path) -> None:
    begin, end = markers("throughput")
    path = tmp_path / "performance.md"
    path.write_text(f"{BEGIN}\noverhead table\n{END}\n\nprose\n\n{begin}\nold\n{end}\n")
    write_block(path, f"{begin}\nnew\n{end}")
    assert path.read_text() == f"{BEGIN}\noverhead table\n{END}\n\nprose\n\n{begin}\nnew\n{end}\n"


def test_saved_runs_merge_only_when_made_alike(tmp_path: Path) -> None:
    def save(name: str, times: dict, scale: float = 1.0, table: str = "throughput", **more: str) -> Path:
        path = tmp_path / name
        path.write_text(json.dumps({"table": table, "reps": 2, "scale": scale, "times": times, **more}))
        return path

    first = save("a.json", {"dqn_cartpole": {"sb3": [1.0, 2.0], "crl": [0.5, 1.0]}}, measured_on="host A at `abc`")
    second = save("b.json", {"sac_pendulum": {"sb3": [3.0, 4.0], "crl": [3.0, 3.0]}}, measured_on="host A at `abc`")
    more = save("c.json", {"dqn_cartpole": {"crl": [0.7], "sb3": [1.5]}})
    times, scale, where = load([first, second, more], "throughput")
    assert times == {
        "dqn_cartpole": {"sb3": [1.0, 2.0, 1.5], "crl": [0.5, 1.0, 0.7]},  # the repetitions of both runs
        "sac_pendulum": {"sb3": [3.0, 4.0], "crl": [3.0, 3.0]},
    }
    assert scale == 1.0
    assert where == "host A at `abc`; an unrecorded machine and commit (c.json)"
    block = markdown("throughput", times, "python bench/overhead.py --load a.json b.json c.json", scale, where)
    assert "\nMeasured on: host A at `abc`; an unrecorded machine and commit (c.json).\n" in block
    assert repetitions(times) == "repetitions: `dqn_cartpole` 3, `sac_pendulum` 2"
    assert repetitions({"sac_pendulum": times["sac_pendulum"]}) == "2 repetitions"
    with pytest.raises(SystemExit, match="differ in scale"):
        load([first, save("d.json", {}, scale=0.1)], "throughput")
    with pytest.raises(SystemExit, match="not 'throughput'"):
        load([save("e.json", {}, table="overhead")], "throughput")
    with pytest.raises(SystemExit, match=r"times agents \['sb3'\] on dqn_cartpole, before \['crl', 'sb3'\]"):
        load([first, save("f.json", {"dqn_cartpole": {"sb3": [1.0]}})], "throughput")


def test_a_measurement_names_its_processor_and_commit() -> None:
    where = measured_on()
    assert where.startswith(f"{cpu_model()}, {os.cpu_count()} cores, Python ")
    assert re.fullmatch(r"`[0-9a-f]{7,}`( with uncommitted changes)?", code_version())
    assert where.endswith(f"code at {code_version()}")
    assert f"\nMeasured on: {where}.\n" in markdown("throughput", {"ppo_atari": {"sb3": [1.0]}}, "command", 1.0, where)


def test_the_single_file_reference_gets_a_ratio_and_no_target() -> None:
    times = {"dqn_cartpole": {"sb3": [30.0, 30.0], "crl": [20.0, 20.0], "single_file": [15.0, 20.0]}}
    rows = {row[1]: row for row in ratio_rows(times, table="throughput")}
    assert list(rows) == ["sb3", "crl", "single_file"]  # crl_metrics and crl_ln_redo were not measured
    assert rows["single_file"][4:] == ["1.750 [1.500, 2.000]", "reference"]
    assert rows["crl"][5] == ">= 1.5 met"


def test_the_single_file_loop_steps_its_optimizer_every_train_freq_steps() -> None:
    hyperparameters = dict(CONFIGS["dqn_cartpole"].hyperparameters, learning_starts=100, target_update_interval=50)
    with patch.object(th.optim.Adam, "step", autospec=True, side_effect=th.optim.Adam.step) as step:
        seconds = timed_single_file_dqn("CartPole-v1", 300, 0, hyperparameters)
    assert seconds > 0
    assert step.call_count == 19  # at steps 110, 120, ..., 290 (0-based): every train_freq after learning_starts


def test_layer_norm_redo_gets_a_row_against_sb3_with_the_same_layer_norms() -> None:
    times = {
        "sac_pendulum": {
            "sb3": [10.0, 10.0, 10.0],
            "crl_ln_redo": [10.0, 12.0, 9.0],
            "sb3_ln": [12.0, 12.0, 12.0],  # against crl_ln_redo: 1.2, 1.0, 1.333
        }
    }
    rows = ratio_rows(times, table="throughput")
    assert [row[1] for row in rows] == ["sb3", "crl_ln_redo", "sb3_ln", "crl_ln_redo against sb3_ln"]
    assert rows[2][4:] == ["0.833 [0.833, 0.833]", "reference"]
    assert rows[3] == ["sac_pendulum", "crl_ln_redo against sb3_ln", "", "", "1.200 [1.000, 1.333]", ">= 1.1 met"]
    del times["sac_pendulum"]["sb3_ln"]
    assert [row[1] for row in ratio_rows(times, table="throughput")] == ["sb3", "crl_ln_redo"]


SMALL_RUNS = {
    "DQN": ("CartPole-v1", dict(learning_starts=100, train_freq=4, target_update_interval=100), 400),
    "SAC": ("Pendulum-v1", dict(learning_starts=50), 120),
    "PPO": ("CartPole-v1", dict(n_steps=64, batch_size=32, n_epochs=2), 128),
}


@pytest.mark.parametrize("algorithm", list(SMALL_RUNS))
def test_sb3_with_layer_norms_trains_the_parameters_of_crl_with_layer_norm(algorithm: str) -> None:
    env, hyperparameters, steps = SMALL_RUNS[algorithm]
    hyperparameters = dict(hyperparameters, policy_kwargs=dict(net_arch=[32, 16]), seed=0, device="cpu")
    plain = getattr(sb3, algorithm)("MlpPolicy", env, **hyperparameters)
    reference = with_layer_norm(getattr(sb3, algorithm)("MlpPolicy", env, **hyperparameters)).learn(steps)
    ours = getattr(crl, algorithm)("MlpPolicy", env, interventions=[LayerNorm()], **hyperparameters).learn(steps)
    theirs, own = reference.policy.state_dict(), ours.policy.state_dict()
    assert list(theirs) == list(own) and all(th.equal(theirs[name], own[name]) for name in theirs)
    norms = [module for module in reference.policy.modules() if isinstance(module, th.nn.LayerNorm)]
    # two per hidden stack: DQN's Q-network and its target, SAC's actor and four critics, PPO's two networks
    assert len(norms) == {"DQN": 4, "SAC": 10, "PPO": 4}[algorithm]
    assert len(theirs) == len(plain.policy.state_dict()) + 2 * len(norms)
    assert all(not th.equal(norm.weight, th.ones_like(norm.weight)) for norm in norms[:2])  # trained


def test_the_sb3_ln_agent_is_plain_sb3_with_layer_norms() -> None:
    models = {agent: build(CONFIGS["ppo_cartpole"], agent, seed=0) for agent in ("sb3", "sb3_ln")}
    assert all(type(model) is sb3.PPO for model in models.values())
    norms = {
        agent: sum(isinstance(m, th.nn.LayerNorm) for m in model.policy.modules()) for agent, model in models.items()
    }
    assert norms == {"sb3": 0, "sb3_ln": 4}


@pytest.mark.parametrize("algorithm", ["DQN", "PPO"])
def test_sb3_with_layer_norms_has_crls_layer_norms_in_a_nature_cnn(algorithm: str) -> None:
    def env() -> VecFrameStack:
        return VecFrameStack(make_atari_env("BreakoutNoFrameskip-v4", n_envs=1, seed=0), n_stack=4)

    hyperparameters: dict = dict(seed=0, device="cpu")
    if algorithm == "DQN":
        hyperparameters["buffer_size"] = 100
    reference = with_layer_norm(getattr(sb3, algorithm)("CnnPolicy", env(), **hyperparameters))
    ours = getattr(crl, algorithm)("CnnPolicy", env(), interventions=[LayerNorm()], **hyperparameters)
    theirs, own = reference.policy.state_dict(), ours.policy.state_dict()
    assert list(theirs) == list(own) and all(th.equal(theirs[name], own[name]) for name in theirs)
    extractor = next(module for module in reference.policy.modules() if isinstance(module, NatureCNN))
    shapes = [tuple(m.normalized_shape) for m in extractor.modules() if isinstance(m, th.nn.LayerNorm)]
    assert shapes == [(32, 20, 20), (64, 9, 9), (64, 7, 7), (512,)]  # once per layer, convolutions over (C, H, W)


def test_each_timed_run_gets_a_fresh_process_unless_in_process() -> None:
    """A run made after others in one process inherits their heap: each gets its own process by default."""
    spec = TableSpec(agents=("sb3", "crl"), runs={"sac_pendulum": 101}, speedup=True, targets={"sac_pendulum": 1.0})
    runs: list[str] = []

    def in_a_fresh_process(function, name: str, agent: str, seed: int, steps: int) -> float:
        runs.append(f"fresh {agent}")
        return 1.0

    def in_this_process(name: str, agent: str, seed: int, steps: int) -> float:
        assert (name, seed, steps) == ("sac_pendulum", 0, 101) and th.get_num_threads() == 1
        runs.append(f"here {agent}")
        return 2.0

    with patch.multiple("bench.overhead", in_fresh_process=in_a_fresh_process, timed_learn_by_name=in_this_process):
        fresh = measure(spec, ["sac_pendulum"], 2, seed=0, scale=1.0, console=Console(quiet=True))
        kept = measure(spec, ["sac_pendulum"], 2, 0, 1.0, Console(quiet=True), fresh_processes=False)
    assert fresh == {"sac_pendulum": {"sb3": [1.0, 1.0], "crl": [1.0, 1.0]}}
    assert kept == {"sac_pendulum": {"sb3": [2.0, 2.0], "crl": [2.0, 2.0]}}
    # the order rotates between repetitions
    assert runs == ["fresh sb3", "fresh crl", "fresh crl", "fresh sb3", "here sb3", "here crl", "here crl", "here sb3"]


def test_a_fresh_process_runs_the_function_on_one_torch_thread_and_returns_its_result() -> None:
    assert in_fresh_process(os.getpid) != os.getpid()
    assert in_fresh_process(th.get_num_threads) == 1  # torch's default: one thread per core
    seconds = in_fresh_process(timed_learn_by_name, "sac_pendulum", "crl", 0, 110)  # 10 gradient steps
    assert isinstance(seconds, float) and seconds > 0


def test_crl_as_its_job_runner_runs_it_gets_a_row_against_sb3_with_the_same_allocator() -> None:
    times = {
        "dqn_atari": {
            "sb3": [44.0, 40.0],
            "crl": [40.0, 40.0],
            "crl_train": [36.0, 35.0],  # against sb3_kept_memory: 1.0, 1.2
            "sb3_kept_memory": [36.0, 42.0],
        }
    }
    rows = ratio_rows(times, table="throughput")
    assert [row[1] for row in rows] == [
        "sb3",
        "crl",
        "crl_train",
        "sb3_kept_memory",
        "crl_train against sb3_kept_memory",
    ]
    assert rows[2][4:] == ["1.183 [1.143, 1.222]", "reference"]
    assert rows[4][4:] == ["1.100 [1.000, 1.200]", ">= 1.2 **missed**"]


def test_the_kept_memory_agents_set_the_allocator_then_train_as_the_agent_they_are() -> None:
    config = CONFIGS["sac_pendulum"]
    assert type(build(config, "crl_train", 0)) is crl.SAC
    assert type(build(config, "sb3_kept_memory", 0)) is sb3.SAC
    with patch("bench.overhead.keep_freed_memory", return_value=True) as keep:
        assert timed_learn(config, "sb3_kept_memory", 0, 60) > 0
        assert keep.call_count == 1
        timed_learn(config, "sb3", 0, 60)
        assert keep.call_count == 1
    with patch("bench.overhead.keep_freed_memory", return_value=False), pytest.raises(RuntimeError, match="crl_train"):
        timed_learn(config, "crl_train", 0, 60)


def test_the_kept_memory_agents_are_not_timed_in_the_measuring_process() -> None:
    spec = TableSpec(agents=("sb3", "crl"), runs={"dqn_atari": 10}, speedup=True, targets={"dqn_atari": 1.2},
                     references={"dqn_atari": ("crl_train",)})  # fmt: skip
    with pytest.raises(SystemExit, match=r"--in-process: \['crl_train'\]"):
        measure(spec, ["dqn_atari"], 1, 0, 1.0, Console(quiet=True), fresh_processes=False)


@pytest.mark.parametrize(
    ("name", "contrib_class"),
    [("qrdqn_cartpole", sb3_contrib.QRDQN), ("tqc_pendulum", sb3_contrib.TQC), ("crossq_pendulum", sb3_contrib.CrossQ)],
)
def test_the_contrib_table_times_crl_against_sb3_contribs_own_class(name: str, contrib_class: type) -> None:
    models = {agent: build(CONFIGS[name], agent, seed=0) for agent in ("sb3", "crl", "crl_metrics")}
    assert type(models["sb3"]) is contrib_class
    crl_class = getattr(crl, contrib_class.__name__)
    assert type(models["crl"]) is crl_class and type(models["crl_metrics"]) is crl_class
    assert models["crl"].metrics_monitor is None and models["crl_metrics"].metrics_monitor is not None
    times = {name: {"sb3": [10.0, 10.0], "crl": [8.0, 12.5], "crl_metrics": [10.0, 10.0]}}
    rows = {row[1]: row for row in ratio_rows(times, table="contrib")}
    assert rows["crl"][4:] == ["1.025 [0.800, 1.250]", ">= 1.0 met"]
    block = markdown("contrib", times, "command", 1.0, "here")
    assert "| steps/s against sb3-contrib's: median [min, max] |" in block
    assert block.startswith("<!-- contrib:begin -->") and block.endswith("<!-- contrib:end -->")
