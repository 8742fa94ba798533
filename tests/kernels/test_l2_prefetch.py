from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch

from bitalloc.kernels.gemv import GemvConfig, gemv
from bitalloc.kernels.layout import to_layout
from tests.kernels.helpers import random_qweight, rel_err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_prefetching_the_slice_gives_the_same_numbers(bits):
    """Each program asking L2 for the rest of its slice before the first step changes no output bit."""
    gen = torch.Generator().manual_seed(bits)
    layout = to_layout(random_qweight(bits, 128, False, (512, 1024), gen))
    x = torch.randn(1, 1024, generator=gen).half().cuda()
    for split_k, preload in itertools.product((1, 3), (0, 1)):
        config = GemvConfig(block_n=64, split_k=split_k, prefetch=preload)
        plain = gemv(x, layout, config)
        for pdl in (False, True):
            sliced = gemv(x, layout, replace(config, l2_slice=1), pdl=pdl)
            if split_k == 1:
                assert torch.equal(plain, sliced), (split_k, preload, pdl)
            else:  # split-K adds float16 partial sums in any order
                assert rel_err(sliced, plain) < 2e-3, (split_k, preload, pdl)
