"""Frontiers: one row per budget, loss never rising with the budget, and a PNG plot."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bitalloc.allocator.frontier import COLUMNS, frontier, plot_frontier
from bitalloc.allocator.problem import AllocationProblem, Budget
from bitalloc.errors import InfeasibleBudget
from tests.allocator.test_problem import make, problems


@settings(max_examples=100, deadline=None)
@given(problems(), st.lists(st.floats(0, 1.2), min_size=1, max_size=8), st.sampled_from(["lagrange", "milp"]))
def test_loss_never_rises_with_the_budget_and_every_point_fits(problem, fractions, solver):
    lo, hi = problem.byte_range()
    budgets = [Budget(max_bytes=lo + int(f * (hi - lo))) for f in fractions]
    df = frontier(problem, budgets, solver=solver)
    assert list(df.columns) == list(COLUMNS) and len(df) == len(budgets)
    assert (df["budget_bytes"].to_numpy() == [b.max_bytes for b in budgets]).all()
    assert (df["bytes"] <= df["budget_bytes"]).all()
    assert (df["bound"] <= df["loss"]).all()
    ordered = df.sort_values("budget_bytes", kind="stable")
    assert (np.diff(ordered["loss"].to_numpy()) <= 0).all()


def test_a_lagrange_dip_is_carried_to_bigger_budgets():
    # At 5 bytes the fill finds 10.5; at 9 bytes the greedy gets stuck higher unless the frontier
    # reuses the 5-byte plan. Either way the loss must not rise.
    problem = make([[10.0, 0.0], [1.0, 0.5]], nbytes=[[0, 10], [0, 3]])
    df = frontier(problem, [Budget(max_bytes=b) for b in range(1, 16)])
    assert (np.diff(df["loss"].to_numpy()) <= 0).all()


def test_budgets_below_the_smallest_raise():
    problem = make([[3.0, 1.0], [2.0, 0.5]], nbytes=[[2, 4], [2, 4]])
    with pytest.raises(
        InfeasibleBudget, match=r"\(4 bytes\); feasible budgets run from .* to 4 bpw \(8 bytes\)"
    ):
        frontier(problem, [Budget(max_bytes=6), Budget(max_bytes=3)])


def test_plot_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    problem = make(rng.random((8, 5)), nbytes=rng.integers(1, 4, (8, 5)))  # 64 weights, <= 3 bpw to fit
    df = frontier(problem, [Budget(target_bpw=b) for b in (3.0, 3.5, 4.0, 6.0)])
    assert (df["budget_bpw"] == [3.0, 3.5, 4.0, 6.0]).all()
    path = tmp_path / "frontier.png"
    plot_frontier(df, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


CANCELLING = AllocationProblem(  # a fresh hypothesis database found it: base - cumsum gave 1e-3 + 3.8e-12
    units=("u0", "u1", "u2", "u3", "u4"),
    candidates=("c0", "c1", "c2", "c3", "c4"),
    loss=np.array([[1e5, 0, 0, 0, 0], [0] * 5, [0] * 5, [0] * 5, [1e-3, 0, 0, 0, 0]], dtype=float),
    nbytes=np.array([[1, 1, 1, 1, 1]] * 3 + [[1, 1, 1, 1, 2], [1, 1, 1, 1, 1]], dtype=np.int64),
    feasible=np.array(
        [[1, 0, 0, 0, 1], [1, 0, 0, 0, 0], [1, 0, 0, 0, 0], [1, 0, 0, 0, 1], [1, 0, 0, 0, 0]], dtype=bool
    ),
    numel=np.ones(5, dtype=np.int64),
    tie=np.array([0, 1, 2, 0, 3], dtype=np.int64),
)


@settings(max_examples=60, deadline=None)
@given(problems())
@example(CANCELLING)
def test_hull_frontier_points_are_exact_optima_at_their_bytes(problem):
    from bitalloc.allocator.frontier import hull_choice, hull_frontier
    from tests.allocator.test_problem import brute_force

    df = hull_frontier(problem)
    assert (np.diff(df["bytes"]) > 0).all() and (np.diff(df["loss"]) < 0).all()
    for row in df.itertuples():
        choice = hull_choice(problem, int(row.segments))
        rows = np.arange(len(problem.units))
        assert int(problem.nbytes[rows, choice].sum()) == row.bytes
        assert row.loss == pytest.approx(problem.loss[rows, choice].sum(), rel=1e-9, abs=1e-12)
        assert row.loss <= brute_force(problem, int(row.bytes)) * (1 + 1e-9) + 1e-12


def test_hull_frontier_drops_an_upgrade_too_small_to_change_the_loss():
    from bitalloc.allocator.frontier import hull_frontier

    # 1.0 + 1e-237 == 1.0 in floats: the 1-byte upgrade of u1 buys nothing measurable.
    problem = make([[1.0, 1.0], [1e-237, 0.0]], nbytes=[[1, 1], [1, 2]])
    df = hull_frontier(problem)
    assert list(df["bytes"]) == [2] and list(df["loss"]) == [1.0]
