"""bench/overhead.py's ratios and its generated block in a Markdown file (no training)."""

from __future__ import annotations

from pathlib import Path

from bench.overhead import BEGIN, END, ratio_rows, write_block


def test_ratios_are_per_repetition_medians_against_sb3() -> None:
    times = {"ppo_cartpole": {"sb3": [10.0, 20.0, 10.0], "crl": [10.1, 20.0, 10.5], "crl_metrics": [11.0, 20.0, 10.0]}}
    rows = {row[1]: row for row in ratio_rows(times)}
    assert rows["sb3"][2:] == ["10.00", "2,048", "1", ""]
    # per-repetition ratios 1.01, 1.0, 1.05: median 1.01, range [1.0, 1.05]
    assert rows["crl"][4:] == ["1.010 [1.000, 1.050]", "<= 1.02 met"]
    # ratios 1.1, 1.0, 1.0: median 1.0
    assert rows["crl_metrics"][4:] == ["1.000 [1.000, 1.100]", "<= 1.05 met"]
    times["ppo_cartpole"]["crl"] = [10.5, 21.0, 10.0]
    assert {row[1]: row for row in ratio_rows(times)}["crl"][5] == "<= 1.02 **missed**"


def test_write_block_replaces_only_the_generated_block(tmp_path: Path) -> None:
    path = tmp_path / "performance.md"
    path.write_text(f"# Title\n\nprose before\n\n{BEGIN}\nold table\n{END}\n\nprose after\n")
    write_block(path, f"{BEGIN}\nnew table\n{END}")
    assert path.read_text() == f"# Title\n\nprose before\n\n{BEGIN}\nnew table\n{END}\n\nprose after\n"
    fresh = tmp_path / "fresh.md"
    write_block(fresh, f"{BEGIN}\ntable\n{END}")
    assert fresh.read_text() == f"{BEGIN}\ntable\n{END}\n"
