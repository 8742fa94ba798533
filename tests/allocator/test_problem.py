from __future__ import annotations

import numpy as np
import pytest

from bitalloc.allocator.problem import AllocationProblem, Budget
from bitalloc.errors import InvalidInput


def make(loss, feasible=None, tie=None):
    loss = np.asarray(loss, dtype=float)
    feasible = np.ones(loss.shape, dtype=bool) if feasible is None else np.asarray(feasible)
    return AllocationProblem(
        units=tuple(f"layer{i}" for i in range(loss.shape[0])),
        candidates=tuple(f"c{j}" for j in range(loss.shape[1])),
        loss=loss,
        nbytes=np.ones(loss.shape, dtype=np.int64),
        feasible=feasible,
        numel=np.full(loss.shape[0], 8, dtype=np.int64),
        tie=np.arange(loss.shape[0]) if tie is None else np.asarray(tie),
    )


@pytest.mark.parametrize("bad", [np.nan, np.inf, -1.0])
def test_bad_errors_name_the_unit_and_candidate(bad):
    with pytest.raises(InvalidInput, match="unit 'layer1', candidate 'c0'"):
        make([[1.0, 2.0], [bad, 1.0]])


def test_infeasible_nan_is_ignored():
    make([[1.0, np.nan]], feasible=[[True, False]])


def test_unit_without_candidates_is_named():
    with pytest.raises(InvalidInput, match="layer0"):
        make([[1.0, 2.0]], feasible=[[False, False]])


def test_tie_group_without_common_candidate_is_named():
    problem = make([[1.0, 2.0], [1.0, 2.0]], feasible=[[True, False], [False, True]], tie=[0, 0])
    with pytest.raises(InvalidInput, match="layer0.*layer1"):
        problem.merged()


def test_empty_palette_is_refused():
    with pytest.raises(InvalidInput, match="palette is empty"):
        make(np.zeros((2, 0)))


def test_budget_needs_exactly_one_limit():
    with pytest.raises(InvalidInput):
        Budget()
    with pytest.raises(InvalidInput):
        Budget(max_bytes=10, target_bpw=3.0)
    with pytest.raises(InvalidInput):
        Budget(target_bpw=float("nan"))
    assert Budget(target_bpw=4.0).to_bytes(make([[1.0], [2.0]])) == 8  # 16 weights at 4 bits
