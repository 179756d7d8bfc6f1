"""Packaging and the README's promises."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_readme_test_command_is_what_ci_runs() -> None:
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    command = next(line for line in ci_lines if line.startswith("pip install"))
    assert command in (ROOT / "README.md").read_text()


def test_packages_import_under_crl_only(tmp_path: Path) -> None:
    code = (
        "import importlib.util, crl, crl.policies, crl.wrappers\n"
        "from crl import DQN, PPO, SAC\n"
        "from crl.policies import DQNPolicy, ActorCriticPolicy, SACPolicy\n"
        "from crl.wrappers import ObservationShift\n"
        "print(importlib.util.find_spec('policies'), importlib.util.find_spec('wrappers'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "None None"


BENCH_SCRIPTS = sorted(path.stem for path in (ROOT / "bench").glob("*.py") if path.stem != "__init__")
VALIDATION_MODULES = sorted(
    path.stem for path in (ROOT / "bench" / "validation").glob("*.py") if path.stem != "__main__"
)


@pytest.mark.parametrize("script", BENCH_SCRIPTS)
def test_every_benchmark_script_imports_as_its_command_runs_it(script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``python bench/<script>.py`` has bench/ on the path: a stale import fails here, not in a week-long run."""
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    importlib.import_module(script)


@pytest.mark.parametrize("module", VALIDATION_MODULES)
def test_every_validation_module_imports(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    importlib.import_module(f"bench.validation.{module}")
