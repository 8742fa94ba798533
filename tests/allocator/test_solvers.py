"""Every solver against brute force on small random problems, ties included."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bitalloc.allocator.problem import Budget
from bitalloc.allocator.solve import solve, solve_many
from bitalloc.errors import InfeasibleBudget, InvalidInput
from tests.allocator.strategies import brute_force, problems

TOL = 1e-9


def check_valid(problem, solution, max_bytes):
    rows = np.arange(len(problem.units))
    assert problem.feasible[rows, solution.choice].all()
    assert solution.nbytes == problem.nbytes[rows, solution.choice].sum() <= max_bytes
    for t in np.unique(problem.tie):
        assert len(set(solution.choice[problem.tie == t])) == 1
    assert solution.objective == pytest.approx(problem.loss[rows, solution.choice].sum())


@settings(max_examples=150, deadline=None)
@given(problems(), st.floats(0, 1.2))
def test_milp_is_optimal(problem, fraction):
    lo, hi = problem.byte_range()
    max_bytes = lo + int(fraction * (hi - lo))
    solution = solve(problem, Budget(max_bytes=max_bytes), solver="milp")
    check_valid(problem, solution, max_bytes)
    best = brute_force(problem, max_bytes)
    assert solution.objective <= best + TOL * (1 + best)
    assert solution.status == "optimal" and solution.gap <= 1e-4  # HiGHS proves optimality to its tolerances


@settings(max_examples=150, deadline=None)
@given(problems(), st.floats(0, 1.2))
def test_lagrange_is_valid_and_its_bound_is_a_real_bound(problem, fraction):
    lo, hi = problem.byte_range()
    max_bytes = lo + int(fraction * (hi - lo))
    solution = solve(problem, Budget(max_bytes=max_bytes), solver="lagrange")
    check_valid(problem, solution, max_bytes)
    best = brute_force(problem, max_bytes)
    assert solution.bound <= best + TOL * (1 + best)
    assert solution.objective >= best - TOL * (1 + best)
    if solution.objective > 1e-6:
        assert solution.gap == pytest.approx((solution.objective - solution.bound) / solution.objective)


@settings(max_examples=60, deadline=None)
@given(problems(), st.lists(st.floats(0, 1.2), min_size=1, max_size=6))
def test_solve_many_matches_one_at_a_time(problem, fractions):
    lo, hi = problem.byte_range()
    budgets = [Budget(max_bytes=lo + int(f * (hi - lo))) for f in fractions]
    many = solve_many(problem, budgets, solver="lagrange")
    for budget, s in zip(budgets, many, strict=True):
        one = solve(problem, budget, solver="lagrange")
        assert np.array_equal(one.choice, s.choice) and one.bound == pytest.approx(s.bound)


@settings(max_examples=60, deadline=None)
@given(problems())
def test_budget_below_the_smallest_names_the_range(problem):
    lo, hi = problem.byte_range()
    assume(lo > 1)
    for solver in ("milp", "lagrange", "auto"):
        with pytest.raises(InfeasibleBudget) as info:
            solve(problem, Budget(max_bytes=lo - 1), solver=solver)
        message = str(info.value)
        assert f"({lo} bytes)" in message and f"({hi} bytes)" in message and "smallest feasible" in message


@settings(max_examples=30, deadline=None)
@given(problems(max_units=5, max_candidates=5), st.floats(0, 1))
def test_same_input_same_plan(problem, fraction):
    lo, hi = problem.byte_range()
    budget = Budget(max_bytes=lo + int(fraction * (hi - lo)))
    for solver in ("milp", "lagrange"):
        a, b = solve(problem, budget, solver=solver), solve(problem, budget, solver=solver)
        assert np.array_equal(a.choice, b.choice) and a.objective == b.objective


def test_auto_says_what_it_picked_and_unknown_solvers_are_refused():
    from tests.allocator.test_problem import make

    problem = make([[3.0, 1.0], [2.0, 0.5]])
    lo, _ = problem.byte_range()
    assert solve(problem, Budget(max_bytes=lo), solver="auto").solver == "auto->milp"
    with pytest.raises(InvalidInput, match="milp, lagrange"):
        solve(problem, Budget(max_bytes=lo), solver="simplex")
