from __future__ import annotations

import pytest
import torch

from bitalloc.errors import InvalidInput
from bitalloc.kernels.gemv import GemvConfig, gemv
from bitalloc.kernels.l2_prefetch import MAX_RANGES, PrefetchRanges
from bitalloc.kernels.layout import to_layout
from tests.kernels.helpers import random_qweight


def test_ranges_follow_the_tensors_and_stop_at_the_cap():
    a, b, c = torch.zeros(100, dtype=torch.int32), torch.zeros(10, dtype=torch.float16), torch.zeros(3)
    whole = PrefetchRanges.of([a, b, c], cap_bytes=1 << 20)
    assert whole.spans == ((a.data_ptr(), 400), (b.data_ptr(), 20), (c.data_ptr(), 12))
    assert whole.nbytes == 432
    capped = PrefetchRanges.of([a, b, c], cap_bytes=410)
    assert capped.spans == ((a.data_ptr(), 400), (b.data_ptr(), 10))  # b cut, c left out
    args = capped.kernel_args()
    assert len(args) == 2 * MAX_RANGES and args[:4] == [a.data_ptr(), 400, b.data_ptr(), 10]
    assert args[4:] == [0] * 4


def test_bad_ranges_are_refused():
    with pytest.raises(InvalidInput, match="at most"):
        PrefetchRanges(((1, 1),) * (MAX_RANGES + 1))
    with pytest.raises(InvalidInput, match="positive"):
        PrefetchRanges(((0, 16),))
    with pytest.raises(InvalidInput, match="contiguous"):
        PrefetchRanges.of([torch.zeros(4, 4).t()], cap_bytes=1 << 20)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("bits", "dtype"), [(4, torch.float16), (3, torch.float16), (4, torch.bfloat16)])
def test_prefetching_gemv_gives_the_same_numbers(bits, dtype):
    """Asking L2 for other tensors' bytes (f16x2 and float32 paths) changes no output bit."""
    gen = torch.Generator().manual_seed(bits)
    layout = to_layout(random_qweight(bits, 128, False, (512, 1024), gen))
    other = to_layout(random_qweight(bits, 128, False, (1000, 2048), gen))  # the "next launch"
    tensors = [t for t in (other.a, other.b, other.scales, other.mins) if t is not None]
    spans = PrefetchRanges.of(tensors, cap_bytes=1 << 30)
    x = torch.randn(1, 1024, generator=gen).to(dtype).cuda()
    config = GemvConfig(block_n=64, split_k=1)
    plain = gemv(x, layout, config)
    fetched = gemv(x, layout, config, prefetch=spans)
    assert torch.equal(plain, fetched)
    for pdl in (False, True):  # the rest of each program's own slice asked for before the first step
        sliced = gemv(x, layout, GemvConfig(block_n=64, split_k=1, l2_slice=1), pdl=pdl)
        assert torch.equal(plain, sliced)
    if dtype != torch.float16:
        return  # bfloat16 adds in a float32 buffer: rounded once, not twice
    acc = torch.ones(1, 512, dtype=dtype, device="cuda")
    gemv(x, layout, config, out=acc, accumulate=True, prefetch=spans)
    assert torch.equal(acc, torch.ones_like(acc) + plain)
