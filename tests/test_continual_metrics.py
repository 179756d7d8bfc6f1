"""SPEC.md §4 metrics on small performance matrices computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crl.continual import (
    ContinualResult,
    area_under_curve,
    average_performance,
    backward_transfer,
    bootstrap_ci,
    forgetting,
    forward_transfer,
    performance_after_training,
    performance_maintenance,
    reference_auc,
    reference_final_performance,
    relative_performance,
    sample_efficiency,
    summarize,
)

# 3 tasks of 10 steps, evaluated every 5 steps: task i is trained on steps (10 i, 10 (i + 1)]
PERFORMANCE = np.array(
    [
        [0.2, 0.6, 0.5, 0.4, 0.3, 0.1],
        [0.0, 0.1, 0.3, 0.9, 0.8, 0.7],
        [0.0, 0.0, 0.1, 0.2, 0.5, 1.0],
    ]
)
REFERENCE = {"a": 0.5, "b": 0.2, "c": 0.75}


def _result(performance: np.ndarray = PERFORMANCE, seed: int = 0) -> ContinualResult:
    return ContinualResult(
        sequence="abc",
        task_names=("a", "b", "c"),
        budgets=(10, 10, 10),
        measure="success_rate",
        eval_steps=np.array([5, 10, 15, 20, 25, 30]),
        performance=performance,
        seed=seed,
    )


def test_average_performance() -> None:
    assert average_performance(_result()) == pytest.approx((0.1 + 0.7 + 1.0) / 3)
    # CW's variant: each task's last evaluations averaged first
    assert average_performance(_result(), window=2) == pytest.approx((0.2 + 0.75 + 0.75) / 3)
    with pytest.raises(ValueError, match=r"window must lie in \[1, 6\]"):
        average_performance(_result(), window=7)


def test_forgetting_is_own_end_minus_sequence_end() -> None:
    np.testing.assert_allclose(performance_after_training(_result()), [0.6, 0.9, 1.0])
    np.testing.assert_allclose(forgetting(_result()), [0.6 - 0.1, 0.9 - 0.7, 0.0])


def test_area_under_curve_averages_the_evaluations_made_while_training_the_task() -> None:
    np.testing.assert_allclose(area_under_curve(_result()), [(0.2 + 0.6) / 2, (0.3 + 0.9) / 2, (0.5 + 1.0) / 2])


def test_forward_transfer_against_reference_runs() -> None:
    np.testing.assert_allclose(
        forward_transfer(_result(), REFERENCE), [(0.4 - 0.5) / 0.5, (0.6 - 0.2) / 0.8, (0.75 - 0.75) / 0.25]
    )
    with pytest.raises(ValueError, match=r"no reference AUC for task\(s\) \['c'\]"):
        forward_transfer(_result(), {"a": 0.5, "b": 0.2})


def test_reference_auc_averages_single_task_runs_over_seeds() -> None:
    runs = [
        ContinualResult("a", ("a",), (10,), "success_rate", np.array([5, 10]), np.array([[0.4, 0.6]]), seed)
        for seed in range(2)
    ]
    other = ContinualResult("a", ("a",), (10,), "success_rate", np.array([5, 10]), np.array([[0.2, 0.4]]), 2)
    assert reference_auc([*runs, other]) == pytest.approx({"a": (0.5 + 0.5 + 0.3) / 3})
    with pytest.raises(ValueError, match="reference runs must have one task each, got 3"):
        reference_auc([_result()])


def test_bootstrap_interval_of_two_seeds() -> None:
    # resampled means of [0, 1]: 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4
    assert bootstrap_ci([0.0, 1.0]).mean == 0.5
    assert (bootstrap_ci([0.0, 1.0]).low, bootstrap_ci([0.0, 1.0]).high) == (0.0, 1.0)
    narrow = bootstrap_ci([0.0, 1.0], confidence=0.4)
    assert (narrow.low, narrow.high) == (0.5, 0.5)
    same = bootstrap_ci([0.3, 0.3, 0.3])
    assert same.low == pytest.approx(0.3) and same.high == pytest.approx(0.3) and same.n_seeds == 3
    single = bootstrap_ci([0.7])
    assert single.mean == 0.7 and math.isnan(single.low) and math.isnan(single.high)


def test_summarize_over_seeds() -> None:
    flat = _result(np.full((3, 6), 0.5), seed=1)
    summary = summarize([_result(), flat], reference=REFERENCE)
    assert summary.average_performance.mean == pytest.approx((0.6 + 0.5) / 2)
    assert summary.forgetting.mean == pytest.approx((0.7 / 3 + 0.0) / 2)
    flat_transfer = (0.0 + 0.3 / 0.8 - 1.0) / 3
    assert summary.forward_transfer.mean == pytest.approx((0.1 + flat_transfer) / 2)
    assert summary.forgetting.low <= summary.forgetting.mean <= summary.forgetting.high
    assert summarize([_result()]).forward_transfer is None
    assert summary.to_dict()["average_performance"]["n_seeds"] == 2


# Task a peaks after its own training (transfer from b), so its best is not its value at its own end.
LIFELONG = np.array(
    [
        [0.5, 0.4, 0.8, 0.3, 0.2, 0.2],
        [0.0, 0.1, 0.3, 0.9, 0.8, 0.7],
        [0.0, 0.0, 0.1, 0.2, 0.5, 1.0],
    ]
)
FINAL_REFERENCE = {"a": 0.8, "b": 0.9, "c": 0.5}


def test_backward_transfer_is_gems_average_over_the_tasks_before_the_last() -> None:
    # BWT_i = p[i, T] - p[i, e_i]: a ends at step 10 (0.4), b at step 20 (0.9)
    np.testing.assert_allclose(backward_transfer(_result(LIFELONG)), [0.2 - 0.4, 0.7 - 0.9])
    single = ContinualResult("a", ("a",), (10,), "success_rate", np.array([5, 10]), np.array([[0.4, 0.6]]))
    assert backward_transfer(single).size == 0


def test_performance_maintenance_is_final_minus_best() -> None:
    np.testing.assert_allclose(performance_maintenance(_result(LIFELONG)), [0.2 - 0.8, 0.7 - 0.9, 1.0 - 1.0])


def test_relative_performance_compares_the_end_of_each_tasks_training_with_the_reference() -> None:
    np.testing.assert_allclose(
        relative_performance(_result(LIFELONG), FINAL_REFERENCE), [0.4 / 0.8, 0.9 / 0.9, 1.0 / 0.5]
    )
    with pytest.raises(ValueError, match=r"no reference final performance for task\(s\) \['c'\]"):
        relative_performance(_result(LIFELONG), {"a": 0.8, "b": 0.9})
    with pytest.raises(ValueError, match=r"must be positive to divide by, got \[0.0\] for task\(s\) \['b'\]"):
        relative_performance(_result(LIFELONG), {**FINAL_REFERENCE, "b": 0.0})


def test_sample_efficiency_is_the_ratio_of_the_areas_under_the_learning_curves() -> None:
    # AUC: a (0.5 + 0.4) / 2, b (0.3 + 0.9) / 2, c (0.5 + 1.0) / 2
    np.testing.assert_allclose(sample_efficiency(_result(LIFELONG), REFERENCE), [0.45 / 0.5, 0.6 / 0.2, 0.75 / 0.75])


def test_reference_final_performance_averages_the_end_of_single_task_runs() -> None:
    runs = [
        ContinualResult("a", ("a",), (10,), "success_rate", np.array([5, 10]), np.array([[0.1, end]]), seed)
        for seed, end in enumerate((0.6, 0.8))
    ]
    assert reference_final_performance(runs) == pytest.approx({"a": 0.7})


def test_summarize_reports_the_lifelong_metrics() -> None:
    summary = summarize([_result(LIFELONG), _result(PERFORMANCE, seed=1)], REFERENCE, reference_final=FINAL_REFERENCE)
    assert summary.backward_transfer.mean == pytest.approx(((-0.2 - 0.2) / 2 + (-0.5 - 0.2) / 2) / 2)
    assert summary.performance_maintenance.mean == pytest.approx(((-0.6 - 0.2) / 3 + (-0.5 - 0.2) / 3) / 2)
    assert summary.relative_performance.mean == pytest.approx(((0.5 + 1 + 2) / 3 + (0.6 / 0.8 + 1 + 2) / 3) / 2)
    assert summary.sample_efficiency.mean == pytest.approx(((0.9 + 3 + 1) / 3 + (0.8 + 3 + 1) / 3) / 2)
    without = summarize([_result(LIFELONG)])
    assert without.relative_performance is None and without.sample_efficiency is None


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_results_round_trip_through_files(tmp_path, suffix: str) -> None:
    path = tmp_path / f"run{suffix}"
    _result().save(path)
    loaded = ContinualResult.load(path)
    assert loaded.task_names == ("a", "b", "c") and loaded.budgets == (10, 10, 10) and loaded.seed == 0
    np.testing.assert_array_equal(loaded.performance, PERFORMANCE)
    np.testing.assert_array_equal(loaded.eval_steps, [5, 10, 15, 20, 25, 30])


def test_malformed_results_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"performance has shape \(2, 6\), expected .* = \(3, 6\)"):
        _result(PERFORMANCE[:2])
    missing_end = ContinualResult("a", ("a",), (10,), "mean_return", np.array([5, 8]), np.array([[1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"no evaluation at step 10; evaluation steps: \[5, 8\]"):
        forgetting(missing_end)


def test_forward_transfer_refuses_a_normalisation_that_leaves_it_undefined() -> None:
    # A reference agent at the best success rate leaves nothing to transfer: FT would be -inf.
    with pytest.raises(ValueError, match=r"task 'a': AUC_ref = 1 must be below max_performance = 1 \(the best"):
        forward_transfer(_result(), {**REFERENCE, "a": 1.0})
    # Returns (AUC 40, 60, 75) need the best possible return: with the default 1, a better agent got FT < 0.
    returns, reference = _result(PERFORMANCE * 100), {"a": 50.0, "b": 20.0, "c": 75.0}
    with pytest.raises(ValueError, match=r"task 'a': AUC_ref = 50 must be below max_performance = 1 "):
        forward_transfer(returns, reference)
    np.testing.assert_allclose(forward_transfer(returns, reference, max_performance=100), [-0.2, 0.5, 0.0])
    with pytest.raises(ValueError, match=r"task 'b': AUC = 60 is above max_performance = 50 \(AUC_ref = 20\)"):
        forward_transfer(returns, {"a": 10.0, "b": 20.0, "c": 30.0}, max_performance=50)
    # The summary raises the same error rather than average an infinite transfer.
    with pytest.raises(ValueError, match=r"forward transfer of task 'a': AUC_ref = 1 must be below"):
        summarize([_result(), _result(seed=1)], {**REFERENCE, "a": 1.0})
    assert summarize([returns], reference, max_performance=100).forward_transfer.mean == pytest.approx(0.1)


def test_a_task_never_evaluated_during_its_training_has_no_area_under_its_curve() -> None:
    # Task b is trained on (10, 20] but evaluated at 10 and 30 only: its AUC would be nan.
    sparse = ContinualResult("abc", ("a", "b", "c"), (10, 10, 10), "success_rate", [10, 30], np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"task 'b' has no evaluation at a step in \(10, 20\]"):
        area_under_curve(sparse)
