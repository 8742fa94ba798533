"""Lagrangian / LP-relaxation solver for the multiple-choice knapsack over lower convex hulls.

Each tie group's candidates are reduced to the lower convex hull of (bytes, loss). Moving up a hull
segment buys a loss decrease at a price in bytes; the LP relaxation takes segments in order of
decreasing loss saved per byte (one Lagrange multiplier sweeping down), and is optimal with one
fractional segment: that gives the certified lower bound. The integer plan takes the whole
segments that fit, then spends the leftover bytes on the best remaining moves of any candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bitalloc.allocator.problem import AllocationProblem


@dataclass(frozen=True, eq=False)
class HullSegments:
    """All hull segments of a merged problem, sorted by loss saved per byte (best first).

    start:  (groups,) candidate index at the bottom of each hull (fewest bytes)
    group, cand: (segments,) the group and the candidate a segment moves to
    dbytes, dloss: (segments,) bytes added and loss removed by the segment (both > 0)
    """

    start: np.ndarray
    group: np.ndarray
    cand: np.ndarray
    dbytes: np.ndarray
    dloss: np.ndarray


def lower_hull(nbytes: np.ndarray, loss: np.ndarray) -> list[int]:
    """Indices (into the arrays) of the lower convex hull, from fewest bytes to lowest loss."""
    order = np.lexsort((np.arange(len(nbytes)), loss, nbytes))  # bytes, then loss, then index
    pareto: list[int] = []
    for i in order:  # keep points that strictly lower the loss as bytes grow
        if not pareto or loss[i] < loss[pareto[-1]]:
            if pareto and nbytes[i] == nbytes[pareto[-1]]:
                continue
            pareto.append(int(i))
    hull: list[int] = []
    for i in pareto:
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # b lies on or above the chord a -> i: drop it
            cross = (loss[b] - loss[a]) * (nbytes[i] - nbytes[a]) - (loss[i] - loss[a]) * (nbytes[b] - nbytes[a])
            if cross >= 0:
                hull.pop()
            else:
                break
        hull.append(i)
    return hull


def hull_segments(merged: AllocationProblem) -> HullSegments:
    """Build and sort the hull segments of every group."""
    start = np.zeros(len(merged.units), dtype=np.int64)
    group, cand, dbytes, dloss = [], [], [], []
    for g in range(len(merged.units)):
        idx = np.flatnonzero(merged.feasible[g])
        hull = idx[lower_hull(merged.nbytes[g, idx], merged.loss[g, idx])]
        start[g] = hull[0]
        for a, b in zip(hull[:-1], hull[1:], strict=True):
            group.append(g)
            cand.append(b)
            dbytes.append(merged.nbytes[g, b] - merged.nbytes[g, a])
            dloss.append(merged.loss[g, a] - merged.loss[g, b])
    group_a, cand_a = np.array(group, dtype=np.int64), np.array(cand, dtype=np.int64)
    dbytes_a, dloss_a = np.array(dbytes, dtype=np.int64), np.array(dloss, dtype=np.float64)
    # best ratio first; within a group the hull keeps ratios decreasing, so order is preserved
    order = np.lexsort((np.arange(len(group_a)), -dloss_a / np.maximum(dbytes_a, 1)))
    return HullSegments(start, group_a[order], cand_a[order], dbytes_a[order], dloss_a[order])


def solve_lagrange(
    merged: AllocationProblem, max_bytes: int, segments: HullSegments | None = None
) -> tuple[np.ndarray, float]:
    """Candidate index per group and the LP lower bound on the optimal loss."""
    seg = segments if segments is not None else hull_segments(merged)
    g_idx = np.arange(len(merged.units))
    base_bytes = int(merged.nbytes[g_idx, seg.start].sum())
    base_loss = float(merged.loss[g_idx, seg.start].sum())
    cum = base_bytes + np.cumsum(seg.dbytes)
    taken = int(np.searchsorted(cum, max_bytes, side="right"))  # whole segments that fit
    choice = seg.start.copy()
    # later segments of a group overwrite earlier ones: the last taken is the group's vertex
    choice[seg.group[:taken]] = seg.cand[:taken]
    bound = base_loss - float(seg.dloss[:taken].sum())
    if taken < len(seg.group):
        used = base_bytes + (int(cum[taken - 1] - base_bytes) if taken else 0)
        bound -= (max_bytes - used) / seg.dbytes[taken] * seg.dloss[taken]
    return fill_leftover(merged, choice, max_bytes), max(bound, 0.0)


def fill_leftover(merged: AllocationProblem, choice: np.ndarray, max_bytes: int) -> np.ndarray:
    """Repeatedly apply the move (any group, any candidate) with the best loss saved per extra byte that fits."""
    choice = choice.copy()
    g_idx = np.arange(len(merged.units))
    loss = np.where(merged.feasible, merged.loss, np.inf)
    for _ in range(10 * len(g_idx) + 10):
        left = max_bytes - int(merged.nbytes[g_idx, choice].sum())
        extra = merged.nbytes - merged.nbytes[g_idx, choice][:, None]  # (groups, cands)
        saved = loss[g_idx, choice][:, None] - loss  # (groups, cands)
        ok = merged.feasible & (extra <= left) & (saved > 0)
        if not ok.any():
            break
        ratio = np.where(ok, saved / np.maximum(extra, 1), -np.inf)
        ratio[ok & (extra <= 0)] = np.inf  # free improvements first
        g, c = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
        choice[g] = c
    return choice
