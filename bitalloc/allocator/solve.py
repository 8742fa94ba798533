"""One entry point for every solver: ``solve(problem, budget, solver=...)``.

Solvers: "milp" (exact, HiGHS), "lagrange" (hull Lagrangian, LP-bounded; several limits by exact
coordinate ascent on the dual), "pulp" / "pulp:NAME" (the MILP through PuLP, CBC by default), "cvxpy"
(LP relaxation, rounded and repaired), "baq" (closed-form continuous bits, rounded and repaired), and
"auto" (milp up to AUTO_MILP_MAX_PAIRS feasible pairs of the tie-merged problem, else lagrange; the
solution's ``solver`` says "auto->milp" or "auto->lagrange"). Every solution carries a proven bound
and its gap, what it uses of each resource, and (general path) the limits' dual prices.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from bitalloc.allocator.lagrange import build_solution, solve_lagrange_many
from bitalloc.allocator.milp import solve_milp, solve_milp_resources
from bitalloc.allocator.multi import dual_value, fill, repair, solve_multi_merged
from bitalloc.allocator.problem import AllocationProblem, Budget, Solution
from bitalloc.allocator.resources import Resource, check_ranges, resources, usage_of
from bitalloc.allocator.rules import apply_rules
from bitalloc.errors import InfeasibleBudget, InvalidInput

SOLVERS = ("auto", "milp", "lagrange", "pulp", "cvxpy", "baq")
AUTO_MILP_MAX_PAIRS = 20_000  # feasible (group, candidate) pairs up to which "auto" runs the exact MILP


def check_solver(solver: str) -> None:
    """InvalidInput listing the known solver names unless ``solver`` is one of them."""
    if solver not in SOLVERS and not solver.startswith("pulp:"):
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


def _fast(budget: Budget, solver: str) -> bool:
    """Whether the one-byte-budget code path (shared hull across budgets) applies."""
    only_bytes = budget.max_latency is None and budget.max_active_bytes is None
    return only_bytes and not budget.has_rules and solver in ("auto", "milp", "lagrange")


def _contradiction(res: list[Resource]) -> InfeasibleBudget:
    names = ", ".join(f"{r.name} <= {r.limit:.6g}" for r in res)
    return InfeasibleBudget(
        f"no plan meets all of: {names} at once (each alone is feasible, together they contradict); "
        "loosen one of them"
    )


def _general(
    problem: AllocationProblem, budget: Budget, solver: str, time_limit: float | None, merged
) -> Solution:
    """Any solver, any mix of limits and rules, for one budget."""
    t0 = time.perf_counter()
    p = apply_rules(problem, budget)
    m = merged if p is problem else p.merged()
    res = resources(p, m, budget)
    if budget.max_bytes is not None or budget.target_bpw is not None:
        check_budget(p, budget, merged=m)
    check_ranges(p, m, res)
    ran = solver
    if solver == "auto":
        ran = "milp" if int(m.feasible.sum()) <= AUTO_MILP_MAX_PAIRS else "lagrange"
    start, bound, lam = solve_multi_merged(m, res)
    small = int(m.feasible.sum()) <= AUTO_MILP_MAX_PAIRS
    if start is None and (ran == "milp" or small):
        start, _, _ = solve_milp_resources(m, res, None, time_limit=time_limit)
    if start is None:
        raise _contradiction(res)
    choice, status = start, None
    if ran == "milp":
        found, dual, status = solve_milp_resources(m, res, start, time_limit=time_limit, lam=lam, bound=bound)
        choice = start if found is None else found
        if dual is not None:
            bound = max(bound, dual)
    elif ran.startswith("pulp"):
        from bitalloc.allocator.pulp_backend import solve_pulp_merged

        backend = ran.split(":", 1)[1] if ":" in ran else "PULP_CBC_CMD"
        found, status = solve_pulp_merged(m, res, start, backend=backend, time_limit=time_limit)
        choice = start if found is None else found
    elif ran == "cvxpy":
        from bitalloc.allocator.convex import relax_cvxpy

        rounded, prices = relax_cvxpy(m, res, start)
        bound = max(bound, dual_value(m, res, prices))
        fixed = repair(m, res, rounded)
        choice = fill(m, res, start if fixed is None else fixed)
    elif ran == "baq":
        from bitalloc.allocator.baq import solve_baq_merged

        fixed = repair(m, res, solve_baq_merged(m, res))
        choice = fill(m, res, start if fixed is None else fixed)
    sol = build_solution(p, choice, bound, status=status, solver=ran, seconds=0.0)
    return replace(
        sol,
        solver=f"auto->{ran}" if solver == "auto" else ran,
        seconds=time.perf_counter() - t0,
        usage=usage_of(p, sol.choice),
        prices={r.name: float(x) for r, x in zip(res, lam, strict=True)},
    )


def _run(
    problem: AllocationProblem, budgets: Sequence[Budget], solver: str, time_limit: float | None
) -> list[Solution]:
    """Validate, check every budget, run the solver; tie groups are merged only once."""
    check_solver(solver)
    if not problem.units:
        raise InvalidInput("the problem has no units to allocate")
    merged = problem.merged()
    out: list[Solution | None] = [None] * len(budgets)
    fast = [i for i, b in enumerate(budgets) if _fast(b, solver)]
    limits = [check_budget(problem, budgets[i], merged=merged) for i in fast]
    ran = solver
    if solver == "auto":
        ran = "milp" if int(merged.feasible.sum()) <= AUTO_MILP_MAX_PAIRS else "lagrange"
    if fast and ran == "milp":
        found = [solve_milp(problem, n, time_limit=time_limit, merged=merged) for n in limits]
    elif fast:
        found = solve_lagrange_many(problem, limits, merged=merged)
    for i, s in zip(fast, found if fast else [], strict=True):
        s = replace(s, usage=usage_of(problem, s.choice))
        out[i] = replace(s, solver=f"auto->{ran}") if solver == "auto" else s
    for i, b in enumerate(budgets):
        if out[i] is None:
            out[i] = _general(problem, b, solver, time_limit, merged)
    return out  # type: ignore[return-value]


def solve(
    problem: AllocationProblem, budget: Budget, *, solver: str = "auto", time_limit: float | None = None
) -> Solution:
    """The least-loss candidate per unit within every limit of ``budget``; tied units share a candidate.

    ``solver``: see the module docstring. ``time_limit`` (seconds) bounds the MILP solvers.
    """
    return _run(problem, [budget], solver, time_limit)[0]


def solve_many(
    problem: AllocationProblem,
    budgets: Sequence[Budget],
    *,
    solver: str = "auto",
    time_limit: float | None = None,
) -> list[Solution]:
    """One solution per budget, in the given order, each as ``solve`` would give it (the Lagrangian
    solver shares one sorted hull across all byte-only budgets)."""
    return _run(problem, budgets, solver, time_limit)
