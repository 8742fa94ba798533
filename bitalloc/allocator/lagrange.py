"""Lagrangian / LP-relaxation solver for the multiple-choice knapsack, vectorized with numpy.

Each tie group's feasible (bytes, loss) points are reduced to their lower convex hull; the hull
segments ("upgrades") of all groups are sorted by loss decrease per byte. Taking them in that order
while the budget allows, plus a fraction of the first one that does not fit, is the LP optimum: a
certified lower bound. The integer answer is that greedy prefix, then a fill pass that spends the
leftover bytes on the best remaining moves of any candidate.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from bitalloc.allocator.problem import AllocationProblem, Solution
from bitalloc.errors import InfeasibleBudget

_BIG = np.iinfo(np.int64).max


@dataclass(frozen=True)
class Hull:
    """The lower convex hulls of a merged problem, as one list of segments sorted by slope (best first).

    points:  (groups, K) candidate index of each group's hull points, cheapest first (padded)
    size:    (groups,) hull points per group (at least 1)
    group:   (S,) group of each segment; within a group, segments keep hull order
    dbytes:  (S,) int64 extra bytes of the segment
    dloss:   (S,) float64 loss decrease of the segment
    cum:     (S,) int64 total bytes once segments [0..i] are taken (base bytes included)
    base:    total bytes with every group on its cheapest point
    """

    points: np.ndarray
    size: np.ndarray
    group: np.ndarray
    dbytes: np.ndarray
    dloss: np.ndarray
    cum: np.ndarray
    base: int


def build_hull(m: AllocationProblem) -> Hull:
    """Lower convex hull of every group of a merged problem (ties between groups are ignored)."""
    return build_hull_arrays(m.nbytes, m.loss, m.feasible)


def build_hull_arrays(cost: np.ndarray, loss: np.ndarray, feasible: np.ndarray) -> Hull:
    """Lower convex hull of each row's feasible (cost, loss) points; ``cost`` int64 or float64."""
    n_groups, n_cand = loss.shape
    b = np.where(feasible, cost, _BIG if cost.dtype.kind in "iu" else np.inf)
    lo = np.where(feasible, loss, np.inf)
    # Sort each row by (bytes, loss, index); infeasible points go last.
    order = np.lexsort((np.broadcast_to(np.arange(n_cand), b.shape), lo, b), axis=-1)
    sb, sl = np.take_along_axis(b, order, 1), np.take_along_axis(lo, order, 1)
    # Pareto filter: keep a point only if its loss is strictly below every cheaper point's.
    prev = np.minimum.accumulate(sl, axis=1)
    keep = np.empty_like(sl, dtype=bool)
    keep[:, 0] = np.isfinite(sl[:, 0])
    keep[:, 1:] = sl[:, 1:] < prev[:, :-1]
    npts = keep.sum(axis=1)
    width = int(npts.max())
    # Compact the kept points to the left of each row (flat indices: row * width + column).
    r, c = np.nonzero(keep)
    dest = r * width + (np.cumsum(keep, axis=1)[r, c] - 1)
    pb, pl, pidx = (np.zeros(n_groups * width, dtype=a.dtype) for a in (sb, sl, order))
    pb[dest], pl[dest], pidx[dest] = sb[r, c], sl[r, c], order[r, c]

    # Monotone chain over columns, all groups at once; bytes strictly increase, loss strictly falls.
    # Hull points are stored flat like the compacted ones; ``size`` counts each group's hull points.
    hb, hl, hi = pb.copy(), pl.copy(), pidx.copy()
    size = np.ones(n_groups, dtype=np.int64)
    for k in range(1, width):
        rows = np.flatnonzero(npts > k)
        new = rows * width + k
        chk, cnew = rows, new
        while chk.size:
            two = size[chk] >= 2
            chk, cnew = chk[two], cnew[two]
            top = chk * width + size[chk] - 1
            s_prev = (hl[top - 1] - hl[top]) / (hb[top] - hb[top - 1])
            s_new = (hl[top] - pl[cnew]) / (pb[cnew] - hb[top])
            drop = s_prev < s_new  # the top point lies above the chord: drop it
            chk, cnew = chk[drop], cnew[drop]
            size[chk] -= 1
        at = rows * width + size[rows]
        hb[at], hl[at], hi[at] = pb[new], pl[new], pidx[new]
        size[rows] += 1

    # Segments in (group, position) order, then a stable sort by slope keeps hull order within groups.
    g, j = np.nonzero(np.arange(1, width)[None, :] < size[:, None])
    at = g * width + j + 1
    db = hb[at] - hb[at - 1]
    dl = hl[at - 1] - hl[at]
    srt = np.argsort(-(dl / db), kind="stable")
    base = hb[::width].sum().item()
    return Hull(
        points=hi.reshape(n_groups, width),
        size=size,
        group=g[srt],
        dbytes=db[srt],
        dloss=dl[srt],
        cum=base + np.cumsum(db[srt]),
        base=base,
    )


def _group_losses(m: AllocationProblem, choice: np.ndarray) -> np.ndarray:
    return m.loss[np.arange(len(choice)), choice]


def _fill(m: AllocationProblem, choice: np.ndarray, left: int) -> np.ndarray:
    """Spend ``left`` bytes on the best moves (loss decrease per extra byte), one at a time."""
    rows = np.arange(len(choice))
    dl = _group_losses(m, choice)[:, None] - m.loss
    db = m.nbytes - m.nbytes[rows, choice][:, None]
    g, c = np.nonzero(m.feasible & (dl > 0) & (db <= left))
    dl, db = dl[g, c], db[g, c]
    while g.size:
        ratio = np.where(db > 0, dl / np.maximum(db, 1), np.inf)
        best = np.flatnonzero(ratio == ratio.max())
        i = best[np.argmax(dl[best])]  # then the biggest decrease, then the lowest (group, candidate)
        gi, ci = g[i], c[i]
        left -= int(db[i])
        choice[gi] = ci
        same = g == gi
        dl[same] = m.loss[gi, ci] - m.loss[gi, c[same]]
        db[same] = m.nbytes[gi, c[same]] - m.nbytes[gi, ci]
        ok = (dl > 0) & (db <= left)
        g, c, dl, db = g[ok], c[ok], dl[ok], db[ok]
    return choice


def solve_merged(m: AllocationProblem, hull: Hull, max_bytes: int) -> tuple[np.ndarray, float]:
    """Integer choice per group of ``m`` and the LP lower bound, for one byte budget."""
    if max_bytes < hull.base:
        raise InfeasibleBudget(f"{max_bytes} bytes is below the smallest feasible total, {hull.base} bytes")
    k = int(np.searchsorted(hull.cum, max_bytes, side="right"))
    level = np.bincount(hull.group[:k], minlength=len(hull.size))
    choice = hull.points[np.arange(len(level)), level]
    bound = float(_group_losses(m, choice).sum())
    if k < len(hull.cum):
        used = hull.base if k == 0 else int(hull.cum[k - 1])
        bound -= (max_bytes - used) / hull.dbytes[k] * hull.dloss[k]
        choice = _fill(m, choice, max_bytes - used)
    return choice, bound


def build_solution(
    problem: AllocationProblem,
    group_choice: np.ndarray,
    bound: float,
    *,
    status: str | None,
    solver: str,
    seconds: float,
) -> Solution:
    """Expand a per-group choice to the units of ``problem``; objective and bytes recomputed exactly.

    ``status=None`` means "optimal" when the bound certifies the objective, else "feasible".
    """
    choice = np.asarray(group_choice, dtype=np.int64)[problem.group_index()]
    rows = np.arange(len(choice))
    objective = float(problem.loss[rows, choice].sum())
    bound = min(float(bound), objective)
    gap = (objective - bound) / max(objective, 1e-300)
    if status is None:
        status = "optimal" if gap <= 1e-12 else "feasible"
    return Solution(
        choice=choice,
        objective=objective,
        nbytes=int(problem.nbytes[rows, choice].sum()),
        bound=bound,
        gap=gap,
        status=status,
        solver=solver,
        seconds=seconds,
    )


def solve_lagrange(problem: AllocationProblem, max_bytes: int) -> Solution:
    """Greedy-hull solution and LP bound for one byte budget (at least the smallest feasible total)."""
    return solve_lagrange_many(problem, [max_bytes])[0]


def solve_lagrange_many(
    problem: AllocationProblem, budgets: Sequence[int], *, merged: AllocationProblem | None = None
) -> list[Solution]:
    """Solutions for many byte budgets from one sorted hull; ``merged`` is ``problem.merged()`` if known."""
    t0 = time.perf_counter()
    m = problem.merged() if merged is None else merged
    hull = build_hull(m)
    shared = time.perf_counter() - t0
    out = []
    for max_bytes in budgets:
        t1 = time.perf_counter()
        choice, bound = solve_merged(m, hull, int(max_bytes))
        sol = build_solution(problem, choice, bound, status=None, solver="lagrange", seconds=0.0)
        out.append(replace(sol, seconds=shared + time.perf_counter() - t1))
    return out
