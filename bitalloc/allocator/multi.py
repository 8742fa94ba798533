"""Several limits at once: Lagrangian dual by exact coordinate ascent, then a primal repair and fill.

Dual: L(lam) = sum_g min_c (loss[g, c] + sum_k lam_k cost_k[g, c]) - sum_k lam_k limit_k is a lower
bound on the optimum for every lam >= 0 (and at its maximum equals the LP bound). Each coordinate step
maximizes L over one lam_k exactly: with the other prices folded into the loss it is a one-budget
problem, whose optimal price is the slope of the hull segment that crosses the limit.
Primal: the choice minimizing the priced loss, repaired (cheapest loss per unit of fixed overshoot)
until every limit holds, then filled (best loss saved per share of the budgets' slack).
"""

from __future__ import annotations

import numpy as np

from bitalloc.allocator.lagrange import build_hull_arrays
from bitalloc.allocator.problem import AllocationProblem
from bitalloc.allocator.resources import Resource, choose, totals

_SWEEPS = 30


def dual_value(m: AllocationProblem, res: list[Resource], lam: np.ndarray) -> float:
    """The Lagrangian lower bound L(lam) (lam >= 0, one price per resource)."""
    priced = m.loss + sum(p * r.cost for p, r in zip(lam, res, strict=True))
    best = np.where(m.feasible, priced, np.inf).min(axis=1)
    return float(best.sum() - sum(p * r.limit for p, r in zip(lam, res, strict=True)))


def _price(cost: np.ndarray, loss: np.ndarray, feasible: np.ndarray, limit: float) -> float:
    """The optimal price of one limit on (cost, loss): the slope of the hull segment crossing it."""
    hull = build_hull_arrays(cost, loss, feasible)
    if len(hull.cum) == 0 or hull.cum[-1] <= limit:
        return 0.0
    k = int(np.searchsorted(hull.cum, limit, side="right"))
    return float(hull.dloss[k] / hull.dbytes[k])


def solve_dual(m: AllocationProblem, res: list[Resource]) -> tuple[np.ndarray, float]:
    """Prices (K,) and the best lower bound found by cyclic exact coordinate ascent."""
    lam = np.zeros(len(res))
    best = dual_value(m, res, lam)
    best_lam = lam.copy()
    for _ in range(_SWEEPS if len(res) > 1 else 1):
        old = lam.copy()
        for k, r in enumerate(res):
            folded = m.loss + sum(lam[j] * res[j].cost for j in range(len(res)) if j != k)
            lam[k] = _price(r.cost, folded, m.feasible, r.limit)
        value = dual_value(m, res, lam)
        if value > best:
            best, best_lam = value, lam.copy()
        if np.allclose(lam, old, rtol=1e-12, atol=0):
            break
    return best_lam, best


def priced_choice(m: AllocationProblem, res: list[Resource], lam: np.ndarray) -> np.ndarray:
    """Per group, the candidate of least priced loss; ties go to the least total share of the limits."""
    priced = m.loss + sum(p * r.cost for p, r in zip(lam, res, strict=True))
    share = sum(r.cost / max(r.limit, 1e-300) for r in res)
    low = np.where(m.feasible, priced, np.inf).min(axis=1, keepdims=True)
    near = m.feasible & (priced <= low + 1e-12 * np.abs(low))
    return choose(share, near)


def _moves(m: AllocationProblem, res: list[Resource], choice: np.ndarray):
    """Every (group, candidate) move: its loss change and (K, moves) resource changes."""
    rows = np.arange(len(choice))
    g, c = np.nonzero(m.feasible & (np.arange(m.loss.shape[1])[None, :] != choice[:, None]))
    dloss = m.loss[g, c] - m.loss[g, choice[g]]
    delta = np.array([r.cost[g, c] - r.cost[g, choice[g]] for r in res], dtype=np.float64)
    del rows
    return g, c, dloss, delta.reshape(len(res), len(g))


def _best_per_group(g: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Indices of the highest-score move of each group (lowest index on ties)."""
    order = np.lexsort((-score, g))
    first = np.ones(len(order), dtype=bool)
    first[1:] = g[order][1:] != g[order][:-1]
    return order[first]


def repair(m: AllocationProblem, res: list[Resource], choice: np.ndarray) -> np.ndarray | None:
    """Move groups to cheaper candidates until every limit holds (None if stuck)."""
    choice = choice.copy()
    limits = np.array([r.limit for r in res])
    for _ in range(10_000):
        used = totals(res, choice)
        over = np.array([not r.fits(u) for r, u in zip(res, used, strict=True)])
        if not over.any():
            return choice
        slack = limits - used
        g, c, dloss, delta = _moves(m, res, choice)
        norm = delta / np.maximum(limits, 1e-300)[:, None]
        gain = -norm[over].sum(axis=0)  # share of the overshoot a move removes
        ok = (gain > 0) & (delta[~over] <= slack[~over][:, None]).all(axis=0)
        if not ok.any():
            return None
        g, c, dloss, delta, gain = g[ok], c[ok], dloss[ok], delta[:, ok], gain[ok]
        score = -dloss / gain
        pick = _best_per_group(g, score)
        pick = pick[np.lexsort((pick, -score[pick]))]
        cum = np.cumsum(delta[:, pick], axis=1)
        fine = (cum[~over] <= slack[~over][:, None]).all(axis=0)
        stop = len(pick) if fine.all() else max(int(np.argmin(fine)), 1)
        cleared = (cum[over] <= slack[over][:, None]).all(axis=0)[:stop]
        if cleared.any():
            stop = int(np.argmax(cleared)) + 1
        choice[g[pick[:stop]]] = c[pick[:stop]]
    return None


def fill(m: AllocationProblem, res: list[Resource], choice: np.ndarray) -> np.ndarray:
    """Spend leftover room on the moves that save the most loss per share of the limits' slack."""
    choice = choice.copy()
    limits = np.array([r.limit for r in res])
    scale = np.maximum(limits, 1e-300)[:, None]
    for _ in range(10_000):
        slack = limits - totals(res, choice)
        g, c, dloss, delta = _moves(m, res, choice)
        ok = (dloss < 0) & (delta <= slack[:, None]).all(axis=0)
        if not ok.any():
            return choice
        g, c, dloss, delta = g[ok], c[ok], dloss[ok], delta[:, ok]
        spend = np.maximum(delta / scale, 0).sum(axis=0)
        score = np.where(spend > 0, -dloss / np.maximum(spend, 1e-300), np.inf)
        pick = _best_per_group(g, score)
        pick = pick[np.lexsort((pick, -score[pick]))]
        cum = np.cumsum(np.maximum(delta[:, pick], 0), axis=1)
        fine = (cum <= slack[:, None]).all(axis=0)
        stop = len(pick) if fine.all() else max(int(np.argmin(fine)), 1)
        choice[g[pick[:stop]]] = c[pick[:stop]]
    return choice


def solve_multi_merged(
    m: AllocationProblem, res: list[Resource], start: np.ndarray | None = None
) -> tuple[np.ndarray | None, float, np.ndarray]:
    """A feasible per-group choice (None if the repair got stuck), the dual bound and the prices."""
    lam, bound = solve_dual(m, res)
    choice = priced_choice(m, res, lam) if start is None else start
    fixed = repair(m, res, choice)
    if fixed is None:
        fixed = repair(m, res, choose(sum(r.cost / max(r.limit, 1e-300) for r in res), m.feasible))
    if fixed is None:
        return None, bound, lam
    return fill(m, res, fixed), bound, lam
