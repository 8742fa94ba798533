"""refine_plan: the closed loop on the real (cut) model returns a plan no worse on its windows."""

from __future__ import annotations

from bitalloc.allocator.plan import Plan
from bitalloc.allocator.problem import Budget
from bitalloc.allocator.refine import RefineSettings, refine_plan
from tests.allocator.smol_profile import small_profile


def test_refined_plan_is_the_best_measured_round(smollm2_small):
    profile = small_profile(smollm2_small, prefix="model.layers.1.")
    budget = Budget(target_bpw=3.0)
    settings = RefineSettings(group="type", rounds=2, windows=1, seq_len=32)
    plan, loop = refine_plan(profile, budget, smollm2_small, settings)
    record = plan.solver["closed_loop"]
    assert record["measured_kl"] == [r.measured for r in loop.rounds]
    assert record["measured_kl"][record["round"] - 1] == min(record["measured_kl"])
    assert record["measured_kl"][record["round"] - 1] <= record["measured_kl"][0]
    assert plan.bpw <= 3.0 and plan.budget["target_bpw"] == 3.0
    chosen = [profile.to_problem().candidates[c] for c in loop.solution.choice]
    assert [a.candidate for a in plan.assignment] == chosen
    assert Plan.from_json(plan.to_json()).candidate_of() == plan.candidate_of()  # still a valid plan file
