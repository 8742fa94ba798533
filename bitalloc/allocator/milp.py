"""Exact multiple-choice knapsack through HiGHS (scipy.optimize.milp).

One binary x[g, c] per feasible (tie group, candidate): each group takes exactly one candidate, the
chosen bytes stay within the budget, the summed loss is minimal. HiGHS reports its dual bound, so
the gap it returns is proven, not estimated.
"""

from __future__ import annotations

import time

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from bitalloc.allocator.problem import AllocationProblem

MIP_REL_GAP = 1e-9


def solve_milp(
    merged: AllocationProblem, max_bytes: int, *, time_limit: float | None = None
) -> tuple[np.ndarray, float, str]:
    """Candidate index per group of a tie-merged problem, a proven lower bound, and the status."""
    started = time.perf_counter()
    groups, cands = np.nonzero(merged.feasible)  # one variable per feasible pair, row-major
    n_groups = len(merged.units)
    loss = merged.loss[groups, cands]
    scale = float(loss.max()) if loss.size and loss.max() > 0 else 1.0
    nbytes = merged.nbytes[groups, cands].astype(np.float64)
    one_each = sparse.csr_array(
        (np.ones(len(groups)), (groups, np.arange(len(groups)))), shape=(n_groups, len(groups))
    )
    constraints = [
        LinearConstraint(one_each, lb=1, ub=1),
        LinearConstraint(nbytes[None, :], lb=-np.inf, ub=float(max_bytes)),
    ]
    options = {"mip_rel_gap": MIP_REL_GAP, "disp": False}
    if time_limit is not None:
        options["time_limit"] = float(time_limit)
    result = milp(
        loss / scale,
        constraints=constraints,
        integrality=np.ones(len(groups)),
        bounds=Bounds(0, 1),
        options=options,
    )
    if result.x is None:
        raise RuntimeError(f"HiGHS found no solution ({result.message}) after {time.perf_counter() - started:.1f} s")
    x = result.x.round()
    choice = np.full(n_groups, -1, dtype=np.int64)
    taken = x > 0.5
    choice[groups[taken]] = cands[taken]
    status = "optimal" if result.status == 0 else ("time_limit" if result.status == 1 else str(result.message))
    bound = getattr(result, "mip_dual_bound", None)
    objective = float(loss[taken].sum())
    bound = objective if bound is None or not np.isfinite(bound) else min(objective, float(bound) * scale)
    return choice, bound, status
