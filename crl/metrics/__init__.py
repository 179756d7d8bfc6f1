"""Plasticity metrics (SPEC.md §1): pure functions, the suite, monitoring during training, offline analysis.

>>> model = crl.PPO("MlpPolicy", "CartPole-v1", metrics={"every": 4096})
>>> model.learn(50_000)              # logs plasticity/<network>/<layer-or-all>/<metric>
>>> crl.metrics.evaluate(model, observations)
"""

from crl.metrics.config import MetricsConfig, MetricsError
from crl.metrics.functions import (
    DORMANT_TAU,
    GRAMA_TAU,
    activation_kind,
    dead_mask,
    dead_mask_of_activity,
    dead_units,
    dormant_mask,
    dormant_mask_of_activity,
    dormant_ratio,
    effective_rank,
    fau,
    fau_from_counts,
    feature_norm,
    feature_rank,
    grad_norm,
    gradient_scores,
    gram_singular_values,
    inactive_count,
    inactive_mask,
    layer_fraction,
    pca_rank,
    pooled_fraction,
    rank_metrics,
    singular_values,
    srank,
    unit_activity,
    unit_scores,
    weight_change,
    weight_magnitude,
)
from crl.metrics.grama import grama_metrics, unit_gradient_scores
from crl.metrics.hessian import hessian_top_eigenvalue, training_loss_eigenvalues
from crl.metrics.monitor import MetricsMonitor
from crl.metrics.offline import evaluate
from crl.metrics.probe import network_output, plasticity_probe
from crl.metrics.probe_batch import draw_probe_batch
from crl.metrics.suite import feature_metrics, metric_name

__all__ = [
    "DORMANT_TAU",
    "GRAMA_TAU",
    "MetricsConfig",
    "MetricsError",
    "MetricsMonitor",
    "activation_kind",
    "dead_mask",
    "dead_mask_of_activity",
    "dead_units",
    "dormant_mask",
    "dormant_mask_of_activity",
    "dormant_ratio",
    "draw_probe_batch",
    "effective_rank",
    "evaluate",
    "fau",
    "fau_from_counts",
    "feature_metrics",
    "feature_norm",
    "feature_rank",
    "grad_norm",
    "gradient_scores",
    "gram_singular_values",
    "grama_metrics",
    "hessian_top_eigenvalue",
    "inactive_count",
    "inactive_mask",
    "layer_fraction",
    "metric_name",
    "network_output",
    "pca_rank",
    "plasticity_probe",
    "pooled_fraction",
    "rank_metrics",
    "singular_values",
    "srank",
    "training_loss_eigenvalues",
    "unit_activity",
    "unit_gradient_scores",
    "unit_scores",
    "weight_change",
    "weight_magnitude",
]
