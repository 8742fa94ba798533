"""Same-shape stacks: batched GPTQ equals the per-weight result; profiles keep the unit order."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitalloc.models.units import discover_units
from bitalloc.quantizers.candidate import Candidate
from bitalloc.quantizers.gptq import quantize_gptq_many, quantize_gptq_stack
from bitalloc.sensitivity.calibrate import calibrate
from bitalloc.sensitivity.profiler import profile_model, score_unit
from bitalloc.sensitivity.scoring import MetricInputs, profile_metrics
from bitalloc.sensitivity.stacking import shape_stacks

GPTQ = [f"gptq-w{b}g{g}-{s}" for b in (2, 3, 4, 8) for g in (32, 64) for s in ("sym", "asym")]


@settings(max_examples=12, deadline=None)
@given(
    n_weights=st.integers(1, 3),
    out=st.sampled_from([8, 24]),
    in_features=st.sampled_from([64, 128]),
    names=st.lists(st.sampled_from(GPTQ), min_size=1, max_size=4, unique=True),
    seed=st.integers(0, 2**16),
)
def test_stack_equals_one_weight_at_a_time(n_weights, out, in_features, names, seed):
    gen = torch.Generator().manual_seed(seed)
    cands = [Candidate.parse(n) for n in names]
    weights, hessians = [], []
    for _ in range(n_weights):
        x = torch.randn(256, in_features, generator=gen) * torch.rand(in_features, generator=gen) * 3
        weights.append(torch.randn(out, in_features, generator=gen))
        hessians.append(x.T @ x / 256)
    stacked = quantize_gptq_stack(weights, hessians, cands)
    assert len(stacked) == n_weights
    for w, h, got in zip(weights, hessians, stacked, strict=True):
        alone = quantize_gptq_many(w, h, cands)
        for a, b in zip(alone, got, strict=True):
            assert a.candidate == b.candidate and a.nbytes == b.nbytes
            assert torch.equal(a.dequantize(), b.dequantize())


@given(
    shapes=st.lists(st.sampled_from([(4, 8), (8, 8), (8, 4)]), min_size=1, max_size=12),
    copies=st.integers(1, 4),
    max_bytes=st.integers(1, 4096),
)
def test_shape_stacks_partition_by_shape_under_the_limit(shapes, copies, max_bytes):
    stacks = shape_stacks(shapes, [copies] * len(shapes), max_bytes)
    flat = [i for s in stacks for i in s]
    assert sorted(flat) == list(range(len(shapes)))  # every unit exactly once
    for s in stacks:
        assert len({shapes[i] for i in s}) == 1 and s == sorted(s)
        per_unit = 4 * shapes[s[0]][0] * shapes[s[0]][1] * copies
        assert len(s) == 1 or len(s) * per_unit <= max_bytes


def test_profiles_keep_unit_order_and_match_unit_by_unit(smollm2_small):
    model = smollm2_small.model
    units = discover_units(model)
    windows = torch.randint(0, 49152, (2, 32), generator=torch.Generator().manual_seed(0))
    stats = calibrate(model, units, windows, model_hash="m", corpus_hash="c", batch_size=2)
    palette = [Candidate.parse(n) for n in ("rtn-w3g64-asym", "gptq-w3g64-asym", "gptq-w4g32-sym")]
    profile = profile_model(model, units, stats, palette, meta={"unquantized_bytes": 0})
    assert list(dict.fromkeys(profile.table["unit"])) == [u.name for u in units]
    for unit in units[:3]:
        w = model.get_submodule(unit.name).weight.detach().float()
        alone = score_unit(w, stats.hessians[unit.name], palette, unit=unit.name)
        got = profile.table[profile.table["unit"] == unit.name]
        assert list(got["candidate"]) == [c.name for c, _, _ in alone]
        assert list(got["nbytes"]) == [n for _, _, n in alone]
        assert torch.allclose(torch.tensor(list(got["error"])), torch.tensor([e for _, e, _ in alone]))
    hessian = profile_metrics(
        model,
        units,
        palette,
        metrics=["hessian"],
        inputs=MetricInputs(calibration=stats),
        meta={"unquantized_bytes": 0},
    )["hessian"]
    assert list(hessian.table["unit"]) == list(profile.table["unit"])
    assert torch.allclose(
        torch.tensor(list(hessian.table["error"])), torch.tensor(list(profile.table["error"]))
    )
