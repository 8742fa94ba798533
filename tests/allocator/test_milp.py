"""The exact MILP solver against brute-force enumeration."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitalloc.allocator import dp
from bitalloc.allocator import milp as milp_module
from bitalloc.allocator.milp import solve_milp
from tests.allocator.test_problem import brute_force, check_assignment, dynamic_programming, make, problems


@settings(max_examples=150, deadline=None)
@given(problems(), st.floats(-0.1, 1.2))
def test_milp_matches_brute_force(problem, fraction):
    lo, hi = problem.byte_range()
    max_bytes = max(lo, lo + int(fraction * (hi - lo)))
    solution = solve_milp(problem, max_bytes)
    check_assignment(problem, solution, max_bytes)
    best = brute_force(problem, max_bytes)
    assert abs(solution.objective - best) <= 1e-9 * best
    assert solution.status == "optimal"
    assert solution.bound <= solution.objective and 0 <= solution.gap <= 1e-9
    assert solution.gap == (solution.objective - solution.bound) / max(solution.objective, 1e-300)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0.05, 0.9))
def test_milp_matches_dynamic_programming_on_medium_problems(seed, fraction):
    # Enough groups that HiGHS has to branch; near-optimal assignments differ by far less than 1e-4.
    rng = np.random.default_rng(seed)
    units, cands = int(rng.integers(20, 60)), int(rng.integers(2, 12))
    bits = np.sort(rng.uniform(2, 8, cands))
    loss = 10.0 ** rng.uniform(-4, 4, (units, 1)) * 2.0 ** (-2 * bits) * rng.uniform(0.8, 1.2, (units, cands))
    nbytes = np.round(bits * rng.integers(1, 4, (units, 1))).astype(np.int64) + rng.integers(
        0, 3, (units, cands)
    )
    feasible = rng.random((units, cands)) < 0.8
    feasible[np.arange(units), rng.integers(0, cands, units)] = True
    problem = make(loss, nbytes=nbytes, feasible=feasible)
    lo, hi = problem.byte_range()
    max_bytes = lo + int(fraction * (hi - lo))
    solution = solve_milp(problem, max_bytes)
    best = dynamic_programming(problem, max_bytes)
    check_assignment(problem, solution, max_bytes)
    assert abs(solution.objective - best) <= 1e-9 * best


def test_losses_over_twelve_decades_stay_exact():
    # The optimum trades a 1e6 loss against many tiny ones: a naive objective scale would lose them.
    loss = np.array([[1e6, 1e6 - 1e-3], [2e-6, 1e-6], [3e-6, 1e-6], [5e-6, 2e-6]])
    nbytes = np.array([[1, 2], [1, 2], [1, 2], [1, 2]])
    problem = make(loss, nbytes=nbytes)
    for max_bytes in range(4, 9):
        solution = solve_milp(problem, max_bytes)
        assert abs(solution.objective - brute_force(problem, max_bytes)) <= 1e-12 * solution.objective


def test_equal_losses_prefer_fewer_bytes_then_the_lower_index():
    problem = make([[1.0, 0.5, 0.5, 0.5]], nbytes=[[1, 3, 2, 2]])
    assert solve_milp(problem, 10).choice.tolist() == [2]


def test_time_limit_is_accepted_and_reported():
    rng = np.random.default_rng(0)
    problem = make(rng.random((30, 8)), nbytes=rng.integers(1, 50, (30, 8)))
    solution = solve_milp(problem, 600, time_limit=30.0)
    assert solution.status in ("optimal", "time_limit") and solution.nbytes <= 600


def layer_level_instance(seed: int, layers: int) -> tuple:
    """Shaped like a 70B profile at layer level: four tensor groups per layer whose byte counts are
    power-of-two multiples of (4 bits + 1 or 2 scale words), errors falling about 4x per bit."""
    rng = np.random.default_rng(seed)
    units = np.array([5 * 2**19, 2**21, 7 * 2**21, 7 * 2**20] * layers, dtype=np.int64)
    bits = np.repeat([2, 3, 4, 5, 6, 8], 2)
    words = np.tile([1, 2], 6)  # g64 and g32 scales
    nbytes = units[:, None] * (4 * bits + words)[None, :]
    loss = (
        units[:, None]
        * 4.0 ** -bits[None, :]
        * np.where(words == 2, 0.8, 1.0)[None, :]
        * rng.lognormal(0, 0.5, (len(units), 1))
        * rng.uniform(0.9, 1.1, nbytes.shape)
    )
    return make(loss, nbytes=nbytes), units


@pytest.mark.parametrize("bpw", [2.6, 3.3, 4.1, 5.7, 7.2])
def test_dp_path_agrees_with_highs_on_a_layer_level_instance(monkeypatch, bpw):
    problem, units = layer_level_instance(int(bpw * 10), layers=20)
    max_bytes = int(bpw * 4 * units.sum())  # a group's bytes are unit x (4 bits + words): 4 units per bpw
    lo, hi = problem.byte_range()
    assert lo < max_bytes < hi
    with monkeypatch.context() as mp:  # the DP answers alone: HiGHS is never called
        mp.setattr(milp_module, "milp", lambda *a, **k: pytest.fail("HiGHS ran"))
        by_dp = solve_milp(problem, max_bytes)
    monkeypatch.setattr(dp, "MAX_CELLS", 0)  # the DP declines: HiGHS answers
    by_highs = solve_milp(problem, max_bytes)
    assert by_dp.status == by_highs.status == "optimal"
    assert by_dp.nbytes <= max_bytes and by_highs.nbytes <= max_bytes
    assert by_dp.objective == pytest.approx(by_highs.objective, rel=1e-9)
    assert by_dp.objective == pytest.approx(dynamic_programming_scaled(problem, max_bytes), rel=1e-12)


def dynamic_programming_scaled(problem, max_bytes: int) -> float:
    """``dynamic_programming`` over bytes divided by their common factor (the plain one would need
    billions of states)."""
    unit = int(np.gcd.reduce(problem.nbytes.ravel()))
    scaled = make(problem.loss, nbytes=problem.nbytes // unit)
    return dynamic_programming(scaled, max_bytes // unit)


@pytest.mark.parametrize(("seed", "bpw"), [(5, 6.927516080599591), (35, 6.958059961435777)])
def test_dp_optimum_tied_with_the_lagrangian_plan_needs_no_highs(monkeypatch, seed, bpw):
    # Five copies of a 4-layer block: the optimum can upgrade either of two identical groups, and the
    # DP's pick then sums a few ulps above the Lagrangian plan's. Both are optimal (HiGHS used to run).
    block, units = layer_level_instance(seed, layers=4)
    problem = make(np.tile(block.loss, (5, 1)), nbytes=np.tile(block.nbytes, (5, 1)))
    max_bytes = int(bpw * 4 * units.sum() * 5)
    with monkeypatch.context() as mp:
        mp.setattr(milp_module, "milp", lambda *a, **k: pytest.fail("HiGHS ran"))
        by_dp = solve_milp(problem, max_bytes)
    monkeypatch.setattr(dp, "MAX_CELLS", 0)
    by_highs = solve_milp(problem, max_bytes)
    assert by_dp.status == "optimal" and by_dp.gap == 0.0 and by_dp.nbytes <= max_bytes
    assert by_dp.objective == pytest.approx(by_highs.objective, rel=1e-12)
