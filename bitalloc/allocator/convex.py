"""The convex (LP) relaxation through cvxpy, rounded to the palette and repaired.

x[g, c] in [0, 1] with one unit of x per group and every limit as a linear row; the relaxation's
duals price the limits, and the Lagrangian bound at those prices (computed exactly in numpy, so
solver tolerances cannot make it invalid) is the plan's bound. Rounding takes each group's largest
x; the repair and fill of ``multi.py`` then make it meet every limit.
"""

from __future__ import annotations

import numpy as np

from bitalloc.allocator.milp import kept_pairs
from bitalloc.allocator.problem import AllocationProblem
from bitalloc.allocator.resources import Resource


def relax_cvxpy(
    m: AllocationProblem, res: list[Resource], start: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Rounded per-group choice and the limits' prices (K,) in loss per unit of each resource."""
    import cvxpy as cp
    from scipy import sparse

    rows = np.arange(len(m.units))
    g, c, excess, extra, caps = kept_pairs(m, res, start)
    upper = float(excess.max(initial=0.0))
    scale = 1.0 / upper if upper > 0 else 1.0
    one_each = sparse.csr_array((np.ones(len(g)), (g, np.arange(len(g)))), shape=(len(rows), len(g)))
    norm = np.maximum(np.abs(caps), 1.0)
    x = cp.Variable(len(g), nonneg=True)
    limits = (extra / norm[:, None]) @ x <= caps / norm
    problem = cp.Problem(cp.Minimize((excess * scale) @ x), [one_each @ x == 1, x <= 1, limits])
    solver = "HIGHS" if "HIGHS" in cp.installed_solvers() else "CLARABEL"
    problem.solve(solver=solver)
    value = np.zeros(m.loss.shape)
    if x.value is not None:
        value[g, c] = x.value
    value = np.where(m.feasible, value, -1.0)
    choice = np.argmax(value, axis=1).astype(np.int64)
    duals = np.zeros(len(res)) if limits.dual_value is None else np.maximum(np.asarray(limits.dual_value), 0)
    return choice, duals / norm / scale
