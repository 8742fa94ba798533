"""The limits of a Budget as resource rows over the tie-merged problem: cost (groups, candidates) <= limit."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bitalloc.allocator.problem import AllocationProblem, Budget
from bitalloc.errors import InfeasibleBudget, InvalidInput

FLOAT_TOL = 1e-9  # relative slack allowed on float resources (latency, active bytes); bytes are exact


@dataclass(frozen=True, eq=False)
class Resource:
    """One limit: ``cost[g, c]`` is what group g uses with candidate c (0 where infeasible)."""

    name: str  # "bytes", "latency" or "active_bytes"
    cost: np.ndarray
    limit: float

    def fits(self, used: float) -> bool:
        """Whether ``used`` is within the limit (exact for bytes, FLOAT_TOL relative otherwise)."""
        if self.name == "bytes":
            return used <= self.limit
        return used <= self.limit * (1 + FLOAT_TOL) + 1e-300


def resources(problem: AllocationProblem, merged: AllocationProblem, budget: Budget) -> list[Resource]:
    """The budget's limits on ``merged`` (= ``problem.merged()``); bytes first when limited."""
    out = []
    if budget.max_bytes is not None or budget.target_bpw is not None:
        out.append(Resource("bytes", merged.nbytes, budget.to_bytes(problem)))
    if budget.max_latency is not None:
        if problem.latency is None:
            raise InvalidInput(
                "max_latency needs a latency table: build the problem with latency= "
                "(e.g. bitalloc.allocator.latency.analytic_latency)"
            )
        out.append(Resource("latency", problem.group_sum(problem.latency), float(budget.max_latency)))
    if budget.max_active_bytes is not None:
        if problem.active is None:
            raise InvalidInput("max_active_bytes needs routing frequencies: build the problem with active=")
        cost = problem.group_sum(problem.active[:, None] * problem.nbytes)
        out.append(Resource("active_bytes", cost, float(budget.max_active_bytes)))
    return out


def usage_of(
    problem: AllocationProblem, choice: np.ndarray, budget: Budget | None = None
) -> dict[str, float]:
    """What an (unmerged) per-unit choice uses of every resource the problem can measure."""
    rows = np.arange(len(choice))
    out: dict[str, float] = {"bytes": int(problem.nbytes[rows, choice].sum())}
    if problem.latency is not None:
        out["latency"] = float(problem.latency[rows, choice].sum())
    if problem.active is not None:
        out["active_bytes"] = float((problem.active * problem.nbytes[rows, choice]).sum())
    return out


def check_ranges(problem: AllocationProblem, merged: AllocationProblem, res: list[Resource]) -> None:
    """InfeasibleBudget naming the constraint when a limit is below the least any plan can use."""
    for r in res:
        lo = float(np.where(merged.feasible, r.cost, np.inf).min(axis=1).sum())
        if r.fits(lo):
            continue
        hi = float(np.where(merged.feasible, r.cost, -np.inf).max(axis=1).sum())
        if r.name == "bytes":
            continue  # solve.check_budget words the byte case (bpw and bytes)
        raise InfeasibleBudget(
            f"{r.name} budget {r.limit:.6g} is below the smallest feasible {r.name}: {lo:.6g}; "
            f"feasible {r.name} runs from {lo:.6g} to {hi:.6g}"
        )


def choose(cost: np.ndarray, feasible: np.ndarray) -> np.ndarray:
    """Per row, the feasible column of least cost (first index on ties)."""
    return np.argmin(np.where(feasible, cost, np.inf), axis=1).astype(np.int64)


def totals(res: list[Resource], choice: np.ndarray) -> np.ndarray:
    """(K,) use of each resource by a per-group choice."""
    rows = np.arange(len(choice))
    return np.array([float(r.cost[rows, choice].sum()) for r in res])


def all_fit(res: list[Resource], choice: np.ndarray) -> bool:
    """Whether a per-group choice meets every limit."""
    return all(r.fits(u) for r, u in zip(res, totals(res, choice), strict=True))
