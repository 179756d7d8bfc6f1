"""Optuna studies over curricula: ``python -m crl.study FILE`` (``docs/studies.md``, ``docs/scaling.md``)."""

from crl.study.config import StudyConfig, load_study
from crl.study.schema import StudySpec

__all__ = ["StudyConfig", "StudySpec", "load_study"]
