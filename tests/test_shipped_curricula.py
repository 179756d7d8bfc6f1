"""Every curriculum shipped in ``curricula/`` validates and states its budget and wall time."""

from pathlib import Path

import pytest

from crl.config.curriculum import load_curriculum

CURRICULA = sorted((Path(__file__).parents[1] / "curricula").glob("*.yaml"))


def test_curricula_are_shipped() -> None:
    assert "default.yaml" in {path.name for path in CURRICULA}


@pytest.mark.parametrize("path", CURRICULA, ids=lambda path: path.name)
def test_shipped_curriculum_validates(path: Path) -> None:
    header = path.read_text().split("\n\n")[0].lower()
    assert "budget:" in header and "wall time" in header
    curriculum = load_curriculum(path)
    assert curriculum.sequence.preset is not None or curriculum.sequence.tasks
