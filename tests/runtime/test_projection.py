from __future__ import annotations

import pytest
import torch
from torch import nn

from bitalloc.errors import InvalidInput
from bitalloc.kernels.registry import Registry
from bitalloc.quantizers.candidate import Candidate
from bitalloc.quantizers.quant_linear import QuantLinear
from bitalloc.quantizers.quantize import quantize
from bitalloc.runtime.projection import DenseRun, FusedProjection, QuantRun
from tests.kernels.helpers import device, rel_err


def linear(out_features: int, in_features: int, cand: str | None, gen: torch.Generator) -> nn.Module:
    lin = nn.Linear(in_features, out_features, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(out_features, in_features, generator=gen) * 0.1)
    if cand is None:
        return lin.half().to(device())
    qw = quantize(lin.weight.detach().float(), Candidate.parse(cand))
    return QuantLinear.from_linear(lin, qw).to(device())


@pytest.mark.parametrize(
    ("formats", "runs"),
    [
        (["rtn-w4g32-asym"] * 3, [QuantRun]),
        (["rtn-w4g32-asym", "rtn-w3g32-asym", "rtn-w3g32-asym"], [QuantRun, QuantRun]),
        ([None, None], [DenseRun]),
        (["rtn-w2g32-sym", None, "rtn-w2g32-sym"], [QuantRun, DenseRun, QuantRun]),
    ],
)
def test_fused_projection_equals_its_members(formats, runs):
    gen = torch.Generator().manual_seed(len(formats) + len(runs))
    members = [linear(o, 64, f, gen) for o, f in zip((64, 32, 32)[: len(formats)], formats, strict=True)]
    fused = FusedProjection(members, Registry.load())
    assert fused.launches == len(runs)
    assert [type(r) for _, _, r in fused.runs] == runs
    x = torch.randn(1, 64, generator=gen).half().to(device())
    with torch.no_grad():
        ref = torch.cat([m(x).double() for m in members], -1)  # members on their own (reference) paths
    out = torch.full((1, fused.out_features), float("nan"), dtype=torch.float16, device=device())
    fused.run(x, out)
    assert rel_err(out, ref) < 3e-3
    base = torch.randn(1, fused.out_features, generator=gen).half().to(device())
    acc = base.clone()
    fused.run(x, acc, accumulate=True)
    assert rel_err(acc, ref + base.double()) < 3e-3


def test_fused_projection_rejects_mismatched_inputs():
    gen = torch.Generator().manual_seed(3)
    with pytest.raises(InvalidInput, match="share the input size"):
        FusedProjection([linear(32, 64, None, gen), linear(32, 128, None, gen)], Registry.load())
    with pytest.raises(InvalidInput, match=r"nn\.Linear, QuantLinear or PackedLinear"):
        FusedProjection([nn.Conv1d(4, 4, 1)], Registry.load())


@pytest.mark.parametrize(
    ("formats", "unit", "launches"),
    [
        (["rtn-w5g32-asym", "rtn-w6g32-asym", "rtn-w4g32-asym"], True, 1),  # 5/6-bit: no f16x2 kernel
        (["rtn-w4g32-asym", "rtn-w3g32-asym", None], True, 1),  # only the float16 run needs the normed row
        (["rtn-w4g32-asym", "rtn-w3g32-asym"], True, 0),  # both take the norm inside
        (["rtn-w4g32-asym", "rtn-w3g32-asym"], False, 1),  # a norm with a weight: never inside
    ],
)
def test_fused_projection_runs_a_standalone_norm_at_most_once(formats, unit, launches, monkeypatch):
    from bitalloc.kernels.row_norm import RowNorm

    gen = torch.Generator().manual_seed(len(formats) + unit)
    members = [linear(32, 64, f, gen) for f in formats]
    fused = FusedProjection(members, Registry.load())
    assert fused.launches == len(formats)
    weight = torch.ones(64) if unit else torch.rand(64, generator=gen) + 0.5
    weight = weight.half().to(device())
    norm = RowNorm.of(weight, 1e-6, torch.empty(1, 64, dtype=torch.float16, device=device()))
    x = torch.randn(1, 64, generator=gen).half().to(device())
    calls = []
    standalone = RowNorm.apply

    def counted(self, x, pdl=False):
        calls.append(1)
        return standalone(self, x, pdl)

    monkeypatch.setattr(RowNorm, "apply", counted)
    out = torch.full((1, fused.out_features), float("nan"), dtype=torch.float16, device=device())
    with torch.no_grad():
        fused.run(x, out, norm=norm)
        normed = (x.double() * torch.rsqrt(x.double().pow(2).mean() + 1e-6) * weight.double()).half()
        ref = torch.cat([m(normed).double() for m in members], -1)
    assert len(calls) == launches
    assert rel_err(out, ref) < 3e-3
