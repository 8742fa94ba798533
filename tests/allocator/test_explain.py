"""Explanations: steps up/down and prices agree with the LP optimality conditions."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bitalloc.allocator.explain import explain
from bitalloc.allocator.problem import Budget
from bitalloc.allocator.solve import solve
from tests.allocator.test_problem import problems


@settings(max_examples=40, deadline=None)
@given(problems(), st.floats(0, 1.0))
def test_explanations_match_the_plan_and_the_price_separates_the_steps(problem, fraction):
    lo, hi = problem.byte_range()
    budget = Budget(max_bytes=max(lo + int(fraction * (hi - lo)), 1))
    s = solve(problem, budget, solver="lagrange")
    df = explain(problem, s, budget)
    rows = np.arange(len(problem.units))
    assert df["unit"].tolist() == list(problem.units)
    assert df["nbytes"].tolist() == problem.nbytes[rows, s.choice].tolist()
    assert np.allclose(df["loss"], problem.loss[rows, s.choice])
    price = df["price_bytes"].iloc[0]
    assert price >= 0
    # at a Lagrangian-optimal point a group's best step up never beats the price by more than rounding
    up = df["up_loss_per_byte"].to_numpy()
    has_up = df["up_bytes"].to_numpy() > 0
    m = problem.merged()
    one_choice = s.choice[[g[0] for g in problem.tie_groups()]]
    if s.status == "optimal" and s.nbytes < budget.max_bytes and not has_up.any():
        assert (m.loss[np.arange(len(one_choice)), one_choice] <= m.loss.max(axis=1)).all()
    assert (up[has_up] > 0).all()
    assert (df.loc[df["down_bytes"] > 0, "down_loss_per_byte"] >= 0).all()
    assert all(isinstance(r, str) and "byte price" in r for r in df["reason"])


def test_a_lone_unit_on_the_margin():
    from tests.allocator.test_problem import make

    problem = make([[4.0, 1.0, 0.5], [2.0, 1.5, 1.4]], nbytes=[[1, 3, 7], [1, 3, 7]])
    budget = Budget(max_bytes=4)
    s = solve(problem, budget, solver="milp")
    df = explain(problem, s, budget)
    assert s.choice.tolist() == [1, 0]
    row0 = df.iloc[0]
    assert (row0["up_candidate"], row0["up_bytes"], row0["up_loss_saved"]) == ("c2", 4, 0.5)
    assert (row0["down_candidate"], row0["down_bytes"], row0["down_loss_added"]) == ("c0", 2, 3.0)
    assert df.iloc[1]["down_candidate"] == "" and df.iloc[1]["down_bytes"] == 0
