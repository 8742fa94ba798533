"""RTN quantization and the ``quantize`` entry point."""

from __future__ import annotations

import pytest
import torch

from bitalloc.errors import InvalidInput, UnsupportedShape
from bitalloc.quantizers.candidate import Candidate, QuantKind
from bitalloc.quantizers.packing import unpack_codes
from bitalloc.quantizers.quantize import quantize
from bitalloc.quantizers.rtn import quantize_rtn


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_rtn_layout_and_error(bits: int, symmetric: bool) -> None:
    w = torch.randn(24, 128, generator=torch.Generator().manual_seed(bits)) * 0.05
    cand = Candidate(QuantKind.RTN, bits, 64, symmetric)
    qw = quantize_rtn(w, cand)
    assert qw.shape == (24, 128)
    assert qw.scales.shape == (24, 2) and qw.scales.dtype == torch.float16
    assert (qw.mins is None) == symmetric
    codes = unpack_codes(qw.codes, bits, w.numel())
    assert int(codes.max()) < 2**bits
    err = (qw.dequantize() - w).abs().reshape(24, 2, 64)
    step = qw.scales.float().abs().unsqueeze(-1)  # (out, in/group, 1)
    # asymmetric: half a step; symmetric: the side opposite the extreme has one level less and may clip
    bound = 1.0 if symmetric else 0.51
    assert torch.all(err <= bound * step), float((err / step).max())
    if symmetric:  # inside the grid's span rounding is to the nearest level
        span = (2 ** (bits - 1) - 1) * step
        inside = w.reshape(24, 2, 64).abs() <= span
        assert torch.all(err[inside] <= 0.51 * step.expand_as(err)[inside])


def test_rtn_is_deterministic_and_ignores_input_dtype() -> None:
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(0)).half()
    cand = Candidate(QuantKind.RTN, 4, 32, False)
    a, b = quantize_rtn(w, cand), quantize_rtn(w.float(), cand)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.scales, b.scales)


def test_unsupported_group_names_unit() -> None:
    cand = Candidate(QuantKind.RTN, 4, 128, True)
    with pytest.raises(UnsupportedShape, match=r"model.layers.3.mlp.down_proj"):
        quantize_rtn(torch.zeros(4, 96), cand, unit="model.layers.3.mlp.down_proj")


def test_rtn_rejects_bad_inputs() -> None:
    with pytest.raises(InvalidInput, match="gptq"):
        quantize_rtn(torch.zeros(4, 32), Candidate(QuantKind.GPTQ, 4, 32, True))
    w = torch.zeros(4, 32)
    w[1, 2] = float("nan")
    with pytest.raises(InvalidInput, match="NaN"):
        quantize_rtn(w, Candidate(QuantKind.RTN, 4, 32, True))
    with pytest.raises(InvalidInput, match="2-D"):
        quantize_rtn(torch.zeros(4, 32, 1), Candidate(QuantKind.RTN, 4, 32, True))


def test_quantize_dispatches_by_kind() -> None:
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
    rtn = Candidate(QuantKind.RTN, 3, 32, False)
    assert torch.equal(quantize(w, rtn).codes, quantize_rtn(w, rtn).codes)
    gptq = Candidate(QuantKind.GPTQ, 3, 32, False)
    qw = quantize(w, gptq, hessian=torch.eye(64), unit="u")
    assert qw.candidate == gptq
    # a diagonal Hessian spreads no error: GPTQ rounds exactly like RTN
    assert torch.equal(qw.codes, quantize_rtn(w, rtn).codes)


def test_gptq_without_hessian_names_unit_and_calibration() -> None:
    cand = Candidate(QuantKind.GPTQ, 4, 32, True)
    with pytest.raises(InvalidInput, match=r"model\.layers\.0\.self_attn\.q_proj.*calibration"):
        quantize(torch.zeros(8, 64), cand, unit="model.layers.0.self_attn.q_proj")


def test_quantize_checks_shape_first() -> None:
    with pytest.raises(UnsupportedShape, match="'lm'"):
        quantize(torch.zeros(8, 48), Candidate(QuantKind.GPTQ, 4, 32, True), unit="lm")
