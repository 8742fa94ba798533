"""The same MILP through PuLP, for users who bring their own solver (CBC by default).

``solver="pulp"`` runs CBC (bundled with PuLP); ``solver="pulp:NAME"`` runs any solver PuLP drives
by its name in ``pulp.listSolvers()`` (e.g. ``pulp:HiGHS``, ``pulp:GUROBI_CMD``). PuLP reports no
dual bound, so the plan's bound is the Lagrangian (LP) bound and its status the solver's own.
"""

from __future__ import annotations

import numpy as np

from bitalloc.allocator.milp import canonical_multi, kept_pairs
from bitalloc.allocator.problem import AllocationProblem
from bitalloc.allocator.resources import Resource, all_fit
from bitalloc.errors import InvalidInput


def solve_pulp_merged(
    m: AllocationProblem,
    res: list[Resource],
    start: np.ndarray | None,
    *,
    backend: str = "PULP_CBC_CMD",
    time_limit: float | None = None,
) -> tuple[np.ndarray | None, str]:
    """Per-group choice (None when the solver found none) and the solver's status word."""
    import pulp

    if backend not in pulp.listSolvers(onlyAvailable=True):
        raise InvalidInput(
            f"PuLP solver {backend!r} is not available here; available: "
            f"{', '.join(pulp.listSolvers(onlyAvailable=True))}"
        )
    rows = np.arange(len(m.units))
    g, c, excess, extra, caps = kept_pairs(m, res, start)
    upper = float(excess.max(initial=0.0))
    scale = 1e6 / upper if upper > 0 else 1.0
    model = pulp.LpProblem("bitalloc", pulp.LpMinimize)
    x = [pulp.LpVariable(f"x{i}", cat="Binary") for i in range(len(g))]
    model += pulp.lpSum(float(excess[i] * scale) * x[i] for i in range(len(g)))
    order = np.argsort(g, kind="stable")
    starts = np.flatnonzero(np.diff(g[order], prepend=-1))
    for part in np.split(order, starts[1:]):
        model += pulp.lpSum(x[i] for i in part) == 1
    for k in range(len(res)):
        norm = max(abs(caps[k]), 1.0)
        model += pulp.lpSum(float(extra[k, i] / norm) * x[i] for i in range(len(g)) if extra[k, i]) <= (
            caps[k] / norm
        )
    options = {"msg": False, "timeLimit": time_limit}
    if backend == "PULP_CBC_CMD":
        options |= {"gapRel": 0.0, "threads": 1}
    model.solve(pulp.getSolver(backend, **options))
    status = pulp.LpStatus[model.status].lower()
    values = np.array([v.value() or 0.0 for v in x])
    taken = values > 0.5
    choice = np.zeros(len(rows), dtype=np.int64)
    choice[g[taken]] = c[taken]
    if taken.sum() != len(rows) or np.bincount(g[taken], minlength=len(rows)).max() != 1:
        return None, status
    if not all_fit(res, choice):
        return None, status
    return canonical_multi(m, res, choice), status
