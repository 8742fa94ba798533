from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from bitalloc.errors import InfeasibleBudget, InvalidInput
from bitalloc.kernels.latency import LatencyRow, LatencyTable, shipped_table
from bitalloc.quantizers.candidate import Candidate
from bitalloc.runtime.latency_plan import decoder_linears, launch_shares, plan_under_latency, tabled_us
from tests.runtime.helpers import quantize_linears, tiny_llama

PALETTE = ("rtn-w3g32-asym", "rtn-w4g32-asym", "rtn-w8g32-asym")


def test_plans_fit_their_latency_budgets_and_keep_fused_groups_together():
    model = tiny_llama(seed=9)
    table = LatencyTable.load(shipped_table("measured-h200_pipelined"))
    unlimited = plan_under_latency(model, table, PALETTE, budget_us=1e9)
    assert set(unlimited.assignment.values()) == {"rtn-w8g32-asym"}  # least error when time is free
    linears = decoder_linears(model)
    by_group: dict[str, dict[str, float]] = {}  # tie group -> candidate -> its fused launch's tabled time
    for (_, _, tie), (launch, share) in zip(linears, launch_shares(linears), strict=True):
        group = by_group.setdefault(tie, {})
        for c in PALETTE:
            group[c] = group.get(c, 0.0) + share * table.predict(Candidate.parse(c), launch, 1)
    fastest = sum(min(group.values()) for group in by_group.values())
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


def test_tied_groups_are_priced_as_one_fused_launch():
    """q/k/v (64+32+32 rows) and gate/up (128+128 rows) cost what their stacked launch costs in the table,
    not the sum of their members' launches."""
    model = tiny_llama(seed=9)  # q 64x64, k/v 32x64, o 64x64, gate/up 128x64, down 64x128
    times = {(64, 64): 10.0, (32, 64): 8.0, (128, 64): 12.0, (256, 64): 14.0, (64, 128): 9.0}
    table = LatencyTable(  # 8-bit launches take twice the 4-bit time, float16 three times
        tuple(
            LatencyRow(bits, 32, False, o, i, 1, bits // 4 * us, 3 * us)
            for (o, i), us in times.items()
            for bits in (4, 8)
        )
    )
    linears = decoder_linears(model)
    shares = dict(zip([name for name, _, _ in linears], launch_shares(linears), strict=True))
    assert shares["0.self_attn.q_proj"] == ((128, 64), 0.5)
    assert shares["0.self_attn.k_proj"] == ((128, 64), 0.25)
    assert shares["0.mlp.up_proj"] == ((256, 64), 0.5)
    assert shares["0.mlp.down_proj"] == ((64, 128), 1.0)
    fused_layer = 12 + 10 + 14 + 9  # q/k/v, o, gate/up, down launches
    assert tabled_us(table, model, None) == pytest.approx(2 * 3 * fused_layer)
    plan = plan_under_latency(model, table, ("rtn-w4g32-asym",), budget_us=1e9)
    assert plan.latency_us == pytest.approx(2 * fused_layer)  # per linear it would be 2 * 69
    quantize_linears(model, {n.rpartition(".")[2]: "rtn-w4g32-asym" for n in plan.assignment})
    assert tabled_us(table, model, plan.assignment) == pytest.approx(plan.latency_us)
    # members of a group with different formats run (and are priced) as separate launches
    split = plan.assignment | {f"{i}.self_attn.{p}_proj": "rtn-w8g32-asym" for i in (0, 1) for p in "kv"}
    assert tabled_us(table, model, split) == pytest.approx(2 * (10 + 2 * 10 + 10 + 14 + 9))  # q; k+v 8-bit
    with pytest.raises(InvalidInput, match="float model"):
        plan_under_latency(model, table, ("rtn-w4g32-asym",), budget_us=1e9)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("abc"), st.integers(1, 64), st.sampled_from(["w4", "w8"])),
        min_size=1,
        max_size=12,
    )
)
def test_launch_shares_split_each_launch_by_rows(members):
    """Each launch (a run of neighbours with one tie key and one format) is priced once: its members' shares
    sum to 1, each share is the member's rows over the launch's stacked rows, and its shape stacks them."""
    linears = [(f"l{i}", nn.Linear(32, out, device="meta"), tie) for i, (tie, out, _) in enumerate(members)]
    formats = [fmt for _, _, fmt in members]
    shares = launch_shares(linears, formats)
    start = 0
    while start < len(members):
        stop = start + 1
        while stop < len(members) and members[stop][::2] == members[start][::2]:
            stop += 1
        rows = sum(out for _, out, _ in members[start:stop])
        assert sum(share for _, share in shares[start:stop]) == pytest.approx(1.0)
        for (_, out, _), (shape, share) in zip(members[start:stop], shares[start:stop], strict=True):
            assert shape == (rows, 32) and share == pytest.approx(out / rows)
        start = stop
    # without formats a tie group's neighbours share one launch, as when they share one format
    assert launch_shares(linears) == launch_shares(linears, ["w4"] * len(members))
