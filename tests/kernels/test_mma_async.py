"""GPU tests of the asynchronous-wgmma kernel (``mma_async.py``) against the torch reference; skipped on CPU
(``test_mma_async_compile.py`` compiles it for sm_90 there)."""

from __future__ import annotations

import itertools

import pytest
import torch

from bitalloc.kernels.fragment_layout import to_fragment_layout
from bitalloc.kernels.reference import reference_linear
from tests.kernels.helpers import random_qweight, rel_err

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize(
    ("bits", "group", "sym", "batch"),
    list(itertools.product((2, 4, 8), (32, 128), (True, False), (5, 16)))
    + list(itertools.product((3,), (64, 128), (True, False), (9, 16))),
)
def test_async_mma_matches_reference(bits, group, sym, batch):
    from bitalloc.kernels.mma_async import AsyncMmaConfig, async_mma_matmul

    gen = torch.Generator().manual_seed(bits * 100 + group + 7 * sym + batch)
    shape = (128, 7 * group)  # 7 steps: odd and even slices, and one slice of all
    qw = random_qweight(bits, group, sym, shape, gen)
    layout = to_fragment_layout(qw)
    x = torch.randn(batch, shape[1], generator=gen).half().cuda()
    ref = reference_linear(x, qw, dtype=torch.float64)
    for config in (
        AsyncMmaConfig(1, 4, 2, 2),  # slices of 3 and 4 steps in chunks of 2 (odd and even ends)
        AsyncMmaConfig(2, 4, 1, 8),  # one slice of 7 in one chunk
        AsyncMmaConfig(1, 8, 0, 4),
    ):
        out = torch.full((batch, shape[0]), float("nan"), dtype=torch.float16, device="cuda")
        y = async_mma_matmul(x, layout, config, out=out)
        assert y.data_ptr() == out.data_ptr()
        assert rel_err(y, ref) < 2e-3, config


@gpu
@pytest.mark.gpu
def test_async_mma_rejects_partial_warpgroups():
    from bitalloc.kernels.mma_async import AsyncMmaConfig, async_mma_matmul

    qw = random_qweight(4, 128, False, (96, 256), torch.Generator().manual_seed(0))
    x = torch.randn(16, 256, device="cuda").half()
    with pytest.raises(ValueError, match="multiple of 64"):
        async_mma_matmul(x, to_fragment_layout(qw), AsyncMmaConfig(1, 4))
    with pytest.raises(ValueError, match="power of two"):
        async_mma_matmul(x, to_fragment_layout(qw), AsyncMmaConfig(1, 4, 0, 6))
