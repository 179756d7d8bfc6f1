"""Whether torch's square root gives every float32 the same bits whatever its neighbours are.

``python bench/sqrt_lanes.py`` (about 2.5 minutes on one core)

``crl.adam`` raises Adam's zero and subnormal second moments to ``tiny`` before their square root,
because MKL's vector square root (what ``torch.sqrt`` runs on CPU) sends every vector holding such a
value to a scalar routine. That leaves the other moments' roots alone only if MKL computes each
element's root independently of the rest of its vector. This script takes the root of every
non-negative float32 bit pattern up to ``+inf``, once among its neighbours (all of them other
floats) and once with a zero, then with the smallest subnormal, between each two, and counts the
elements whose bits differ. Measured 2026-11-23 (torch 2.13.0, MKL 2024.2, AVX-512): 0.
"""

from __future__ import annotations

import time

import numpy as np
import torch as th

CHUNK = 1 << 25
"""Bit patterns per batch (128 MiB of float32)."""

POSITIVE_INFINITY = 0x7F800000
SMALLEST_SUBNORMAL = np.array([1], dtype=np.uint32).view(np.float32)[0]


def mismatches(start: int, stop: int) -> int:
    """Elements in ``[start, stop)`` (as float32 bits) whose root differs between the two layouts."""
    values = th.from_numpy(np.arange(start, stop, dtype=np.uint32).view(np.float32))
    alone = th.sqrt(values).view(th.int32)
    count = 0
    for neighbour in (0.0, float(SMALLEST_SUBNORMAL)):
        interleaved = th.full((2 * values.numel(),), neighbour)
        interleaved[1::2] = values
        beside = th.sqrt(interleaved)[1::2].view(th.int32)
        count += int((beside != alone).sum())
    return count


def main() -> None:
    th.set_num_threads(1)
    began = time.perf_counter()
    total = sum(
        mismatches(start, min(start + CHUNK, POSITIVE_INFINITY + 1)) for start in range(0, POSITIVE_INFINITY + 1, CHUNK)
    )
    print(f"elements whose root depends on their neighbours: {total} ({time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    main()
