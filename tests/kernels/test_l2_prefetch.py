from __future__ import annotations

import pytest
import torch

from bitalloc.kernels.gemv import GemvConfig, gemv
from bitalloc.kernels.layout import to_layout
from tests.kernels.helpers import random_qweight


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_prefetching_the_slice_gives_the_same_numbers(bits):
    """Each program asking L2 for the rest of its slice before the first step changes no output bit."""
    gen = torch.Generator().manual_seed(bits)
    layout = to_layout(random_qweight(bits, 128, False, (512, 1024), gen))
    x = torch.randn(1, 1024, generator=gen).half().cuda()
    for split_k in (1, 3):
        plain = gemv(x, layout, GemvConfig(block_n=64, split_k=split_k))
        for pdl in (False, True):
            sliced = gemv(x, layout, GemvConfig(block_n=64, split_k=split_k, l2_slice=1), pdl=pdl)
            if split_k == 1:
                assert torch.equal(plain, sliced)
            else:  # split-K adds partial sums in any order
                assert torch.allclose(plain, sliced, rtol=2e-3, atol=2e-3)
