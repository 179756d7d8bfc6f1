"""Experiment tracking: SB3's logger output into MLflow runs."""

from crl.tracking.mlflow_writer import MLflowOutputFormat

__all__ = ["MLflowOutputFormat"]
