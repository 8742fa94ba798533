"""The Lagrangian / LP solver: a valid answer, and a bound that is exactly the LP relaxation's optimum."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from bitalloc.allocator.lagrange import build_hull, solve_lagrange, solve_lagrange_many
from bitalloc.allocator.milp import solve_milp
from bitalloc.errors import InfeasibleBudget
from tests.allocator.test_problem import brute_force, check_assignment, make, problems


def lp_relaxation(problem, max_bytes: int) -> float:
    """The LP relaxation of the merged multiple-choice knapsack, solved by HiGHS."""
    m = problem.merged()
    g, c = np.nonzero(m.feasible)
    one_each = np.zeros((len(m.units), len(g)))
    one_each[g, np.arange(len(g))] = 1
    res = linprog(
        m.loss[g, c],
        A_ub=m.nbytes[g, c][None, :].astype(float),
        b_ub=[max_bytes],
        A_eq=one_each,
        b_eq=np.ones(len(m.units)),
        bounds=(0, 1),
        method="highs",
    )
    assert res.status == 0
    return float(res.fun)


@settings(max_examples=200, deadline=None)
@given(problems(), st.floats(-0.1, 1.2))
def test_lagrange_is_valid_and_bounded(problem, fraction):
    lo, hi = problem.byte_range()
    max_bytes = max(lo, lo + int(fraction * (hi - lo)))
    solution = solve_lagrange(problem, max_bytes)
    check_assignment(problem, solution, max_bytes)
    best = brute_force(problem, max_bytes)
    assert solution.objective >= best * (1 - 1e-12)
    assert solution.bound <= best * (1 + 1e-9) + 1e-12
    assert solution.bound <= solution.objective
    assert solution.gap == (solution.objective - solution.bound) / max(solution.objective, 1e-300)
    assert (solution.status == "optimal") == (solution.gap <= 1e-12)
    # The bound is the LP optimum, not merely some lower bound.
    lp = lp_relaxation(problem, max_bytes)
    assert abs(solution.bound - min(lp, solution.objective)) <= 1e-7 * max(abs(lp), 1e-9)


@settings(max_examples=100, deadline=None)
@given(problems(), st.lists(st.floats(0, 1.2), min_size=1, max_size=5))
def test_many_budgets_at_once_match_one_at_a_time(problem, fractions):
    lo, hi = problem.byte_range()
    budgets = [lo + int(f * (hi - lo)) for f in fractions]
    for one_budget, many in zip(budgets, solve_lagrange_many(problem, budgets), strict=True):
        one = solve_lagrange(problem, one_budget)
        assert np.array_equal(one.choice, many.choice) and one.bound == many.bound


@settings(max_examples=100, deadline=None)
@given(problems())
def test_hull_segments_are_sorted_and_convex(problem):
    m = problem.merged()
    hull = build_hull(m)
    slopes = hull.dloss / hull.dbytes
    assert (hull.dbytes > 0).all() and (hull.dloss > 0).all()
    assert (np.diff(slopes) <= 0).all()
    assert len(hull.cum) == int((hull.size - 1).sum())
    # Each group's hull ends on its least loss (fewest bytes among equal losses).
    last = hull.points[np.arange(len(hull.size)), hull.size - 1]
    best = np.where(m.feasible, m.loss, np.inf).min(axis=1)
    assert (m.loss[np.arange(len(last)), last] == best).all()


def test_fill_spends_leftover_bytes_beyond_the_greedy_prefix():
    # Greedy by slope takes unit 0's upgrade first; the leftover then fits unit 1's small upgrade.
    problem = make([[10.0, 0.0], [1.0, 0.5]], nbytes=[[0, 10], [0, 3]])
    solution = solve_lagrange(problem, 12)  # unit 1's upgrade no longer fits: LP takes 2/3 of it
    assert solution.choice.tolist() == [1, 0] and solution.objective == 1.0
    assert abs(solution.bound - (1.0 - 0.5 * 2 / 3)) < 1e-15
    solution = solve_lagrange(problem, 5)  # unit 0's upgrade does not fit; unit 1's does
    assert solution.choice.tolist() == [0, 1] and solution.objective == 10.5
    assert solution.bound == 10.0 + 1.0 - 10.0 * 5 / 10 and solution.status == "feasible"


def test_direct_calls_below_the_smallest_total_raise():
    problem = make([[1.0, 0.0]], nbytes=[[3, 5]])
    with pytest.raises(InfeasibleBudget, match="3 bytes"):
        solve_lagrange(problem, 2)
    with pytest.raises(InfeasibleBudget, match="3 bytes"):
        solve_milp(problem, 2)


def test_large_problem_is_fast():
    rng = np.random.default_rng(0)
    units, cands = 20_000, 48
    loss = rng.random((units, cands)) * 10.0 ** rng.uniform(-6, 6, (units, 1))
    problem = make(
        loss, nbytes=rng.integers(1, 10_000, (units, cands)), feasible=rng.random((units, cands)) < 0.9
    )
    lo, hi = problem.byte_range()
    solution = solve_lagrange(problem, (lo + hi) // 3)
    assert solution.nbytes <= (lo + hi) // 3 and solution.seconds < 10
