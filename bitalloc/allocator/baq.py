"""BAQ-style closed-form continuous allocation, then rounding to the palette.

Each group's error is modelled as e_g(b) = a_g * 2**(-2 b) (the high-resolution quantization law that
a Hessian-weighted error follows), with a_g fitted in log space over its feasible candidates:
log a_g = mean(log e_gc + 2 ln2 * b_gc) over candidates with e_gc > 0, b_gc the storage bits per
weight (8 * bytes / weights). Minimizing sum_g a_g 2**(-2 b_g) subject to sum_g n_g b_g <= 8 * bytes
has the closed form b_g = 0.5 * log2(2 ln2 a_g / (mu n_g)), clipped to the group's bits range; the
water level mu is found by bisection. Each group then takes the feasible candidate with the most bits
not above b_g (its least-error one among equal bits); ``multi.repair``/``fill`` finish the job.
"""

from __future__ import annotations

import numpy as np

from bitalloc.allocator.problem import AllocationProblem
from bitalloc.allocator.resources import Resource

_LN2 = np.log(2.0)


def continuous_bits(m: AllocationProblem, total_bytes: float) -> np.ndarray:
    """(groups,) real bits per weight of the closed-form allocation within ``total_bytes``."""
    n = np.maximum(m.numel, 1).astype(np.float64)
    bits = 8.0 * m.nbytes / n[:, None]
    pos = m.feasible & (m.loss > 0)
    logs = np.where(pos, np.log(np.where(pos, m.loss, 1.0)) + 2 * _LN2 * bits, 0.0)
    count = pos.sum(axis=1)
    loga = np.where(count > 0, logs.sum(axis=1) / np.maximum(count, 1), -np.inf)
    lo = np.where(m.feasible, bits, np.inf).min(axis=1)
    hi = np.where(m.feasible, bits, -np.inf).max(axis=1)

    def at(log_mu: float) -> np.ndarray:
        raw = 0.5 * (np.log(2 * _LN2) + loga - log_mu - np.log(n)) / _LN2
        return np.clip(np.where(np.isfinite(loga), raw, lo), lo, hi)

    target = 8.0 * total_bytes
    a, b = -800.0, 800.0  # log mu: more bits at a, fewer at b
    if float((n * at(a)).sum()) <= target:
        return at(a)
    for _ in range(100):
        mid = 0.5 * (a + b)
        if float((n * at(mid)).sum()) > target:
            a = mid
        else:
            b = mid
    return at(b)


def round_to_palette(m: AllocationProblem, real_bits: np.ndarray) -> np.ndarray:
    """Per group, the feasible candidate with the most bits not above ``real_bits`` (the fewest-bits one
    when none is), least loss among equal bits, then the lowest index."""
    bits = 8.0 * m.nbytes / np.maximum(m.numel, 1)[:, None]
    below = m.feasible & (bits <= real_bits[:, None] + 1e-9)
    floor_bits = np.where(below, bits, -np.inf).max(axis=1)
    none = ~below.any(axis=1)
    floor_bits[none] = np.where(m.feasible[none], bits[none], np.inf).min(axis=1)
    pick = m.feasible & np.isclose(bits, floor_bits[:, None], rtol=0, atol=1e-9)
    return np.argmin(np.where(pick, m.loss, np.inf), axis=1).astype(np.int64)


def solve_baq_merged(m: AllocationProblem, res: list[Resource]) -> np.ndarray:
    """The rounded closed-form choice per group (before repair), under the byte limit if any."""
    byte_limits = [r.limit for r in res if r.name == "bytes"]
    total = min(byte_limits) if byte_limits else float(np.where(m.feasible, m.nbytes, 0).max(axis=1).sum())
    return round_to_palette(m, continuous_bits(m, total))
