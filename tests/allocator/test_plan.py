from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest

from bitalloc.allocator.plan import Plan, plan_from_solution, uniform_plan
from bitalloc.allocator.problem import Budget, Solution
from bitalloc.errors import InvalidInput, ProfileMismatch
from tests.sensitivity.test_profile import make_profile


def a_plan() -> Plan:
    profile = make_profile([3.0, 1.0, 2.0, 0.5])
    problem = profile.to_problem()
    rng = np.random.default_rng(0)
    choice = np.array([rng.choice(np.flatnonzero(row)) for row in problem.feasible])
    solution = Solution(
        choice=choice,
        objective=1.0,
        nbytes=0,
        bound=0.5,
        gap=0.5,
        status="optimal",
        solver="milp",
        seconds=0.01,
    )
    return plan_from_solution(profile, solution, Budget(target_bpw=3.5))


def test_plan_json_round_trip_is_exact(tmp_path):
    plan = a_plan()
    plan.save(tmp_path / "plan.json")
    again = Plan.load(tmp_path / "plan.json")
    assert again == plan
    doc = json.loads((tmp_path / "plan.json").read_text())
    assert doc["totals"]["bytes"] == plan.nbytes == sum(c.nbytes for c in plan.assignment)
    assert doc["totals"]["bpw"] == pytest.approx(8 * plan.nbytes / plan.numel)
    assert doc["totals"]["model_bytes"] == plan.nbytes + 1234
    assert {"name", "status", "gap"} <= set(doc["solver"])
    assert doc["model"]["hash"] == "m" * 64 and doc["profile_hash"]


def test_assignment_entries_carry_every_field_in_order():
    plan = a_plan()
    entries = plan.to_json()["assignment"]
    assert [list(e.items()) for e in entries] == [list(asdict(c).items()) for c in plan.assignment]


def test_plan_for_another_model_is_refused():
    plan = a_plan()
    plan.check_model("m" * 64)
    with pytest.raises(ProfileMismatch, match="not for the loaded model"):
        plan.check_model("z" * 64)


def test_edited_totals_are_refused(tmp_path):
    doc = a_plan().to_json()
    doc["totals"]["bytes"] += 1
    with pytest.raises(InvalidInput, match="edited"):
        Plan.from_json(doc)
    with pytest.raises(InvalidInput, match="schema"):
        Plan.from_json({"schema": "other"})


def test_uniform_plan_assigns_one_candidate_everywhere():
    profile = make_profile([1.0])
    plan = uniform_plan(profile, "gptq-w3g32-asym")
    assert {c.candidate for c in plan.assignment} == {"gptq-w3g32-asym"}
    with pytest.raises(InvalidInput, match="does not fit"):
        uniform_plan(profile, "rtn-w4g64-sym")  # 96 inputs: group 64 does not divide
