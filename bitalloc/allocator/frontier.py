"""Error against size over many budgets at once, as a table and a plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from bitalloc.allocator.problem import AllocationProblem, Budget
from bitalloc.allocator.solve import solve_many


def frontier(problem: AllocationProblem, budgets: Sequence[Budget], *, solver: str = "lagrange") -> pd.DataFrame:
    """One row per budget: the budget, the plan's bytes, bpw, loss, proven bound, gap and solver."""
    rows = []
    for budget, s in zip(budgets, solve_many(problem, budgets, solver=solver), strict=True):
        limit = budget.to_bytes(problem)
        rows.append(
            {
                "budget_bytes": limit,
                "budget_bpw": problem.bpw_of_bytes(limit),
                "bytes": s.nbytes,
                "bpw": problem.bpw_of_bytes(s.nbytes),
                "loss": s.objective,
                "bound": s.bound,
                "gap": s.gap,
                "solver": s.solver,
                "status": s.status,
            }
        )
    return pd.DataFrame(rows)


def plot_frontier(df: pd.DataFrame, path: Path | str) -> None:
    """Draw predicted error against bits per weight (log error axis) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(df["bpw"], df["loss"], marker="o", label="plan")
    ax.plot(df["bpw"], df["bound"], linestyle="--", label="lower bound")
    ax.set_xlabel("bits per weight (quantized units)")
    ax.set_ylabel("predicted error  Σ tr(ΔW H ΔWᵀ)")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)
