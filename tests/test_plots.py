"""Plots of a hand-made MLflow launch (a parent run, two seeds) and of a local run directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import imread
from mlflow import MlflowClient
from mlflow.entities import Metric

from crl.continual import ContinualResult
from crl.plot import USAGE_ERROR_EXIT, main
from crl.plotting import (
    Curve,
    PlotError,
    evaluation_figure,
    load_runs,
    performance_matrix_figure,
    plasticity_figure,
    write_plots,
    write_run_plots,
)
from crl.plotting.figures import TASK_SPAN_GID, mean_and_range
from crl.plotting.runs import intervention_label
from crl.tracking.runs import create_run

DORMANT = "plasticity/q_net/all/dormant_ratio"
SRANK = "plasticity/q_net/layer1/srank"
STEPS = [0, 100, 200, 300]
PERFORMANCE = np.array([[10.0, 50.0, 30.0, 20.0], [9.0, 12.0, 40.0, 80.0]])
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_result(seed: int, offset: float = 0.0) -> ContinualResult:
    return ContinualResult(
        sequence="toy",
        task_names=("left", "right"),
        budgets=(200, 200),
        measure="mean_return",
        eval_steps=np.array([100, 200, 300, 400]),
        performance=PERFORMANCE + offset,
        seed=seed,
    )


def log_seed(client: MlflowClient, parent: str, seed: int, dormant: list[float], tmp_path: Path) -> str:
    """A child run as crl.train writes it: plasticity metrics, the ``task`` boundaries, ``result.json``."""
    run_id = create_run(client, "plots", f"launch-seed{seed}", params={"seed": str(seed)}, parent_run_id=parent)
    metrics = [Metric(DORMANT, value, 0, step) for step, value in zip(STEPS, dormant, strict=True)]
    metrics += [Metric(SRANK, 5.0 + seed, 0, step) for step in STEPS]
    metrics += [Metric("task", 0.0, 0, 0), Metric("task", 1.0, 0, 200)]
    client.log_batch(run_id, metrics=metrics, synchronous=True)
    path = tmp_path / f"seed{seed}" / "result.json"
    path.parent.mkdir(parents=True)
    make_result(seed, offset=seed).save(path)
    client.log_artifact(run_id, str(path))
    return run_id


def log_launch(client: MlflowClient, name: str, interventions: dict[str, str], tmp_path: Path, shift: float) -> str:
    parent = create_run(client, "plots", name, params=interventions)
    for seed, dormant in enumerate(([0.0, 0.1, 0.3, 0.4], [0.2, 0.3, 0.1, 0.6])):
        log_seed(client, parent, seed, [value + shift for value in dormant], tmp_path / name)
    return parent


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, MlflowClient, str, str]:
    """A tracking store with two launches of two seeds: with LayerNorm, and without intervention."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    with_norm = log_launch(client, "with", {"interventions.0.name": "layer_norm"}, tmp_path, 0.0)
    without = log_launch(client, "without", {"interventions": "[]"}, tmp_path, 1.0)
    return uri, client, with_norm, without


def task_spans(ax: Axes) -> list[tuple[float, float]]:
    return [
        (patch.get_x(), patch.get_x() + patch.get_width())  # type: ignore[attr-defined]
        for patch in ax.patches
        if patch.get_gid() == TASK_SPAN_GID
    ]


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    height, width, _ = imread(path).shape
    assert height > 100 and width > 100


def test_write_run_plots_writes_and_logs_every_plot_of_a_launch(tmp_path: Path, store: tuple) -> None:
    _, client, parent, _ = store
    written = write_run_plots(client, parent, tmp_path / "out")
    expected = {f"{DORMANT}.png", f"{SRANK}.png", "evaluation.png", "performance_matrix.png"}
    assert {path.relative_to(tmp_path / "out").as_posix() for path in written} == expected
    for path in written:
        assert_png(path)
    logged = {artifact.path for artifact in client.list_artifacts(parent, "plots")}
    assert logged == {"plots/plasticity", "plots/evaluation.png", "plots/performance_matrix.png"}
    deep = {artifact.path for artifact in client.list_artifacts(parent, "plots/plasticity/q_net/all")}
    assert deep == {f"plots/{DORMANT}.png"}


def test_plasticity_figure_draws_one_line_per_seed_over_one_span_per_task(store: tuple) -> None:
    _, client, parent, _ = store
    runs = load_runs(parent, client)
    assert [run.name for run in runs] == ["launch-seed0", "launch-seed1"]
    figure = plasticity_figure(runs, DORMANT)
    (ax,) = figure.axes
    assert task_spans(ax) == [(0, 200), (200, 400)]
    assert [line.get_label() for line in ax.lines] == ["launch-seed0", "launch-seed1"]
    assert ax.lines[1].get_xdata().tolist() == STEPS
    assert ax.lines[1].get_ydata().tolist() == [0.2, 0.3, 0.1, 0.6]


def test_intervention_groups_are_drawn_as_mean_and_min_max_band(store: tuple) -> None:
    _, client, with_norm, without = store
    runs = load_runs(with_norm, client) + load_runs(without, client)
    (ax,) = plasticity_figure(runs, DORMANT).axes
    assert [line.get_label() for line in ax.lines] == ["layer_norm (mean of 2)", "no intervention (mean of 2)"]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [0.1, 0.2, 0.2, 0.5])
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [1.1, 1.2, 1.2, 1.5])
    band = ax.collections[1].get_paths()[0].vertices
    assert band[:, 1].min() == pytest.approx(1.0) and band[:, 1].max() == pytest.approx(1.6)
    assert len(task_spans(ax)) == 2


def test_one_performance_matrix_per_intervention_group(tmp_path: Path, store: tuple) -> None:
    _, client, with_norm, without = store
    written = write_plots(load_runs(with_norm, client) + load_runs(without, client), tmp_path)
    names = {path.name for path in written if path.name.startswith("performance_matrix")}
    assert names == {"performance_matrix_layer_norm.png", "performance_matrix_no_intervention.png"}


def test_evaluation_figure_has_one_axes_per_task_with_its_curve(store: tuple) -> None:
    _, client, parent, _ = store
    runs = load_runs(parent, client)
    figure = evaluation_figure(runs[:1])
    left, right = figure.axes
    for ax in (left, right):
        assert task_spans(ax) == [(0, 200), (200, 400)]
    assert right.get_title() == "task 1: right"
    assert right.lines[0].get_xdata().tolist() == [100, 200, 300, 400]
    assert right.lines[0].get_ydata().tolist() == PERFORMANCE[1].tolist()


def test_heatmap_shows_the_performance_matrix_and_its_mean_over_seeds(store: tuple) -> None:
    _, client, parent, _ = store
    seed0, seed1 = (run.result for run in load_runs(parent, client))
    assert seed0 is not None and seed1 is not None
    (image,) = performance_matrix_figure([seed0], "seed 0").axes[0].images
    np.testing.assert_array_equal(image.get_array(), PERFORMANCE)
    (mean,) = performance_matrix_figure([seed0, seed1], "both").axes[0].images
    np.testing.assert_array_equal(mean.get_array(), PERFORMANCE + 0.5)
    labels = [label.get_text() for label in performance_matrix_figure([seed0], "seed 0").axes[0].get_yticklabels()]
    assert labels == ["0: left", "1: right"]


def test_without_a_result_the_task_metric_gives_the_boundaries(tmp_path: Path) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = create_run(client, "plots", "unfinished")
    metrics = [Metric(DORMANT, 0.5, 0, step) for step in (0, 150, 250)]
    metrics += [Metric("task", 0.0, 0, 0), Metric("task", 1.0, 0, 200)]
    client.log_batch(run_id, metrics=metrics, synchronous=True)
    (run,) = load_runs(run_id, client)
    assert run.result is None
    (ax,) = plasticity_figure([run], DORMANT).axes
    assert task_spans(ax) == [(0, 200), (200, 250)]
    written = write_plots([run], tmp_path / "out")
    assert [path.name for path in written] == ["dormant_ratio.png"]


def test_a_directory_with_progress_csv_is_put_on_the_sequence_step_axis(tmp_path: Path) -> None:
    make_result(0).save(tmp_path / "result.json")
    # SB3 restarts total_timesteps at each task (reset_num_timesteps=True): 2nd task's rows start over.
    (tmp_path / "progress.csv").write_text(
        f"time/total_timesteps,{DORMANT},train/loss\n100,0.1,1\n200,0.2,1\n50,0.3,1\n180,,1\n200,0.4,1\n"
    )
    (run,) = load_runs(str(tmp_path))
    curve = run.metrics[DORMANT]
    assert curve.steps.tolist() == [100, 200, 250, 400]
    assert curve.values.tolist() == [0.1, 0.2, 0.3, 0.4]
    assert set(run.metrics) == {DORMANT}


def test_mean_and_range_interpolates_seeds_measured_at_different_steps() -> None:
    first = Curve(np.array([0, 100, 200]), np.array([0.0, 1.0, 2.0]))
    second = Curve(np.array([50, 150, 250]), np.array([4.0, 4.0, 4.0]))
    steps, mean, low, high = mean_and_range([first, second])
    assert steps.tolist() == [50, 100, 150, 200]
    np.testing.assert_allclose(mean, [2.25, 2.5, 2.75, 3.0])
    np.testing.assert_allclose(low, [0.5, 1.0, 1.5, 2.0])
    np.testing.assert_allclose(high, [4.0, 4.0, 4.0, 4.0])


def test_intervention_label_names_every_intervention_with_its_parameters() -> None:
    params = {"interventions.1.name": "redo", "interventions.1.tau": "0.1", "interventions.0.name": "layer_norm"}
    assert intervention_label(params | {"seed": "0"}) == ("layer_norm + redo(tau=0.1)", "layer_norm + redo")
    assert intervention_label({"interventions": "[]"}) == ("no intervention", "no intervention")


def test_differing_task_boundaries_are_refused(tmp_path: Path) -> None:
    for name, budgets in (("a", (200, 200)), ("b", (100, 300))):
        (tmp_path / name).mkdir()
        result = make_result(0)
        moved = ContinualResult("toy", result.task_names, budgets, result.measure, result.eval_steps, PERFORMANCE)
        moved.save(tmp_path / name / "result.json")
    runs = load_runs(str(tmp_path / "a")) + load_runs(str(tmp_path / "b"))
    with pytest.raises(PlotError, match="different task boundaries"):
        evaluation_figure(runs)


def test_cli_plots_a_launch(tmp_path: Path, store: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    uri, _, parent, _ = store
    out = tmp_path / "cli"
    assert main([parent, parent, "--tracking-uri", uri, "--out", str(out)]) == 0  # given twice: one launch
    assert_png(out / "performance_matrix.png")
    assert_png(out / f"{DORMANT}.png")
    assert "4 plots of 2 run(s)" in capsys.readouterr().out


@pytest.mark.parametrize("source", ["0123456789abcdef", "no/such/dir"])
def test_cli_unknown_run_exits_2_with_one_line(
    tmp_path: Path, store: tuple, source: str, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = store[0]
    assert main([source, "--tracking-uri", uri, "--out", str(tmp_path / "cli")]) == USAGE_ERROR_EXIT
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"{source!r} is neither a directory nor a run id" in error
    assert not (tmp_path / "cli").exists()


def test_cli_directory_without_result_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path), "--out", str(tmp_path / "cli")]) == USAGE_ERROR_EXIT
    assert capsys.readouterr().err == f"error: {tmp_path}: no result.json in this directory\n"


def test_figures_are_not_left_in_pyplot(store: tuple) -> None:
    _, client, parent, _ = store
    import matplotlib.pyplot as plt

    figure = plasticity_figure(load_runs(parent, client), DORMANT)
    assert isinstance(figure, Figure) and plt.get_fignums() == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"sequence": "s"}', "result.json: not a saved ContinualResult (ContinualResult.__init__() missing 5"),
        ("not json", "result.json: not JSON (Expecting value at line 1); expected a saved ContinualResult"),
    ],
)
def test_cli_directory_with_an_unreadable_result_exits_2_with_one_line(
    tmp_path: Path, content: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "result.json").write_text(content)
    assert main([str(tmp_path), "--out", str(tmp_path / "cli")]) == USAGE_ERROR_EXIT
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"error: {tmp_path / 'result.json'}") and message in error


def test_cli_refuses_a_missing_directory_without_creating_a_tracking_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["mistyped_dir"]) == USAGE_ERROR_EXIT
    assert capsys.readouterr().err == (
        "error: 'mistyped_dir' is neither a directory nor a run id: no such directory, and no MLflow store at "
        "sqlite:///mlflow.db (give --tracking-uri)\n"
    )
    assert main(["runs/mistyped"]) == USAGE_ERROR_EXIT
    assert capsys.readouterr().err == "error: 'runs/mistyped' is neither a directory nor a run id: no such directory\n"
    assert list(tmp_path.iterdir()) == []  # no mlflow.db
