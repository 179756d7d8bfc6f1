"""Continual training and evaluation: train one model through a task sequence, measure what it keeps.

:func:`learn_continual` trains and evaluates into a :class:`ContinualResult` (tasks x evaluation points);
:mod:`crl.continual.metrics` turns results of several seeds into the SPEC.md §4 metrics with bootstrap
confidence intervals. :mod:`crl.continual.continual_world` holds Continual World's reference SAC.
"""

from crl.continual.loop import SequenceProgress, TaskEvaluator, learn_continual
from crl.continual.metrics import (
    ContinualSummary,
    Estimate,
    area_under_curve,
    average_performance,
    backward_transfer,
    bootstrap_ci,
    final_performance,
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
from crl.continual.results import ContinualResult

__all__ = [
    "ContinualResult",
    "ContinualSummary",
    "Estimate",
    "SequenceProgress",
    "TaskEvaluator",
    "area_under_curve",
    "average_performance",
    "backward_transfer",
    "bootstrap_ci",
    "final_performance",
    "forgetting",
    "forward_transfer",
    "learn_continual",
    "performance_after_training",
    "performance_maintenance",
    "reference_auc",
    "reference_final_performance",
    "relative_performance",
    "sample_efficiency",
    "summarize",
]
