"""One contract every solver passes: valid plans under several limits at once, proven bounds, exact
solvers exact, errors naming the limit at fault, byte-for-byte determinism."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitalloc.allocator.problem import AllocationProblem, Budget
from bitalloc.allocator.resources import FLOAT_TOL
from bitalloc.allocator.solve import solve
from bitalloc.errors import InfeasibleBudget
from tests.allocator.test_problem import problems

SOLVERS = ["milp", "lagrange", "pulp", "cvxpy", "baq", "auto"]
EXACT = {"milp": 1e-9, "auto": 1e-9, "pulp": 1e-6}
EXAMPLES = {"milp": 40, "lagrange": 40, "baq": 40, "auto": 25, "pulp": 12, "cvxpy": 12}


@st.composite
def multi_problems(draw) -> AllocationProblem:
    """Random problems with a latency table and routing frequencies."""
    p = draw(problems(max_units=4, max_candidates=4))
    shape = p.loss.shape
    latency = np.array(
        draw(st.lists(st.floats(0, 50), min_size=shape[0] * shape[1], max_size=shape[0] * shape[1]))
    )
    active = np.array(
        draw(st.lists(st.sampled_from([1.0, 0.5, 0.125]), min_size=shape[0], max_size=shape[0]))
    )
    return replace(p, latency=latency.reshape(shape), active=active)


def enumerate_all(p: AllocationProblem) -> dict[str, np.ndarray]:
    """Loss and every resource of each tie-consistent assignment, by enumeration."""
    m = p.merged()
    combos = np.array(list(itertools.product(*[np.flatnonzero(row) for row in m.feasible])), dtype=np.int64)
    rows = np.arange(len(m.units))
    lat = p.group_sum(p.latency)
    act = p.group_sum(p.active[:, None] * p.nbytes)
    return {
        "loss": m.loss[rows, combos].sum(axis=1),
        "bytes": m.nbytes[rows, combos].sum(axis=1),
        "latency": lat[rows, combos].sum(axis=1),
        "active_bytes": act[rows, combos].sum(axis=1),
    }


@st.composite
def cases(draw):
    p = draw(multi_problems())
    table = enumerate_all(p)
    which = draw(st.sets(st.sampled_from(["bytes", "latency", "active_bytes"]), min_size=1))
    limits = {}
    for name in sorted(which):
        lo, hi = float(table[name].min()), float(table[name].max())
        limits[name] = lo + draw(st.floats(-0.05, 1.1)) * (hi - lo)
    if limits.get("bytes", 1) < 1 or any(v <= 0 for v in limits.values()):
        limits = {k: max(v, 1.0) for k, v in limits.items()}
    budget = Budget(
        max_bytes=int(limits["bytes"]) if "bytes" in limits else None,
        max_latency=limits.get("latency"),
        max_active_bytes=limits.get("active_bytes"),
    )
    return p, budget, table


def best_of(table: dict, budget: Budget) -> float | None:
    fits = np.ones(len(table["loss"]), dtype=bool)
    if budget.max_bytes is not None:
        fits &= table["bytes"] <= budget.max_bytes
    for name, limit in (("latency", budget.max_latency), ("active_bytes", budget.max_active_bytes)):
        if limit is not None:
            fits &= table[name] <= limit * (1 + FLOAT_TOL)
    return float(table["loss"][fits].min()) if fits.any() else None


def check_contract(solver: str, p: AllocationProblem, budget: Budget, table: dict) -> None:
    best = best_of(table, budget)
    if best is None:
        with pytest.raises(InfeasibleBudget):
            solve(p, budget, solver=solver)
        return
    s = solve(p, budget, solver=solver)
    rows = np.arange(len(p.units))
    assert p.feasible[rows, s.choice].all()
    for t in np.unique(p.tie):
        assert len(set(s.choice[p.tie == t].tolist())) == 1
    assert s.nbytes == s.usage["bytes"] == int(p.nbytes[rows, s.choice].sum())
    if budget.max_bytes is not None:
        assert s.nbytes <= budget.max_bytes
    if budget.max_latency is not None:
        assert s.usage["latency"] <= budget.max_latency * (1 + FLOAT_TOL)
    if budget.max_active_bytes is not None:
        assert s.usage["active_bytes"] <= budget.max_active_bytes * (1 + FLOAT_TOL)
    assert s.objective == pytest.approx(p.loss[rows, s.choice].sum(), rel=1e-12, abs=0)
    assert s.objective >= best * (1 - 1e-12)
    assert s.bound <= best * (1 + 1e-9) + 1e-12
    assert s.gap == pytest.approx((s.objective - s.bound) / max(s.objective, 1e-300), rel=1e-9, abs=1e-12)
    if solver in EXACT:
        assert s.objective <= best * (1 + EXACT[solver]) + 1e-12
    assert s.solver == solver or s.solver.startswith("auto->")
    again = solve(p, budget, solver=solver)
    assert again.choice.tobytes() == s.choice.tobytes() and again.bound == s.bound


@pytest.mark.parametrize("solver", SOLVERS)
def test_every_solver_meets_the_contract(solver):
    @settings(max_examples=EXAMPLES[solver], deadline=None, derandomize=True)
    @given(cases())
    def run(case):
        check_contract(solver, *case)

    run()


@pytest.mark.parametrize("solver", SOLVERS)
def test_latency_budget_alone_is_named_when_out_of_range(solver):
    p = replace(
        AllocationProblem(
            units=("a", "b"),
            candidates=("w2", "w4"),
            loss=np.array([[2.0, 1.0], [3.0, 1.0]]),
            nbytes=np.array([[2, 4], [2, 4]]),
            feasible=np.ones((2, 2), dtype=bool),
            numel=np.array([8, 8]),
            tie=np.array([0, 1]),
        ),
        latency=np.array([[5.0, 6.0], [5.0, 6.0]]),
    )
    with pytest.raises(
        InfeasibleBudget, match=r"latency budget 9 is below the smallest feasible latency: 10"
    ):
        solve(p, Budget(max_latency=9.0), solver=solver)
    s = solve(p, Budget(max_latency=11.0), solver=solver)
    assert s.choice.tolist() == [0, 1] and s.usage["latency"] == 11.0


@pytest.mark.parametrize("solver", SOLVERS)
def test_contradictory_limits_name_both(solver):
    # Bytes want the low-latency-costly candidate; latency wants the byte-costly one.
    p = replace(
        AllocationProblem(
            units=("a",),
            candidates=("small-slow", "big-fast"),
            loss=np.array([[1.0, 1.0]]),
            nbytes=np.array([[2, 8]]),
            feasible=np.ones((1, 2), dtype=bool),
            numel=np.array([8]),
            tie=np.array([0]),
        ),
        latency=np.array([[9.0, 1.0]]),
    )
    with pytest.raises(InfeasibleBudget, match=r"bytes <= 4, latency <= 5 at once"):
        solve(p, Budget(max_bytes=4, max_latency=5.0), solver=solver)
