"""Typed configuration: parsing YAML files into validated objects, never evaluating them."""

from crl.config.errors import ConfigError, describe_validation_error
from crl.config.schedules import is_schedule, parse_schedule

__all__ = ["ConfigError", "describe_validation_error", "is_schedule", "parse_schedule"]
