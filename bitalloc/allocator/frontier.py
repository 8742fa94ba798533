"""Error against size over many budgets at once, as a table and a plot."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from bitalloc.allocator.problem import AllocationProblem, Budget, Solution
from bitalloc.allocator.solve import solve_many

COLUMNS = ("budget_bytes", "budget_bpw", "bytes", "bpw", "loss", "bound", "gap", "solver", "status")


def frontier(
    problem: AllocationProblem, budgets: Sequence[Budget], *, solver: str = "lagrange"
) -> pd.DataFrame:
    """One row per budget (in the given order): the budget, the plan's size, loss, proven bound and gap.

    Raises InfeasibleBudget, naming the feasible range, when a budget is below the smallest one.
    """
    limits = [b.to_bytes(problem) for b in budgets]
    solutions = monotone(solve_many(problem, budgets, solver=solver), limits)
    rows = []
    for budget, limit, s in zip(budgets, limits, solutions, strict=True):
        asked = budget.target_bpw if budget.target_bpw is not None else problem.bpw_of_bytes(limit)
        rows.append(
            {
                "budget_bytes": limit,
                "budget_bpw": asked,
                "bytes": s.nbytes,
                "bpw": problem.bpw_of_bytes(s.nbytes),
                "loss": s.objective,
                "bound": s.bound,
                "gap": s.gap,
                "solver": s.solver,
                "status": s.status,
            }
        )
    return pd.DataFrame(rows, columns=list(COLUMNS))


def monotone(solutions: Sequence[Solution], limits: Sequence[int]) -> list[Solution]:
    """Make loss non-increasing in the budget: when a smaller budget's solution beats a bigger one's,
    the bigger budget reuses it (it fits), keeping its own bound."""
    out = list(solutions)
    best: Solution | None = None
    for i in sorted(range(len(out)), key=lambda i: limits[i]):
        s = out[i]
        if best is not None and best.objective < s.objective:
            bound = min(s.bound, best.objective)
            gap = (best.objective - bound) / max(best.objective, 1e-300)
            status = "optimal" if gap <= 1e-12 else ("feasible" if s.status == "optimal" else s.status)
            out[i] = replace(best, bound=bound, gap=gap, status=status, solver=s.solver, seconds=s.seconds)
        else:
            best = s
    return out


def plot_frontier(df: pd.DataFrame, path: Path | str) -> None:
    """Draw predicted loss (and its lower bound) against bits per weight to a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = df.sort_values("budget_bytes")
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        ax.plot(df["bpw"], df["loss"], marker="o", label="plan")
        ax.plot(df["budget_bpw"], df["bound"], linestyle="--", label="lower bound (at the budget)")
        ax.set_xlabel("bits per weight (quantized units)")
        ax.set_ylabel("predicted loss")
        if (df["loss"] > 0).all() and (df["bound"] > 0).all():
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=120)
    finally:
        plt.close(fig)


def hull_frontier(problem: AllocationProblem, *, max_points: int | None = None) -> pd.DataFrame:
    """The whole certified frontier of byte budgets in one computation: every breakpoint of the
    sorted lower hulls (at most ``max_points``, evenly spaced, ends kept).

    At a breakpoint the LP relaxation's optimum is integral, so each row's plan is exactly optimal for
    its own byte count (bound == loss, gap 0). Columns: bytes, bpw, loss, bound, gap, segments (how
    many hull upgrades the plan takes; ``hull_choice`` rebuilds the plan from it).
    """
    from bitalloc.allocator.lagrange import build_hull

    m = problem.merged()
    hull = build_hull(m)
    # loss after k upgrades = the final plan's loss + the upgrades not yet taken: sums of nonnegative terms,
    # accurate relative to the result (base - cumsum loses 1e-3 under 1e5 to cancellation)
    final_level = np.bincount(hull.group, minlength=len(hull.size))
    final_loss = math.fsum(m.loss[np.arange(len(m.units)), hull.points[np.arange(len(m.units)), final_level]])
    ks = np.arange(len(hull.cum) + 1)
    if max_points is not None and len(ks) > max_points:
        ks = np.unique(np.linspace(0, len(hull.cum), max_points).round().astype(np.int64))
    nbytes = np.concatenate([[hull.base], hull.cum])[ks]
    remaining = np.concatenate([np.cumsum(hull.dloss[::-1])[::-1], [0.0]])  # (segments + 1,)
    loss = final_loss + remaining[ks]
    # An upgrade too small to change the float sum buys bytes for nothing: drop the dominated point.
    keep = np.concatenate([[True], np.diff(loss) < 0])
    ks, nbytes, loss = ks[keep], nbytes[keep], loss[keep]
    return pd.DataFrame(
        {
            "bytes": nbytes.astype(np.int64),
            "bpw": 8.0 * nbytes / problem.total_numel,
            "loss": loss,
            "bound": loss,
            "gap": 0.0,
            "segments": ks,
        }
    )


def hull_choice(problem: AllocationProblem, segments: int) -> np.ndarray:
    """(units,) choice of the frontier plan that takes the first ``segments`` hull upgrades."""
    from bitalloc.allocator.lagrange import build_hull

    m = problem.merged()
    hull = build_hull(m)
    level = np.bincount(hull.group[:segments], minlength=len(hull.size))
    return hull.points[np.arange(len(level)), level][problem.group_index()].astype(np.int64)
