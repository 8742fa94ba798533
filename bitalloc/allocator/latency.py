"""A documented analytic latency table, used until the kernels issue supplies measured ones.

Model (decode, batch 1, one GEMV kernel per unit, memory bound), in microseconds:

    latency = LAUNCH_US + nbytes / BANDWIDTH_BYTES_PER_US * format_factor

- ``BANDWIDTH_BYTES_PER_US``: 2.5e6 bytes/us, i.e. 2.5 TB/s, about 75% of an H100 SXM's 3.35 TB/s.
- ``LAUNCH_US``: 4 us per kernel launch.
- ``format_factor``: 1.0 for power-of-two code widths (2, 4, 8 bits); 1.15 for the others (codes
  straddle byte boundaries, costlier unpacking); times 1.05 for groups of 32 and 1.02 for groups of
  64 (more scales to read and apply); times 1.03 for asymmetric codes (an extra add per group).
These are assumptions, not measurements: they make bytes and latency disagree the way real kernels
do (a 3-bit matrix is smaller but not proportionally faster than a 4-bit one).
"""

from __future__ import annotations

import re

import numpy as np

BANDWIDTH_BYTES_PER_US = 2.5e6
LAUNCH_US = 4.0
_NAME = re.compile(r"-w(?P<bits>\d+)g(?P<group>\d+)-(?P<sym>sym|asym)")


def format_factor(candidate: str) -> float:
    """Slowdown of a candidate's kernel per byte against an ideal power-of-two, large-group format."""
    m = _NAME.search(candidate)
    if m is None:
        return 1.0
    bits, group = int(m["bits"]), int(m["group"])
    factor = 1.0 if bits in (2, 4, 8) else 1.15
    factor *= {32: 1.05, 64: 1.02}.get(group, 1.0)
    return factor * (1.03 if m["sym"] == "asym" else 1.0)


def analytic_latency(candidates: tuple[str, ...], nbytes: np.ndarray) -> np.ndarray:
    """(units, candidates) float64 microseconds for (units, candidates) byte counts."""
    factors = np.array([format_factor(c) for c in candidates])
    return LAUNCH_US + nbytes.astype(np.float64) / BANDWIDTH_BYTES_PER_US * factors[None, :]
