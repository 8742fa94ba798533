"""Exact multiple-choice knapsack through HiGHS (``scipy.optimize.milp`` is HiGHS).

One binary x[g, c] per feasible (tie group, candidate): each group takes exactly one candidate, the
chosen bytes stay within the budget, the summed loss is minimal. For numerical robustness the model
works on shifted, rescaled numbers: each group's cheapest bytes and smallest loss are constants taken
out, candidates that cannot beat the Lagrangian solution are dropped, and the losses are scaled so
that solution is worth 1e6. The objective is then recomputed in original units from the choice.
"""

from __future__ import annotations

import time

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from bitalloc.allocator.dp import knapsack_dp
from bitalloc.allocator.lagrange import build_hull, build_solution, solve_merged
from bitalloc.allocator.problem import AllocationProblem, Solution
from bitalloc.allocator.resources import Resource

_STATUS = {0: "optimal", 1: "time_limit"}
_SCALE = 1e6  # the scaled objective of the Lagrangian solution


def canonical_choice(m: AllocationProblem, choice: np.ndarray) -> np.ndarray:
    """Per group, the candidate with the same loss and the fewest bytes, then the lowest index."""
    rows = np.arange(len(choice))
    same = m.feasible & (m.loss == m.loss[rows, choice][:, None])
    key = np.where(same, m.nbytes, np.iinfo(np.int64).max)
    return np.argmin(key, axis=1).astype(np.int64)  # argmin takes the first index among equal bytes


def hull_price(hull, max_bytes: float) -> float:
    """The LP price of the byte limit: the slope of the hull segment that crosses it (0 if slack)."""
    k = int(np.searchsorted(hull.cum, max_bytes, side="right"))
    return float(hull.dloss[k] / hull.dbytes[k]) if k < len(hull.cum) else 0.0


def reduced_cost_keep(
    loss: np.ndarray, priced: list[tuple[np.ndarray, float]], feasible: np.ndarray, bound: float, incumbent
) -> np.ndarray:
    """Reduced-cost fixing: (groups, candidates) mask of the pairs that may still be in a plan better
    than ``incumbent`` (a per-group choice). Forcing pair (g, c) raises the Lagrangian bound ``bound``
    by its reduced cost, so a pair with bound + reduced cost above the incumbent's loss is dropped;
    the incumbent's own pairs are always kept."""
    rows = np.arange(loss.shape[0])
    lag = loss + sum(p * cost for cost, p in priced)
    rc = lag - np.where(feasible, lag, np.inf).min(axis=1, keepdims=True)
    top = float(loss[rows, incumbent].sum())
    keep = bound + rc <= top + 1e-9 * abs(top) + 1e-300
    keep[rows, incumbent] = True
    return keep


def solve_milp_merged(
    m: AllocationProblem, max_bytes: int, *, time_limit: float | None = None, rel_gap: float = 0.0
) -> tuple[np.ndarray, float, str]:
    """Candidate per group of a merged problem, a proven lower bound on the loss, and the status."""
    rows = np.arange(len(m.units))
    hull = build_hull(m)
    heuristic, lp_bound = solve_merged(m, hull, max_bytes)
    lmin = np.where(m.feasible, m.loss, np.inf).min(axis=1)
    bmin = np.where(m.feasible, m.nbytes, np.iinfo(np.int64).max).min(axis=1)
    excess = m.loss - lmin[:, None]
    extra = m.nbytes - bmin[:, None]
    upper = float(excess[rows, heuristic].sum())  # any optimum has total excess <= upper
    cap = int(max_bytes - bmin.sum())
    keep = m.feasible & (extra <= cap) & (excess <= upper * (1 + 1e-9))
    keep &= reduced_cost_keep(
        m.loss, [(m.nbytes, hull_price(hull, max_bytes))], m.feasible, lp_bound, heuristic
    )
    g, c = np.nonzero(keep)
    scale = min(_SCALE / upper, 1e290) if upper > 0 else 1.0  # capped: denormal losses overflow
    one_each = sparse.csr_array((np.ones(len(g)), (g, np.arange(len(g)))), shape=(len(rows), len(g)))
    options: dict = {"disp": False, "mip_rel_gap": rel_gap}
    if time_limit is not None:
        options["time_limit"] = float(time_limit)

    exact = knapsack_dp(g, c, excess[g, c], extra[g, c], cap, len(rows))
    exact_excess = None if exact is None else excess[rows, exact].sum()
    if exact_excess is not None and exact_excess <= upper * (1 + 1e-12):
        # The DP optimum can tie the Lagrangian plan yet sum a few ulps above it in another order:
        # both are then optimal; the smaller sum is kept (HiGHS used to be run on such ties).
        best = exact if exact_excess <= upper else heuristic
        return canonical_choice(m, best), float(m.loss[rows, best].sum()), "optimal"
    best, bound, status = heuristic, lp_bound, "feasible"
    for attempt in range(3):  # re-solve with a tighter cap if rounding x ever overshoots the budget
        res = milp(
            excess[g, c] * scale,
            constraints=[
                LinearConstraint(one_each, lb=1, ub=1),
                LinearConstraint(extra[g, c].astype(np.float64)[None, :], lb=-np.inf, ub=float(cap)),
            ],
            integrality=np.ones(len(g)),
            bounds=Bounds(0, 1),
            options=options,
        )
        dual = getattr(res, "mip_dual_bound", None)
        if attempt == 0:  # only the first model is the real problem: its status and bound count
            status = _STATUS.get(int(res.status), f"failed: {res.message}")
            if dual is not None and np.isfinite(dual):
                bound = max(bound, float(lmin.sum()) + float(dual) / scale)
        if res.x is None:
            break
        taken = res.x > 0.5
        choice = np.zeros(len(rows), dtype=np.int64)
        choice[g[taken]] = c[taken]
        if taken.sum() != len(rows) or np.bincount(g[taken], minlength=len(rows)).max() != 1:
            break  # not one candidate per group: keep the Lagrangian solution
        overshoot = int(m.nbytes[rows, choice].sum()) - max_bytes
        if overshoot > 0:
            cap -= overshoot
            status = "feasible"
            continue
        if excess[rows, choice].sum() <= upper:
            best = choice
            if status == "optimal" and (dual is None or not np.isfinite(dual)):
                bound = float(m.loss[rows, choice].sum())
        break
    return canonical_choice(m, best), bound, status


def solve_milp(
    problem: AllocationProblem,
    max_bytes: int,
    *,
    time_limit: float | None = None,
    rel_gap: float = 0.0,
    merged: AllocationProblem | None = None,
) -> Solution:
    """Exact solution by HiGHS for one byte budget (at least the smallest feasible total).

    ``time_limit`` in seconds (status "time_limit" when hit; the answer is then the best found, never
    worse than the Lagrangian one); ``merged`` is ``problem.merged()`` when the caller has it.
    """
    t0 = time.perf_counter()
    m = problem.merged() if merged is None else merged
    choice, bound, status = solve_milp_merged(m, max_bytes, time_limit=time_limit, rel_gap=rel_gap)
    return build_solution(
        problem, choice, bound, status=status, solver="milp", seconds=time.perf_counter() - t0
    )


def kept_pairs(
    m: AllocationProblem,
    res: list[Resource],
    start: np.ndarray | None,
    lam: np.ndarray | None = None,
    bound: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """The (group, candidate) pairs worth a variable, with shifted losses and costs.

    Returns g, c, excess loss (over the group's least loss), (K, pairs) extra cost (over the group's
    least cost), and the caps on those extras. A pair is dropped when its extra alone breaks a cap or
    (given a feasible ``start``) its excess alone is worse than that start's whole excess.
    """
    rows = np.arange(len(m.units))
    lmin = np.where(m.feasible, m.loss, np.inf).min(axis=1)
    excess = m.loss - lmin[:, None]
    keep = m.feasible.copy()
    extras, caps = [], []
    for r in res:
        cmin = np.where(m.feasible, r.cost, np.inf).min(axis=1)
        extra = r.cost - cmin[:, None]
        cap = r.limit - float(cmin.sum())
        keep &= extra <= cap * (1 + 1e-12) + 1e-9
        extras.append(extra)
        caps.append(cap)
    if start is not None:
        keep &= excess <= float(excess[rows, start].sum()) * (1 + 1e-9)
        keep[rows, start] = True
        if lam is not None and bound is not None:
            priced = [(r.cost, float(p)) for r, p in zip(res, lam, strict=True)]
            keep &= reduced_cost_keep(m.loss, priced, m.feasible, bound, start)
    g, c = np.nonzero(keep)
    extra = np.array([e[g, c] for e in extras], dtype=np.float64).reshape(len(res), len(g))
    return g, c, excess[g, c], extra, np.array(caps, dtype=np.float64)


def solve_milp_resources(
    m: AllocationProblem,
    res: list[Resource],
    start: np.ndarray | None,
    *,
    time_limit: float | None = None,
    lam: np.ndarray | None = None,
    bound: float | None = None,
) -> tuple[np.ndarray | None, float | None, str]:
    """HiGHS over several limits: per-group choice (or None), HiGHS's dual bound, status.

    ``lam`` and ``bound`` (Lagrangian prices and bound) enable reduced-cost fixing around ``start``."""
    rows = np.arange(len(m.units))
    g, c, excess, extra, caps = kept_pairs(m, res, start, lam, bound)
    if len(np.unique(g)) < len(rows):
        return None, None, "infeasible"  # some group has no candidate within every limit
    lmin_g = np.where(m.feasible, m.loss, np.inf).min(axis=1)
    upper = float((m.loss[rows, start] - lmin_g).sum()) if start is not None else 0.0
    upper = upper if upper > 0 else float(excess.max(initial=0.0)) * len(rows)
    scale = min(_SCALE / upper, 1e290) if upper > 0 else 1.0
    lmin = float(np.where(m.feasible, m.loss, np.inf).min(axis=1).sum())
    one_each = sparse.csr_array((np.ones(len(g)), (g, np.arange(len(g)))), shape=(len(rows), len(g)))
    options: dict = {"disp": False, "mip_rel_gap": 0.0}
    if time_limit is not None:
        options["time_limit"] = float(time_limit)
    best, bound, status = start, None, "infeasible"
    for attempt in range(3):
        norm = np.maximum(np.abs(caps), 1.0)[:, None]
        res_ = milp(
            excess * scale,
            constraints=[
                LinearConstraint(one_each, lb=1, ub=1),
                LinearConstraint(extra / norm, lb=-np.inf, ub=caps / norm[:, 0]),
            ],
            integrality=np.ones(len(g)),
            bounds=Bounds(0, 1),
            options=options,
        )
        dual = getattr(res_, "mip_dual_bound", None)
        if attempt == 0:
            status = _STATUS.get(int(res_.status), "infeasible" if res_.status == 2 else "failed")
            if dual is not None and np.isfinite(dual):
                bound = lmin + float(dual) / scale
        if res_.x is None:
            break
        taken = res_.x > 0.5
        choice = np.zeros(len(rows), dtype=np.int64)
        choice[g[taken]] = c[taken]
        if taken.sum() != len(rows) or np.bincount(g[taken], minlength=len(rows)).max() != 1:
            break
        used = np.array([float(r.cost[rows, choice].sum()) for r in res])
        over = [not r.fits(u) for r, u in zip(res, used, strict=True)]
        if any(over):
            caps = caps - np.where(over, used - np.array([r.limit for r in res]), 0.0) - 1e-9 * np.abs(caps)
            status = "feasible"
            continue
        if best is None or m.loss[rows, choice].sum() <= m.loss[rows, best].sum():
            best = choice
        break
    return (None if best is None else canonical_multi(m, res, best)), bound, status


def canonical_multi(m: AllocationProblem, res: list[Resource], choice: np.ndarray) -> np.ndarray:
    """Per group, among candidates with the same loss that use no more of any resource, the one
    using the least of the first resource, then the lowest index."""
    rows = np.arange(len(choice))
    same = m.feasible & (m.loss == m.loss[rows, choice][:, None])
    for r in res:
        same &= r.cost <= r.cost[rows, choice][:, None]
    key = np.where(same, res[0].cost if res else m.nbytes, np.inf)
    return np.argmin(key, axis=1).astype(np.int64)
