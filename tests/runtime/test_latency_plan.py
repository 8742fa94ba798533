from __future__ import annotations

import pytest

from bitalloc.errors import InfeasibleBudget
from bitalloc.kernels.latency import LatencyTable, shipped_table
from bitalloc.quantizers.candidate import Candidate
from bitalloc.runtime.latency_plan import decoder_linears, plan_under_latency
from tests.runtime.helpers import tiny_llama

PALETTE = ("rtn-w3g32-asym", "rtn-w4g32-asym", "rtn-w8g32-asym")


def test_plans_fit_their_latency_budgets_and_keep_fused_groups_together():
    model = tiny_llama(seed=9)
    table = LatencyTable.load(shipped_table("measured-h200_pipelined"))
    unlimited = plan_under_latency(model, table, PALETTE, budget_us=1e9)
    assert set(unlimited.assignment.values()) == {"rtn-w8g32-asym"}  # least error when time is free
    shapes = [tuple(m.weight.shape) for _, m, _ in decoder_linears(model)]
    fastest = sum(min(table.predict(Candidate.parse(c), s, 1) for c in PALETTE) for s in shapes)
    assert fastest < unlimited.latency_us
    budgets = [fastest + f * (unlimited.latency_us - fastest) for f in (0.3, 0.7)]
    plans = [plan_under_latency(model, table, PALETTE, budget_us=b) for b in budgets]
    for plan, budget in zip(plans, budgets, strict=True):
        assert plan.latency_us <= budget * (1 + 1e-9)
        a = plan.assignment
        for layer in range(2):  # what the decoder fuses shares a format
            assert (
                a[f"{layer}.self_attn.q_proj"]
                == a[f"{layer}.self_attn.k_proj"]
                == a[f"{layer}.self_attn.v_proj"]
            )
            assert a[f"{layer}.mlp.gate_proj"] == a[f"{layer}.mlp.up_proj"]
    assert plans[0].weight_error >= plans[1].weight_error >= unlimited.weight_error
    assert plans[0].weight_error > unlimited.weight_error  # a tighter budget costs accuracy
    with pytest.raises(InfeasibleBudget):
        plan_under_latency(model, table, PALETTE, budget_us=0.5 * fastest)
