"""Packaging and the README's promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
