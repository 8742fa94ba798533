"""Exact knapsack dynamic programming over byte counts divided by their common divisor.

Real byte counts share large common factors (whole matrices of power-of-two sizes: the 70B instance's
counts are all multiples of 131072), so after reduced-cost fixing leaves few groups with a real choice,
a DP over (extra bytes / gcd) is exact and much faster than a MILP. Used by ``milp.py`` when the table
it needs is small; otherwise the MILP runs.
"""

from __future__ import annotations

import numpy as np

MAX_CELLS = 20_000_000  # free groups x capacity states up to which the DP is used


def knapsack_dp(
    g: np.ndarray, c: np.ndarray, excess: np.ndarray, extra: np.ndarray, cap: int, groups: int
) -> np.ndarray | None:
    """Exact least-excess choice per group from kept pairs (g, c) with int ``extra`` bytes <= ``cap``;
    None when the DP table would exceed MAX_CELLS (or nothing fits)."""
    divisor = int(np.gcd.reduce(np.append(extra[extra > 0], 0))) or 1
    counts = np.bincount(g, minlength=groups)
    free = np.flatnonzero(counts > 1)
    choice = np.full(groups, -1, dtype=np.int64)
    single = counts[g] == 1
    choice[g[single]] = c[single]
    fixed = int(extra[single].sum())
    room = (cap - fixed) // divisor
    if room < 0:
        return None
    if len(free) * (room + 1) > MAX_CELLS:
        return None
    best = np.zeros(room + 1)
    pick = np.zeros((len(free), room + 1), dtype=np.int64)
    order = np.argsort(g, kind="stable")
    starts = np.searchsorted(g[order], free)
    for k, grp in enumerate(free):
        idx = order[starts[k] : starts[k] + counts[grp]]
        new = np.full(room + 1, np.inf)
        arg = np.zeros(room + 1, dtype=np.int64)
        for i in idx:
            w = int(extra[i]) // divisor
            if w > room:
                continue
            cand = np.full(room + 1, np.inf)
            cand[w:] = best[: room + 1 - w] + excess[i]
            better = cand < new
            new[better], arg[better] = cand[better], i
        best, pick[k] = new, arg
    if not np.isfinite(best[room]):
        return None
    s = room
    for k in range(len(free) - 1, -1, -1):
        i = int(pick[k, s])
        choice[free[k]] = c[i]
        s -= int(extra[i]) // divisor
    return choice
