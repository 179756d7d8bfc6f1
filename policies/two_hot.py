"""Categorical value heads: a scalar learned as a distribution over a fixed support (two-hot targets).

A value network with a categorical head outputs ``K`` logits instead of one number. The support is
``z_k = low + k (high - low) / (K - 1)``, ``k = 0 .. K-1``; the scalar it stands for is the expectation
``V = sum_k softmax(logits)_k z_k``. A scalar target ``y`` is encoded as the *two-hot* distribution on
the two support points around it,

    y clamped to [low, high],  z_k <= y <= z_{k+1}:   p_k = (z_{k+1} - y) / (z_{k+1} - z_k),  p_{k+1} = 1 - p_k,

whose expectation is ``y`` itself, and the head is trained with the cross-entropy
``L = -sum_k p_k log softmax(logits)_k`` (averaged over the batch). Schrittwieser et al. 2020 (MuZero)
and Hafner et al. 2023 (DreamerV3) train values this way; Lyle et al. 2023 ("Understanding plasticity
in neural networks") report that it reduces plasticity loss compared with regression, and
Farebrother et al. 2024 ("Stop regressing") that classification losses make value-based deep RL
more robust and scalable.

This module is the whole of the math; DQN's Q-network, SAC's critics and PPO's value function use it
through the policy option ``two_hot`` (see ``docs/interventions.md``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from numbers import Integral, Real
from typing import Any

import torch as th
from torch.nn import functional as F


@dataclass(frozen=True)
class TwoHot:
    """A fixed support of ``bins`` evenly spaced points on ``[low, high]`` and the two-hot math on it.

    :param low: the smallest representable value ``z_0`` (targets below are clamped to it)
    :param high: the largest representable value ``z_{K-1}`` (targets above are clamped to it)
    :param bins: the number ``K`` of support points (at least 2)
    """

    low: float
    high: float
    bins: int = 51

    def __post_init__(self) -> None:
        if isinstance(self.bins, bool) or not isinstance(self.bins, Integral) or self.bins < 2:
            raise ValueError(f"policy option two_hot needs bins >= 2 (an integer), got bins={self.bins!r}")
        for key in ("low", "high"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
                raise ValueError(f"policy option two_hot needs a finite number for {key}, got {key}={value!r}")
        if not self.low < self.high:
            raise ValueError(f"policy option two_hot needs low < high, got low={self.low!r}, high={self.high!r}")

    @classmethod
    def make(cls, spec: TwoHot | Mapping[str, Any]) -> TwoHot:
        """A support from an instance or from a mapping ``{"low", "high", "bins"}`` (a YAML policy option)."""
        if isinstance(spec, TwoHot):
            return spec
        if not isinstance(spec, Mapping):
            raise ValueError(f"policy option two_hot must be a mapping with low, high and bins, got {spec!r}")
        unknown = sorted(set(spec) - {"low", "high", "bins"})
        if unknown:
            raise ValueError(f"policy option two_hot has no key(s) {unknown}; its keys are low, high, bins")
        missing = [key for key in ("low", "high") if key not in spec]
        if missing:
            raise ValueError(
                f"policy option two_hot needs keys low and high (bins is optional, default {cls.bins}), "
                f"got {dict(spec)!r} without {missing}"
            )
        return cls(**spec)

    def options(self) -> dict[str, float | int]:
        """The constructor arguments, as the policy option is written."""
        return asdict(self)

    def support(self, like: th.Tensor) -> th.Tensor:
        """``z``: the ``bins`` support points, with the dtype and device of ``like``."""
        return th.linspace(self.low, self.high, self.bins, dtype=like.dtype, device=like.device)

    def encode(self, y: th.Tensor) -> th.Tensor:
        """The two-hot distribution of each scalar: shape ``(*y.shape, bins)``, rows summing to 1."""
        z = self.support(y)
        y = y.clamp(self.low, self.high)
        # k: index of the support point at or below y, so that z_k <= y <= z_{k+1}
        k = (th.bucketize(y, z) - 1).clamp(0, self.bins - 2)
        z_below, z_above = z[k], z[k + 1]
        p_above = (y - z_below) / (z_above - z_below)
        probs = th.zeros((*y.shape, self.bins), dtype=y.dtype, device=y.device)
        probs.scatter_(-1, k.unsqueeze(-1), (1 - p_above).unsqueeze(-1))
        probs.scatter_(-1, (k + 1).unsqueeze(-1), p_above.unsqueeze(-1))
        return probs

    def expectation(self, probs: th.Tensor) -> th.Tensor:
        """``sum_k probs_k z_k`` over the last dimension."""
        return probs @ self.support(probs)

    def decode(self, logits: th.Tensor) -> th.Tensor:
        """The scalar a head stands for: ``sum_k softmax(logits)_k z_k`` over the last dimension."""
        return self.expectation(th.softmax(logits, dim=-1))

    def loss(self, logits: th.Tensor, y: th.Tensor) -> th.Tensor:
        """Cross-entropy of ``logits`` (shape ``(batch, bins)``) against the two-hot encoding of ``y``.

        :param logits: one row of logits per sample
        :param y: one scalar target per sample, any shape with ``batch`` elements (no gradient flows into it)
        """
        target_probs = self.encode(y.detach().reshape(-1))
        return F.cross_entropy(logits, target_probs)
