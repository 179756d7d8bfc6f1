"""bench/overhead.py's throughput table: speed-up ratios, per-configuration targets, its own block (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.overhead import BEGIN, END, load, markers, ratio_rows, write_block


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
    def save(name: str, times: dict, reps: int = 2, table: str = "throughput") -> Path:
        path = tmp_path / name
        path.write_text(json.dumps({"table": table, "reps": reps, "scale": 1.0, "times": times}))
        return path

    first = save("a.json", {"dqn_cartpole": {"sb3": [1.0, 2.0]}})
    second = save("b.json", {"sac_pendulum": {"sb3": [3.0, 4.0]}})
    times, reps, scale = load([first, second], "throughput")
    assert times == {"dqn_cartpole": {"sb3": [1.0, 2.0]}, "sac_pendulum": {"sb3": [3.0, 4.0]}}
    assert (reps, scale) == (2, 1.0)
    with pytest.raises(SystemExit, match="differ in repetitions"):
        load([first, save("c.json", {}, reps=3)], "throughput")
    with pytest.raises(SystemExit, match="not 'throughput'"):
        load([save("d.json", {}, table="overhead")], "throughput")
