from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch

from bitalloc.kernels._pdl import pdl_supported
from bitalloc.kernels.gemv import L2_SLICE_MAX_BYTES, GemvConfig, gemv, slice_prefetch_on
from bitalloc.kernels.layout import to_layout
from tests.kernels.helpers import random_qweight, rel_err


def test_the_slice_prefetch_runs_only_with_pdl_on_weights_l2_holds():
    on = GemvConfig(l2_slice=1)
    assert slice_prefetch_on(on, True, L2_SLICE_MAX_BYTES)
    assert not slice_prefetch_on(on, True, L2_SLICE_MAX_BYTES + 1)  # fetched twice when L2 cannot hold it
    assert not slice_prefetch_on(on, False, 1 << 20)  # no wait to fill
    assert not slice_prefetch_on(GemvConfig(), True, 1 << 20)  # off unless the tuned entry says so


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or not pdl_supported(torch.device("cuda")),
    reason="needs a GPU with programmatic dependent launch (Hopper or later)",
)
@pytest.mark.parametrize(("bits", "sym"), [(2, False), (3, False), (4, True), (8, False)])
def test_prefetching_the_slice_gives_the_same_numbers(bits, sym):
    """Each program asking L2 for (the rest of) its slice before the PDL wait changes no output bit."""
    gen = torch.Generator().manual_seed(bits)
    layout = to_layout(random_qweight(bits, 128, sym, (512, 1024), gen))
    x = torch.randn(1, 1024, generator=gen).half().cuda()
    for split_k, preload in itertools.product((1, 3), (0, 1)):
        config = GemvConfig(block_n=64, split_k=split_k, prefetch=preload)
        plain = gemv(x, layout, config, pdl=True)
        sliced = gemv(x, layout, replace(config, l2_slice=1), pdl=True)
        if split_k == 1:
            assert torch.equal(plain, sliced), (split_k, preload)
        else:  # split-K adds float16 partial sums in any order
            assert rel_err(sliced, plain) < 2e-3, (split_k, preload)
