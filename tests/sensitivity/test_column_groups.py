"""Column-group units: splitting, block-Hessian errors, exact bytes and a correct forward."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from bitalloc.allocator.plan import plan_from_solution
from bitalloc.allocator.problem import Budget
from bitalloc.allocator.solve import solve
from bitalloc.data.corpora import Split, load_corpus
from bitalloc.data.windows import calibration_windows
from bitalloc.errors import InvalidInput
from bitalloc.models.units import Unit, discover_units, unquantized_bytes
from bitalloc.quantizers.apply import apply_plan, quantized_bytes, save_quantized
from bitalloc.quantizers.candidate import Candidate
from bitalloc.quantizers.rtn import quantize_rtn
from bitalloc.sensitivity.calibrate import calibrate
from bitalloc.sensitivity.column_groups import (
    ColumnGroupLinear,
    apply_group_plan,
    column_bounds,
    cross_group_fraction,
    parse_group_unit,
    profile_column_groups,
    split_units,
)
from bitalloc.sensitivity.proxy import proxy_error

PALETTE = [
    Candidate.parse(n) for n in ("rtn-w2g64-asym", "rtn-w4g64-asym", "rtn-w8g64-asym", "gptq-w3g32-sym")
]
GROUP_COLS = 256


@pytest.fixture(scope="module")
def setup(smollm2_small):
    model = smollm2_small.model
    units = tuple(
        u
        for u in discover_units(model)
        if ".layers.0." in u.name and not u.name.endswith(("gate_proj", "up_proj"))
    )
    corpus = load_corpus("wiki", Split.CALIBRATION)
    windows = calibration_windows(smollm2_small.tokenizer, corpus, n_windows=2, seq_len=64, seed=0)
    stats = calibrate(model, units, windows, model_hash=smollm2_small.model_hash, corpus_hash="c")
    meta = {"model_name": "smollm2[:2]", "unquantized_bytes": unquantized_bytes(model, units)}
    profile = profile_column_groups(model, units, stats, PALETTE, group_cols=GROUP_COLS, meta=meta)
    return model, units, stats, profile


def test_split_units_contiguous_with_short_last_group_and_shared_ties():
    units = (
        Unit("l.q_proj", (576, 576), "l.q_proj+k_proj+v_proj"),
        Unit("l.k_proj", (192, 576), "l.q_proj+k_proj+v_proj"),
    )
    groups = split_units(units, 256)
    assert [g.name for g in groups[:3]] == [
        "l.q_proj@cols0-256",
        "l.q_proj@cols256-512",
        "l.q_proj@cols512-576",
    ]
    assert [g.shape for g in groups[:3]] == [(576, 256), (576, 256), (576, 64)]
    assert groups[0].tie == groups[3].tie != groups[1].tie  # q and k share a tie per column range
    assert parse_group_unit("l.q_proj@cols256-512").start == 256
    assert parse_group_unit("l.q_proj") is None
    assert column_bounds(512, 256) == [(0, 256), (256, 512)]
    with pytest.raises(InvalidInput, match="already a column group"):
        split_units(groups[:1], 128)


def test_group_error_is_the_hessian_block_proxy_and_cross_terms_are_measured(setup):
    model, units, stats, profile = setup
    unit = units[0]  # q_proj (576, 576): groups 0-256, 256-512, 512-576
    weight = model.get_submodule(unit.name).weight.detach().float()
    h = stats.hessians[unit.name]
    cand = PALETTE[0]
    dq = quantize_rtn(weight[:, 256:512].contiguous(), cand).dequantize()
    row = profile.table.query("unit == @unit.name + '@cols256-512' and candidate == @cand.name")
    assert len(row) == 1
    expected = proxy_error(weight[:, 256:512], dq, h[256:512, 256:512])
    assert row["error"].iloc[0] == pytest.approx(expected, rel=1e-6)
    # full error = Σ block errors + cross terms; the fraction reported is exactly that gap
    full_dq = torch.cat(
        [quantize_rtn(weight[:, s:e].contiguous(), cand).dequantize() for s, e in column_bounds(576, 256)], 1
    )
    frac = cross_group_fraction(weight, full_dq, h, column_bounds(576, 256))
    blocks = profile.table.query("unit.str.startswith(@unit.name + '@') and candidate == @cand.name")
    full = proxy_error(weight, full_dq, h)
    assert blocks["error"].sum() == pytest.approx(full * (1 - frac), rel=1e-5)
    assert abs(frac) < 0.5  # RTN group errors are nearly uncorrelated


def test_mixed_group_plan_bytes_exact_and_forward_matches_dequantized(setup, smollm2_small, tmp_path):
    model, units, stats, profile = setup
    problem = profile.to_problem()
    budget = Budget(target_bpw=4.0)
    plan = plan_from_solution(profile, solve(problem, budget), budget)
    by_matrix: dict[str, set[str]] = {}
    for c in plan.assignment:
        by_matrix.setdefault(parse_group_unit(c.unit).base, set()).add(c.candidate)
    assert any(len(cands) > 1 for cands in by_matrix.values())  # groups of one matrix differ
    quantized = apply_plan(model, plan, model_hash=smollm2_small.model_hash, hessians=dict(stats.hessians))
    assert quantized_bytes(quantized) == plan.nbytes
    module = quantized.get_submodule(units[0].name)
    assert isinstance(module, ColumnGroupLinear)
    assert [p.candidate.name for p in module.parts] == [
        c.candidate for c in plan.assignment if c.unit.startswith(units[0].name + "@")
    ]
    x = torch.randn(3, 5, module.in_features, generator=torch.Generator().manual_seed(0))
    reference = F.linear(x, module.dequantized_weight())
    # float32 sums in another order (per part, then added): ~1e-5 apart at worst; a wrong part is ~1e-1 off
    torch.testing.assert_close(module(x), reference, rtol=1e-5, atol=1e-4)
    assert (model.get_submodule(units[0].name).weight - module.dequantized_weight()).abs().max() > 0
    # the whole model: same logits as the float model with every planned matrix's dequantized weight
    reference_model = copy.deepcopy(model)
    with torch.no_grad():
        for unit in units:
            reference_model.get_submodule(unit.name).weight.copy_(
                quantized.get_submodule(unit.name).dequantized_weight()
            )
        ids = torch.arange(3, 19)[None, :]  # (1, 16)
        torch.testing.assert_close(
            quantized(input_ids=ids).logits, reference_model(input_ids=ids).logits, rtol=1e-4, atol=1e-4
        )
    written = save_quantized(quantized, plan, tmp_path / "out")
    assert written == plan.model_bytes


def test_bad_input_names_the_fix(setup, smollm2_small):
    model, units, stats, profile = setup
    with pytest.raises(InvalidInput, match="column groups take"):
        profile_column_groups(model, units[:1], stats, PALETTE, group_cols=128, meta={}, metric="weight_mse")
    problem = profile.to_problem()
    budget = Budget(target_bpw=4.0)
    plan = plan_from_solution(profile, solve(problem, budget), budget)
    partial = replace(plan, assignment=plan.assignment[1:])
    with pytest.raises(InvalidInput, match="plan every group"):
        apply_group_plan(model, partial, model_hash=smollm2_small.model_hash, hessians=dict(stats.hessians))
