"""One entry point for every solver: ``solve(problem, budget, solver=...)``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from bitalloc.allocator.lagrange import hull_segments, solve_lagrange
from bitalloc.allocator.milp import solve_milp
from bitalloc.allocator.problem import AllocationProblem, Budget, Solution
from bitalloc.errors import InfeasibleBudget, InvalidInput

SOLVERS = ("auto", "milp", "lagrange")
AUTO_MILP_MAX_PAIRS = 20_000  # feasible (group, candidate) pairs up to which auto picks the exact MILP


def check_budget(problem: AllocationProblem, max_bytes: int, budget: Budget) -> None:
    """Raise InfeasibleBudget naming the feasible range when ``max_bytes`` is below the smallest total."""
    lo, hi = problem.byte_range()
    if max_bytes < lo:
        bpw = problem.bpw_of_bytes
        raise InfeasibleBudget(
            f"budget {budget.describe()} ({max_bytes} bytes) is below the smallest feasible budget "
            f"{bpw(lo):.4f} bpw ({lo} bytes); feasible budgets run from {bpw(lo):.4f} bpw ({lo} bytes) "
            f"to {bpw(hi):.4f} bpw ({hi} bytes)"
        )


def relative_gap(problem: AllocationProblem, objective: float, bound: float) -> float:
    """(objective - bound) / objective, with the denominator floored at 1e-12 of the loss scale.

    The floor keeps a plan whose loss is ~0 (say 1e-185 against a bound of 0) from reporting a gap
    of 100 %; the scale is the sum over units of their largest feasible loss.
    """
    scale = float(np.where(problem.feasible, problem.loss, 0.0).max(axis=1).sum())
    return (objective - bound) / max(objective, 1e-12 * scale, 1e-300)


def _expand(problem: AllocationProblem, group_choice: np.ndarray) -> np.ndarray:
    """Per-unit candidate indices from per-tie-group ones."""
    choice = np.empty(len(problem.units), dtype=np.int64)
    for g, members in enumerate(problem.tie_groups()):
        choice[members] = group_choice[g]
    return choice


def _solution(problem, group_choice, bound, status, name, started) -> Solution:
    choice = _expand(problem, group_choice)
    rows = np.arange(len(choice))
    objective = float(problem.loss[rows, choice].sum())
    bound = min(bound, objective)
    return Solution(
        choice=choice,
        objective=objective,
        nbytes=int(problem.nbytes[rows, choice].sum()),
        bound=bound,
        gap=relative_gap(problem, objective, bound),
        status=status,
        solver=name,
        seconds=time.perf_counter() - started,
    )


def pick_solver(problem: AllocationProblem, solver: str) -> str:
    """Resolve 'auto' by size; validate the name."""
    if solver not in SOLVERS:
        raise InvalidInput(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    if solver != "auto":
        return solver
    return "milp" if int(problem.feasible.sum()) <= AUTO_MILP_MAX_PAIRS else "lagrange"


def solve(
    problem: AllocationProblem, budget: Budget, *, solver: str = "auto", time_limit: float | None = None
) -> Solution:
    """The best candidate per unit under ``budget``; tied units share a candidate."""
    started = time.perf_counter()
    chosen = pick_solver(problem, solver)
    name = f"auto->{chosen}" if solver == "auto" else chosen
    max_bytes = budget.to_bytes(problem)
    check_budget(problem, max_bytes, budget)
    merged = problem.merged()
    if chosen == "milp":
        group_choice, bound, status = solve_milp(merged, max_bytes, time_limit=time_limit)
    else:
        group_choice, bound = solve_lagrange(merged, max_bytes)
        status = "feasible"
    solution = _solution(problem, group_choice, bound, status, name, started)
    if chosen == "lagrange" and solution.gap == 0.0:
        solution = replace(solution, status="optimal")
    return solution


def solve_many(
    problem: AllocationProblem, budgets: Sequence[Budget], *, solver: str = "auto"
) -> list[Solution]:
    """One solution per budget; the Lagrangian solver shares one sorted hull across all of them."""
    chosen = pick_solver(problem, solver)
    for budget in budgets:
        check_budget(problem, budget.to_bytes(problem), budget)
    if chosen == "milp":
        return [solve(problem, b, solver=solver) for b in budgets]
    merged = problem.merged()
    segments = hull_segments(merged)
    name = f"auto->{chosen}" if solver == "auto" else chosen
    solutions = []
    for budget in budgets:
        started = time.perf_counter()
        group_choice, bound = solve_lagrange(merged, budget.to_bytes(problem), segments)
        s = _solution(problem, group_choice, bound, "feasible", name, started)
        solutions.append(replace(s, status="optimal") if s.gap == 0.0 else s)
    return solutions
