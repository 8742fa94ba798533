"""One entry point for every solver: ``solve(problem, budget, solver=...)``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from bitalloc.allocator.lagrange import solve_lagrange_many
from bitalloc.allocator.milp import solve_milp
from bitalloc.allocator.problem import AllocationProblem, Budget, Solution
from bitalloc.errors import InfeasibleBudget, InvalidInput

SOLVERS = ("auto", "milp", "lagrange")
AUTO_MILP_MAX_PAIRS = 20_000  # feasible (group, candidate) pairs up to which "auto" runs the exact MILP


def check_solver(solver: str) -> None:
    """InvalidInput listing the known solver names unless ``solver`` is one of them."""
    if solver not in SOLVERS:
        raise InvalidInput(f"unknown solver {solver!r}; known solvers: {', '.join(SOLVERS)}")


def check_budget(
    problem: AllocationProblem, budget: Budget, *, merged: AllocationProblem | None = None
) -> int:
    """The budget in bytes; InfeasibleBudget naming the feasible range when nothing fits in it.

    ``merged`` is ``problem.merged()`` when the caller already has it.
    """
    max_bytes = budget.to_bytes(problem)
    m = problem.merged() if merged is None else merged
    lo = int(np.where(m.feasible, m.nbytes, np.iinfo(np.int64).max).min(axis=1).sum())
    if max_bytes >= lo:
        return max_bytes
    hi = int(np.where(m.feasible, m.nbytes, -1).max(axis=1).sum())

    def both(n: int) -> str:
        return f"{problem.bpw_of_bytes(n):.4g} bpw ({n} bytes)"

    given = (
        budget.describe() if budget.target_bpw is not None else f"{problem.bpw_of_bytes(max_bytes):.4g} bpw"
    )
    raise InfeasibleBudget(
        f"budget {given} ({max_bytes} bytes) is below the smallest feasible budget: {both(lo)}; "
        f"feasible budgets run from {both(lo)} to {both(hi)}"
    )


def _run(
    problem: AllocationProblem, budgets: Sequence[Budget], solver: str, time_limit: float | None
) -> list[Solution]:
    """Validate, check every budget, run the solver; tie groups are merged only once."""
    check_solver(solver)
    if not problem.units:
        raise InvalidInput("the problem has no units to allocate")
    merged = problem.merged()
    limits = [check_budget(problem, b, merged=merged) for b in budgets]
    ran = solver
    if solver == "auto":
        ran = "milp" if int(merged.feasible.sum()) <= AUTO_MILP_MAX_PAIRS else "lagrange"
    if ran == "milp":
        found = [solve_milp(problem, n, time_limit=time_limit, merged=merged) for n in limits]
    else:
        found = solve_lagrange_many(problem, limits, merged=merged)
    return [replace(s, solver=f"auto->{ran}") if solver == "auto" else s for s in found]


def solve(
    problem: AllocationProblem, budget: Budget, *, solver: str = "auto", time_limit: float | None = None
) -> Solution:
    """The least-loss candidate per unit within ``budget``; tied units share a candidate.

    ``solver``: "milp" (exact, HiGHS), "lagrange" (fast, LP-bounded) or "auto" (milp up to
    AUTO_MILP_MAX_PAIRS feasible pairs of the tie-merged problem, else lagrange). ``time_limit``
    (seconds) bounds the MILP; the Lagrangian solver ignores it.
    """
    return _run(problem, [budget], solver, time_limit)[0]


def solve_many(
    problem: AllocationProblem, budgets: Sequence[Budget], *, solver: str = "auto"
) -> list[Solution]:
    """One solution per budget, in the given order, each as ``solve`` would give it (the Lagrangian
    solver shares one sorted hull across all budgets)."""
    return _run(problem, budgets, solver, None)
