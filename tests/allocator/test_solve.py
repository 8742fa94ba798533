"""The ``solve`` entry point: solver choice, budget checks, ties, determinism."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitalloc.allocator.problem import Budget
from bitalloc.allocator.solve import AUTO_MILP_MAX_PAIRS, solve, solve_many
from bitalloc.errors import InfeasibleBudget, InvalidInput
from tests.allocator.test_problem import brute_force, check_assignment, make, problems


@settings(max_examples=100, deadline=None)
@given(problems(), st.floats(0, 1.2), st.sampled_from(["auto", "milp", "lagrange"]))
def test_every_solver_is_valid_and_auto_is_exact_on_small_problems(problem, fraction, solver):
    lo, hi = problem.byte_range()
    max_bytes = lo + int(fraction * (hi - lo))
    solution = solve(problem, Budget(max_bytes=max_bytes), solver=solver)
    check_assignment(problem, solution, max_bytes)
    best = brute_force(problem, max_bytes)
    assert solution.objective >= best * (1 - 1e-12) and solution.bound <= best * (1 + 1e-9) + 1e-12
    if solver == "auto":
        assert solution.solver == "auto->milp" and abs(solution.objective - best) <= 1e-9 * best
    else:
        assert solution.solver == solver


@settings(max_examples=60, deadline=None)
@given(problems(), st.integers(1, 50), st.sampled_from(["auto", "milp", "lagrange"]))
def test_budget_below_the_smallest_names_the_range(problem, short, solver):
    lo, hi = problem.byte_range()
    if lo - short <= 0:
        return
    with pytest.raises(InfeasibleBudget) as info:
        solve(problem, Budget(max_bytes=lo - short), solver=solver)
    message = str(info.value)
    assert f"({lo - short} bytes) is below the smallest feasible budget" in message
    assert re.search(rf"feasible budgets run from \S+ bpw \({lo} bytes\) to \S+ bpw \({hi} bytes\)", message)
    bpw = problem.bpw_of_bytes
    assert f"{bpw(lo):.4g} bpw ({lo} bytes)" in message and f"{bpw(hi):.4g} bpw ({hi} bytes)" in message


def test_bpw_budget_below_the_smallest_is_described_in_bpw():
    problem = make([[3.0, 1.0], [2.0, 0.5]], nbytes=[[2, 4], [2, 4]])  # 16 weights: 4..8 bytes = 2..4 bpw
    with pytest.raises(
        InfeasibleBudget, match=r"budget 0.5 bpw \(1 bytes\) .*: 2 bpw \(4 bytes\); .* to 4 bpw \(8 bytes\)$"
    ):
        solve(problem, Budget(target_bpw=0.5))


def test_budget_above_the_largest_takes_the_least_loss_not_the_biggest():
    problem = make([[3.0, 1.0, 2.0], [2.0, 0.5, 0.5]], nbytes=[[1, 2, 9], [1, 5, 3]])
    for solver in ("milp", "lagrange", "auto"):
        solution = solve(problem, Budget(max_bytes=1000), solver=solver)
        assert solution.choice.tolist() == [1, 2] and solution.nbytes == 5 and solution.status == "optimal"


def test_tied_units_get_the_same_candidate():
    # Alone, unit 0 would take c1 and unit 2 c0; tied, both take the candidate best for the pair.
    problem = make([[5.0, 1.0], [1.0, 0.0], [0.0, 3.0]], nbytes=[[1, 2], [1, 2], [1, 2]], tie=[7, 3, 7])
    for solver in ("milp", "lagrange"):
        solution = solve(problem, Budget(max_bytes=100), solver=solver)
        assert solution.choice.tolist() == [1, 1, 1] and solution.objective == 4.0


@settings(max_examples=60, deadline=None)
@given(problems(), st.floats(0, 1.2))
def test_same_input_same_output(problem, fraction):
    lo, hi = problem.byte_range()
    budget = Budget(max_bytes=lo + int(fraction * (hi - lo)))
    for solver in ("milp", "lagrange"):
        a, b = solve(problem, budget, solver=solver), solve(problem, budget, solver=solver)
        assert a.choice.tobytes() == b.choice.tobytes()
        assert (a.objective, a.bound, a.gap, a.nbytes, a.status) == (
            b.objective,
            b.bound,
            b.gap,
            b.nbytes,
            b.status,
        )


@settings(max_examples=100, deadline=None)
@given(problems(), st.floats(0, 1.2))
def test_equal_losses_prefer_fewer_bytes_then_the_lower_index(problem, fraction):
    lo, hi = problem.byte_range()
    max_bytes = lo + int(fraction * (hi - lo))
    m = problem.merged()
    for solver in ("milp", "lagrange"):
        choice = solve(problem, Budget(max_bytes=max_bytes), solver=solver).choice
        group_choice = choice[[g[0] for g in problem.tie_groups()]]
        for k, c in enumerate(group_choice):
            same = np.flatnonzero(m.feasible[k] & (m.loss[k] == m.loss[k, c]))
            cheapest = same[m.nbytes[k, same] == m.nbytes[k, same].min()]
            assert c == cheapest[0]


def test_auto_says_what_it_ran():
    small = make([[3.0, 1.0], [2.0, 0.5]])
    assert solve(small, Budget(max_bytes=2)).solver == "auto->milp"
    rng = np.random.default_rng(0)
    units = AUTO_MILP_MAX_PAIRS // 40 + 1
    big = make(rng.random((units, 40)), nbytes=rng.integers(1, 100, (units, 40)))
    lo, hi = big.byte_range()
    assert solve(big, Budget(max_bytes=(lo + hi) // 2)).solver == "auto->lagrange"


def test_unknown_solver_lists_the_known_ones():
    with pytest.raises(InvalidInput, match=r"'simplex'.*auto, milp, lagrange"):
        solve(make([[1.0]]), Budget(max_bytes=1), solver="simplex")


def test_solve_many_keeps_the_order_and_matches_solve():
    rng = np.random.default_rng(1)
    problem = make(rng.random((6, 4)), nbytes=rng.integers(1, 20, (6, 4)))
    lo, hi = problem.byte_range()
    budgets = [Budget(max_bytes=b) for b in (hi, lo, (lo + hi) // 2)]
    for solver in ("milp", "lagrange"):
        many = solve_many(problem, budgets, solver=solver)
        for budget, s in zip(budgets, many, strict=True):
            assert np.array_equal(s.choice, solve(problem, budget, solver=solver).choice)
