from __future__ import annotations

import pytest
import torch

from bitalloc.kernels.rmsnorm import rmsnorm
from tests.kernels.helpers import device


def llama_rmsnorm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm, written out: float32 statistics, rounded, times the weight."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return w * h.to(x.dtype)


@pytest.mark.parametrize(("rows", "hidden"), [(1, 576), (3, 64), (1, 2048)])
def test_rmsnorm_matches_llama(rows, hidden):
    gen = torch.Generator().manual_seed(hidden + rows)
    x = (torch.randn(rows, hidden, generator=gen) * 3).half().to(device())
    w = (torch.rand(hidden, generator=gen) + 0.5).half().to(device())
    out = torch.full_like(x, float("nan"))  # poisoned
    y = rmsnorm(x, w, 1e-5, out)
    ref = llama_rmsnorm(x, w, 1e-5)
    assert y.data_ptr() == out.data_ptr()
    assert torch.isfinite(y).all()
    assert (y.float() - ref.float()).abs().max() <= 2e-3 * ref.float().abs().max()


def test_rmsnorm_rejects_mismatched_shapes():
    x = torch.zeros(1, 64, dtype=torch.float16, device=device())
    with pytest.raises(ValueError, match="weight"):
        rmsnorm(x, torch.ones(32, dtype=torch.float16, device=device()), 1e-5, torch.empty_like(x))
