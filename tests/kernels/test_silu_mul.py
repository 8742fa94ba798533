from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bitalloc.kernels.silu_mul import silu_mul
from tests.kernels.helpers import device


@pytest.mark.parametrize(("rows", "inter", "block"), [(1, 1536, 1024), (2, 100, 32)])
def test_silu_mul_matches_llama_mlp(rows, inter, block):
    gen = torch.Generator().manual_seed(inter)
    gate_up = (torch.randn(rows, 2 * inter, generator=gen) * 4).half().to(device())
    out = torch.full((rows, inter), float("nan"), dtype=torch.float16, device=device())
    y = silu_mul(gate_up, out, block=block)
    ref = F.silu(gate_up[:, :inter].float()).half().float() * gate_up[:, inter:].float()
    assert torch.isfinite(y).all()
    assert (y.float() - ref).abs().max() <= 2e-3 * ref.abs().max()


def test_silu_mul_rejects_odd_width():
    with pytest.raises(ValueError, match="do not match"):
        silu_mul(torch.zeros(1, 7, dtype=torch.float16), torch.zeros(1, 3, dtype=torch.float16))
