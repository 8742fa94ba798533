"""AllocationProblem validation and merging; also the random problems and brute force other tests use."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitalloc.allocator.problem import AllocationProblem, Budget
from bitalloc.errors import InvalidInput


def make(loss, feasible=None, tie=None, nbytes=None):
    loss = np.asarray(loss, dtype=float)
    feasible = np.ones(loss.shape, dtype=bool) if feasible is None else np.asarray(feasible)
    return AllocationProblem(
        units=tuple(f"layer{i}" for i in range(loss.shape[0])),
        candidates=tuple(f"c{j}" for j in range(loss.shape[1])),
        loss=loss,
        nbytes=np.ones(loss.shape, dtype=np.int64) if nbytes is None else np.asarray(nbytes, dtype=np.int64),
        feasible=feasible,
        numel=np.full(loss.shape[0], 8, dtype=np.int64),
        tie=np.arange(loss.shape[0]) if tie is None else np.asarray(tie),
    )


# Losses over twelve decades, plus repeated values so that equal-loss ties really happen.
_losses = st.one_of(
    st.floats(0, 1000, allow_nan=False, allow_subnormal=False),  # a step of 5e-324 per byte is 0
    st.floats(-6, 6).map(lambda e: 10.0**e),
    st.sampled_from([0.0, 1.0, 2.5]),
)


@st.composite
def problems(draw, max_units: int = 5, max_candidates: int = 5) -> AllocationProblem:
    """Random units x candidates: feasibility masks (shared within a tie group), int bytes, float losses."""
    n_units = draw(st.integers(1, max_units))
    n_cands = draw(st.integers(1, max_candidates))
    tie = np.array(draw(st.lists(st.integers(0, n_units - 1), min_size=n_units, max_size=n_units)))
    masks = {}
    for t in np.unique(tie):
        mask = draw(st.lists(st.booleans(), min_size=n_cands, max_size=n_cands))
        mask[draw(st.integers(0, n_cands - 1))] = True
        masks[t] = mask
    size = n_units * n_cands
    nbytes = draw(st.lists(st.integers(1, 100), min_size=size, max_size=size))
    losses = draw(st.lists(_losses, min_size=size, max_size=size))
    return AllocationProblem(
        units=tuple(f"u{i}" for i in range(n_units)),
        candidates=tuple(f"c{j}" for j in range(n_cands)),
        loss=np.array(losses).reshape(n_units, n_cands),
        nbytes=np.array(nbytes, dtype=np.int64).reshape(n_units, n_cands),
        feasible=np.array([masks[t] for t in tie], dtype=bool),
        numel=np.array(
            draw(st.lists(st.integers(1, 64), min_size=n_units, max_size=n_units)), dtype=np.int64
        ),
        tie=tie.astype(np.int64),
    )


def all_assignments(problem: AllocationProblem) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every tie-consistent assignment of the merged problem: (choices, their bytes, their losses)."""
    m = problem.merged()
    combos = np.array(list(itertools.product(*[np.flatnonzero(row) for row in m.feasible])), dtype=np.int64)
    rows = np.arange(len(m.units))
    return combos, m.nbytes[rows, combos].sum(axis=1), m.loss[rows, combos].sum(axis=1)


def brute_force(problem: AllocationProblem, max_bytes: int) -> float | None:
    """The optimal loss by enumeration (None when nothing fits)."""
    _, nbytes, loss = all_assignments(problem)
    fits = nbytes <= max_bytes
    return float(loss[fits].min()) if fits.any() else None


def dynamic_programming(problem: AllocationProblem, max_bytes: int) -> float:
    """The optimal loss by a knapsack DP over total bytes (exact; for small byte counts)."""
    m = problem.merged()
    best = np.zeros(max_bytes + 1)  # best[b]: least loss of the groups so far within b bytes
    for k in range(len(m.units)):
        new = np.full(max_bytes + 1, np.inf)
        for c in np.flatnonzero(m.feasible[k]):
            w = int(m.nbytes[k, c])
            if w <= max_bytes:
                new[w:] = np.minimum(new[w:], best[: max_bytes + 1 - w] + m.loss[k, c])
        best = new
    return float(best[max_bytes])


def check_assignment(problem: AllocationProblem, solution, max_bytes: int) -> None:
    """Feasible, within budget, tie-consistent, and the reported totals match the choice."""
    rows = np.arange(len(problem.units))
    assert solution.choice.shape == rows.shape
    assert problem.feasible[rows, solution.choice].all()
    assert solution.nbytes == int(problem.nbytes[rows, solution.choice].sum()) <= max_bytes
    for t in np.unique(problem.tie):
        assert len(set(solution.choice[problem.tie == t].tolist())) == 1
    assert solution.objective == pytest.approx(problem.loss[rows, solution.choice].sum(), rel=1e-12, abs=0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -1.0])
def test_bad_errors_name_the_unit_and_candidate(bad):
    with pytest.raises(InvalidInput, match="unit 'layer1', candidate 'c0'"):
        make([[1.0, 2.0], [bad, 1.0]])


def test_infeasible_nan_is_ignored():
    make([[1.0, np.nan]], feasible=[[True, False]])


def test_unit_without_candidates_is_named():
    with pytest.raises(InvalidInput, match="layer1"):
        make([[1.0, 2.0], [1.0, 2.0]], feasible=[[True, False], [False, False]])


def test_tie_group_without_common_candidate_is_named():
    problem = make([[1.0, 2.0], [1.0, 2.0]], feasible=[[True, False], [False, True]], tie=[0, 0])
    with pytest.raises(InvalidInput, match=r"layer0.*layer1"):
        problem.merged()


def test_empty_palette_is_refused():
    with pytest.raises(InvalidInput, match="palette is empty"):
        make(np.zeros((2, 0)))


def test_negative_bytes_are_refused():
    with pytest.raises(InvalidInput, match="negative byte"):
        make([[1.0, 2.0]], nbytes=[[1, -1]])


def test_budget_needs_a_limit_and_takes_the_smaller_byte_limit():
    with pytest.raises(InvalidInput, match="give a budget"):
        Budget()
    assert Budget(max_bytes=10, target_bpw=3.0).to_bytes(make([[1.0], [2.0]])) == 6  # 16 weights at 3 bits
    with pytest.raises(InvalidInput, match="max_latency"):
        Budget(max_latency=-1.0)
    with pytest.raises(InvalidInput):
        Budget(target_bpw=float("nan"))
    assert Budget(target_bpw=4.0).to_bytes(make([[1.0], [2.0]])) == 8  # 16 weights at 4 bits


@settings(max_examples=100, deadline=None)
@given(problems())
def test_merged_sums_each_tie_group_in_order_of_first_appearance(problem):
    merged, groups = problem.merged(), problem.tie_groups()
    assert len(merged.units) == len(groups) == len(np.unique(problem.tie))
    assert [int(g[0]) for g in groups] == sorted(int(g[0]) for g in groups)
    gid = problem.group_index()
    for k, members in enumerate(groups):
        assert (gid[members] == k).all() and len(set(problem.tie[members].tolist())) == 1
        feasible = problem.feasible[members].all(axis=0)
        assert (merged.feasible[k] == feasible).all()
        loss = np.where(problem.feasible[members], problem.loss[members], 0.0).sum(axis=0)
        assert np.allclose(merged.loss[k][feasible], loss[feasible], rtol=1e-12, atol=0)
        assert (merged.nbytes[k][feasible] == problem.nbytes[members].sum(axis=0)[feasible]).all()
        assert merged.numel[k] == problem.numel[members].sum()
        assert merged.units[k] == "+".join(problem.units[i] for i in members)


@settings(max_examples=100, deadline=None)
@given(problems())
def test_byte_range_is_the_range_of_all_assignments(problem):
    _, nbytes, _ = all_assignments(problem)
    assert problem.byte_range() == (int(nbytes.min()), int(nbytes.max()))
