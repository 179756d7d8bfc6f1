"""bench/time_split.py: the train()/collection split of a run, its table and the speed-up bound."""

from __future__ import annotations

from bench.time_split import markdown, rows, timed_split


def test_rows_give_medians_and_collection_per_step() -> None:
    split = {"sb3": [(40.0, 20.0), (36.0, 18.0), (44.0, 18.0)], "crl": [(30.0, 20.0), (28.0, 19.0), (32.0, 21.0)]}
    assert rows(split, 100_000) == [
        ["sb3", "40.00", "18.00", "20.00", "200"],  # collection: the median of 20, 18 and 26
        ["crl", "30.00", "20.00", "10.00", "100"],
    ]
    block = markdown(split, "dqn_cartpole", 100_000, 3)
    assert block.startswith("<!-- split:begin -->") and block.endswith("<!-- split:end -->")
    assert "SB3's `train()` = 2.22x" in block  # 40 / 18
    assert "--reps 3` " in block and "--reps 3 --in-process` " in markdown(split, "dqn_cartpole", 100_000, 3, True)


def test_train_time_is_part_of_the_run() -> None:
    total, train = timed_split("sac_pendulum", "crl", steps=160)  # 60 gradient steps after learning_starts=100
    assert 0 < train < total
