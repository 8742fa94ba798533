"""QuantLinear: exact bytes for every palette entry and a forward equal to the dequantized matmul."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bitalloc.errors import InvalidInput
from bitalloc.quantizers.candidate import default_palette
from bitalloc.quantizers.quant_linear import QuantLinear
from bitalloc.quantizers.quantize import quantize

SHAPE = (48, 192)  # groups 32 and 64 divide 192; group 128 does not and is left out
PALETTE = [c for c in default_palette() if SHAPE[1] % c.group_size == 0]


@pytest.mark.parametrize("candidate", PALETTE, ids=lambda c: c.name)
def test_stored_bytes_equal_candidate_bytes(candidate) -> None:
    gen = torch.Generator().manual_seed(candidate.bits * 1000 + candidate.group_size)
    linear = nn.Linear(SHAPE[1], SHAPE[0], bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(SHAPE, generator=gen))
    x = torch.randn(64, SHAPE[1], generator=gen)
    hessian = x.T @ x / x.shape[0]  # (in, in)
    qweight = quantize(linear.weight.detach(), candidate, hessian=hessian)
    layer = QuantLinear.from_linear(linear, qweight)

    assert qweight.nbytes == candidate.nbytes(SHAPE)
    assert layer.storage_bytes() == candidate.nbytes(SHAPE)
    expected = F.linear(x, qweight.dequantize())
    assert torch.equal(layer(x), expected)


def test_bias_is_kept_and_counted() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 8, bias=True)
    candidate = PALETTE[0]
    qweight = quantize(linear.weight.detach(), candidate, hessian=torch.eye(64))
    layer = QuantLinear.from_linear(linear, qweight)
    x = torch.randn(3, 64)
    assert layer.storage_bytes() == candidate.nbytes((8, 64)) + 8 * 4
    assert torch.allclose(layer(x), F.linear(x, qweight.dequantize(), linear.bias), atol=1e-6)


def test_half_cast_keeps_the_float16_grid_bit_exact() -> None:
    torch.manual_seed(1)
    linear = nn.Linear(64, 16, bias=False)
    candidate = next(c for c in PALETTE if not c.symmetric)
    layer = QuantLinear.from_linear(linear, quantize(linear.weight.detach(), candidate))
    before = {k: v.clone() for k, v in layer.qweight.tensors().items()}
    layer.to(torch.bfloat16)
    after = layer.qweight.tensors()
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
    y = layer(torch.randn(2, 64, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16


def test_shape_mismatch_is_refused() -> None:
    qweight = quantize(torch.randn(16, 64), PALETTE[0], hessian=torch.eye(64))
    with pytest.raises(InvalidInput, match="does not fit"):
        QuantLinear.from_linear(nn.Linear(32, 16), qweight)
