"""``bench/instructions.py``: reading callgrind's count and writing the table (valgrind itself is not run)."""

from __future__ import annotations

import pytest

from bench.instructions import markdown, total_instructions

DUMP = """# callgrind format
version: 1
creator: callgrind-3.19.0
events: Ir
fn=(1) main
0 5
summary: 392497000
totals: 392497000
"""


def test_the_count_is_the_dumps_summary() -> None:
    assert total_instructions(DUMP) == 392_497_000
    assert total_instructions(DUMP.replace("summary: 392497000\n", "")) == 392_497_000


def test_a_dump_without_a_count_is_an_error() -> None:
    with pytest.raises(ValueError, match="no 'summary:' or 'totals:' line"):
        total_instructions("events: Ir\nfn=(1) main\n")


def test_the_table_gives_each_agent_against_sb3() -> None:
    table = markdown({"sb3": 500_000.0, "crl": 351_943.0}, 1_000)
    assert "| sb3 | 500,000 | 1.00 |" in table and "| crl | 351,943 | 0.70 (`sb3`) |" in table
    assert table.startswith("<!-- instructions:begin -->") and table.endswith("<!-- instructions:end -->")
    assert "--agents sb3 crl`" in table


def test_layer_norm_redo_is_counted_against_sb3_with_the_same_layer_norms() -> None:
    counts = {"sb3": 500_000.0, "crl": 350_000.0, "sb3_ln": 600_000.0, "crl_ln_redo": 390_000.0}
    table = markdown(counts, 1_000)
    assert "| sb3_ln | 600,000 | 1.20 (`sb3`) |" in table
    assert "| crl_ln_redo | 390,000 | 0.65 (`sb3_ln`) |" in table
    assert "| crl_ln_redo | 400,000 |  |" in markdown({"sb3": 500_000.0, "crl_ln_redo": 400_000.0}, 1_000)
