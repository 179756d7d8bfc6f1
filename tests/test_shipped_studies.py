"""Every study shipped in ``studies/`` validates against its base curriculum and states its budget and wall time."""

from pathlib import Path

import pytest

from crl.study import load_study

STUDIES = sorted((Path(__file__).parents[1] / "studies").glob("*.yaml"))


def test_studies_are_shipped() -> None:
    shipped = {"redo_minatar", "pfo_ppo", "arr_sac", "default_grid", "clonex_pendulum", "weight_clipping_dqn"}
    assert {path.stem for path in STUDIES} >= shipped | {"parseval_dqn", "sam_dqn", "regrama_minatar", "nap_dqn"}


@pytest.mark.parametrize("path", STUDIES, ids=lambda path: path.name)
def test_shipped_study_validates(path: Path, tmp_path: Path) -> None:
    header = path.read_text().split("\n\n")[0].lower()
    assert "budget:" in header and "estimated cpu wall time" in header
    # Every corner of the search space is validated as a curriculum; the storage defaults beside mlflow.db.
    config = load_study(path, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert config.storage_url == f"sqlite:///{tmp_path / 'optuna.db'}"
    assert config.n_trials >= 1 and config.curriculum.tracking.experiment == config.name


def test_the_seed_sweep_is_a_grid_of_intervention_sets_by_seeds() -> None:
    config = load_study(Path(__file__).parents[1] / "studies" / "default_grid.yaml")
    assert config.n_trials == 6 * 5 and config.spec.resolved_pruner.name == "none"
    grid = config.space.grid(config.source)
    assert grid["seed"] == [0, 1, 2, 3, 4] and "layer_norm" in grid["interventions"]
