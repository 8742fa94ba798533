"""Exact knapsack dynamic programming over byte counts divided by their common divisor.

Real byte counts share large common factors (whole matrices of power-of-two sizes: the 70B instance's
counts are all multiples of 131072), so after reduced-cost fixing leaves few groups with a real choice,
a DP over (extra bytes / gcd) is exact and much faster than a MILP. Used by ``milp.py`` when the table
it needs is small; otherwise the MILP runs.

Only differences within a group matter: each group's kept pairs are measured from the group's cheapest
kept pair, pairs of equal bytes keep only the least excess, and the table after k groups spans only
the totals those k groups can reach (at most the room left). After fixing, each group keeps a few
neighbouring hull points, so the table is a few thousand states wide instead of the whole budget.
"""

from __future__ import annotations

import numpy as np

MAX_CELLS = 20_000_000  # summed table width over the free groups up to which the DP is used


def knapsack_dp(
    g: np.ndarray, c: np.ndarray, excess: np.ndarray, extra: np.ndarray, cap: int, groups: int
) -> np.ndarray | None:
    """Exact least-excess choice per group from kept pairs (g, c) with int ``extra`` bytes <= ``cap``;
    None when the DP tables would exceed MAX_CELLS (or nothing fits). Every group needs a kept pair."""
    extra = np.asarray(extra, dtype=np.int64)
    if len(g) == 0 or np.bincount(g, minlength=groups).min() == 0:
        return None
    # Per group and byte count, the least excess (then the first pair): the others never win.
    order = np.lexsort((np.arange(len(g)), excess, extra, g))
    first = np.ones(len(order), dtype=bool)
    first[1:] = (g[order][1:] != g[order][:-1]) | (extra[order][1:] != extra[order][:-1])
    keep = order[first]  # sorted by group, then bytes
    g, c, excess, extra = g[keep], c[keep], excess[keep], extra[keep]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    counts = np.diff(np.r_[starts, len(g)])
    low = extra[starts]  # each group's cheapest kept bytes
    w = extra - np.repeat(low, counts)
    divisor = int(np.gcd.reduce(np.append(w[w > 0], 0))) or 1
    w //= divisor
    room = (cap - int(low.sum())) // divisor
    if room < 0:
        return None
    choice = c[starts].copy()  # groups with one kept byte count: their least-excess pair
    free = np.flatnonzero(counts > 1)
    widths = np.minimum(np.cumsum(w[starts[free] + counts[free] - 1]), room)
    if int(widths.sum()) + len(free) > MAX_CELLS:
        return None
    best = np.zeros(1)  # best[s]: least excess of the groups so far with total extra <= s
    picks = []
    for k, grp in enumerate(free):
        reach, width = len(best) - 1, int(widths[k])
        new = np.full(width + 1, np.inf)
        arg = np.zeros(width + 1, dtype=np.min_scalar_type(int(counts[grp])))
        for j in range(counts[grp]):
            i = starts[grp] + j
            wi = int(w[i])
            if wi > width:
                break  # sorted by bytes: the rest are wider still
            cand = np.full(width + 1 - wi, best[reach])
            n = min(reach + 1, len(cand))
            cand[:n] = best[:n]
            cand += excess[i]
            seg = new[wi:]
            better = cand < seg
            seg[better] = cand[better]
            arg[wi:][better] = j
        best = new
        picks.append(arg)
    s = len(best) - 1
    if not np.isfinite(best[s]):
        return None
    for k in range(len(free) - 1, -1, -1):
        grp = free[k]
        i = starts[grp] + int(picks[k][s])
        choice[grp] = c[i]
        s = min(s - int(w[i]), int(widths[k - 1]) if k > 0 else 0)
    return choice
