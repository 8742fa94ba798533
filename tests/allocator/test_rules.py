"""Per-unit rules: min/max bits, pins, patterns, and errors that name the unit or rule."""

from __future__ import annotations

import numpy as np
import pytest

from bitalloc.allocator.problem import AllocationProblem, Budget
from bitalloc.allocator.rules import apply_rules, candidate_bits
from bitalloc.allocator.solve import SOLVERS, solve
from bitalloc.errors import InvalidInput


def palette_problem() -> AllocationProblem:
    names = ("rtn-w2g32-sym", "rtn-w4g32-sym", "rtn-w8g32-sym")
    return AllocationProblem(
        units=("blk.0.q", "blk.0.k", "blk.1.q"),
        candidates=names,
        loss=np.array([[4.0, 1.0, 0.1], [9.0, 2.0, 0.2], [1.0, 0.5, 0.0]]),
        nbytes=np.array([[10, 18, 34]] * 3),
        feasible=np.array([[True, True, True], [True, True, True], [True, True, False]]),
        numel=np.array([64, 64, 64]),
        tie=np.array([0, 1, 2]),
    )


def test_bits_come_from_the_name_else_from_storage():
    p = palette_problem()
    assert candidate_bits(p)[0].tolist() == [2.0, 4.0, 8.0]
    q = AllocationProblem(
        units=("a",), candidates=("custom",), loss=np.array([[1.0]]), nbytes=np.array([[24]]),
        feasible=np.array([[True]]), numel=np.array([64]), tie=np.array([0]),
    )  # fmt: skip
    assert candidate_bits(q)[0, 0] == 3.0


@pytest.mark.parametrize("solver", [s for s in SOLVERS if s != "pulp"])
def test_min_max_bits_and_pins_hold_under_every_solver(solver):
    p = palette_problem()
    budget = Budget(
        max_bytes=70, min_bits={"blk.0.*": 4}, max_bits={"blk.1.q": 2}, pinned={"blk.0.k": "rtn-w8g32-sym"}
    )
    s = solve(p, budget, solver=solver)
    assert [p.candidates[c] for c in s.choice] == ["rtn-w4g32-sym", "rtn-w8g32-sym", "rtn-w2g32-sym"]
    assert s.nbytes == 62


def test_min_bits_above_max_bits_names_the_unit():
    with pytest.raises(InvalidInput, match=r"unit 'blk.0.q': min_bits 6 is above max_bits 4"):
        apply_rules(palette_problem(), Budget(max_bytes=100, min_bits=6, max_bits={"blk.0.q": 4}))


def test_no_candidate_in_range_names_the_unit_and_its_span():
    with pytest.raises(
        InvalidInput, match=r"unit 'blk.1.q' has no candidate within bits 6..inf; .* 2..4 bits"
    ):
        apply_rules(palette_problem(), Budget(max_bytes=100, min_bits=6))


def test_pin_to_an_unsupported_candidate_names_the_unit():
    with pytest.raises(InvalidInput, match=r"unit 'blk.1.q' is pinned to 'rtn-w8g32-sym'"):
        apply_rules(palette_problem(), Budget(max_bytes=100, pinned={"blk.1.*": "rtn-w8g32-sym"}))


def test_unknown_unit_or_candidate_is_named():
    with pytest.raises(InvalidInput, match=r"min_bits names 'blk.9.\*', which matches no unit"):
        apply_rules(palette_problem(), Budget(max_bytes=100, min_bits={"blk.9.*": 4}))
    with pytest.raises(InvalidInput, match=r"'rtn-w5g32-sym', which is not in the palette"):
        apply_rules(palette_problem(), Budget(max_bytes=100, pinned={"blk.0.q": "rtn-w5g32-sym"}))
    with pytest.raises(InvalidInput, match=r"min_bits for 'blk\.0\.q' must be a positive number"):
        Budget(max_bytes=100, min_bits={"blk.0.q": float("nan")})


def test_rules_never_widen_the_palette_and_budget_json_lists_them():
    p = palette_problem()
    budget = Budget(target_bpw=4.0, max_bits=4)
    narrowed = apply_rules(p, budget)
    assert not (narrowed.feasible & ~p.feasible).any()
    assert not narrowed.feasible[:, 2].any()
    assert budget.to_json() == {"max_bytes": None, "target_bpw": 4.0, "max_bits": {"*": 4.0}}
