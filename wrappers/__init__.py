"""Environments and task sequences for continual RL (installed as ``crl.wrappers``)."""

from crl.wrappers.shifts import ObservationShift

__all__ = ["ObservationShift"]
