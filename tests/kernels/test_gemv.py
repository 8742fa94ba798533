from __future__ import annotations

import itertools

import pytest
import torch

from bitalloc.kernels.gemv import GemvConfig, gemv
from bitalloc.kernels.layout import nested_layout, to_layout
from bitalloc.kernels.reference import reference_linear
from bitalloc.quantizers import nested
from bitalloc.quantizers.candidate import Candidate
from tests.kernels.helpers import device, random_qweight, rel_err

CASES = list(itertools.product((2, 3, 4, 5, 6, 8), (32, 128), (True, False)))


@pytest.mark.parametrize(("bits", "group", "sym"), CASES)
def test_gemv_matches_reference(bits, group, sym):
    gen = torch.Generator().manual_seed(1000 * bits + group + sym)
    shape = (40, 256)  # 40 rows: the last block of 16 is partly masked
    qw = random_qweight(bits, group, sym, shape, gen)
    layout = to_layout(qw)
    x = torch.randn(1, shape[1], generator=gen).half().to(device())
    ref = reference_linear(x, qw, dtype=torch.float64)
    out = torch.full((1, shape[0]), float("nan"), dtype=torch.float16, device=device())  # poisoned
    y = gemv(x, layout, GemvConfig(block_n=16, block_k=64, split_k=1), out=out)
    assert y.data_ptr() == out.data_ptr()
    assert rel_err(y, ref) < 2e-3
    y2 = gemv(x, layout, GemvConfig(block_n=32, block_k=256, split_k=1))  # several chunks per step
    assert y2.shape == (1, shape[0]) and y2.dtype == torch.float16
    assert rel_err(y2, ref) < 2e-3
    out3 = torch.full((1, shape[0]), float("nan"), dtype=torch.float16, device=device())
    y3 = gemv(x, layout, GemvConfig(block_n=16, block_k=32, split_k=3), out=out3)  # split-K zeroes out
    assert rel_err(y3, ref) < 2e-3
    y4 = gemv(x, layout, GemvConfig(block_n=32, split_k=2, prefetch=0, xs_rows=1))  # f16x2 kernel variants
    assert rel_err(y4, ref) < 2e-3
    y5 = gemv(x, layout, GemvConfig(block_n=16, half2=0))  # float32 path on float16 activations
    assert rel_err(y5, ref) < 2e-3


def test_gemv_bfloat16_and_uneven_split():
    gen = torch.Generator().manual_seed(7)
    qw = random_qweight(4, 32, False, (24, 96), gen)  # 3 blocks of 32 split 2 ways
    x = torch.randn(1, 96, generator=gen).bfloat16().to(device())
    y = gemv(x, to_layout(qw), GemvConfig(block_n=8, block_k=32, split_k=2))
    assert y.dtype == torch.bfloat16
    assert rel_err(y, reference_linear(x, qw, dtype=torch.float64)) < 1e-2


@pytest.mark.parametrize("name", ["nest-w8g32-asym", "nest-w3g64-sym", "nest-w4g128-asym"])
def test_nested_gemv_reads_top_bits(name):
    cand = Candidate.parse(name)
    gen = torch.Generator().manual_seed(cand.bits)
    packed = nested.quantize_many(torch.randn(24, 256, generator=gen), [cand], None)[0]
    s = {k: v.to(device()) for k, v in packed.stored.items()}
    layout = nested_layout(s["planes"], s["scales"], s.get("mins"), cand.group_size, (24, 256))
    x = torch.randn(1, 256, generator=gen).half()
    ref = x.double() @ nested.dequantize(packed).double().T
    y = gemv(x.to(device()), layout, GemvConfig(block_n=16, block_k=128))
    assert rel_err(y.cpu(), ref) < 2e-3


@pytest.mark.parametrize(
    ("bits", "dtype", "split_k", "half2"),
    [(4, torch.float16, 1, 1), (3, torch.float16, 2, 1), (2, torch.float16, 1, 0), (4, torch.bfloat16, 2, 1)],
)
def test_gemv_accumulate_adds_into_out(bits, dtype, split_k, half2):
    """accumulate=True adds the product to what out holds (the decoder's fused residual add)."""
    gen = torch.Generator().manual_seed(31 * bits + split_k)
    qw = random_qweight(bits, 32, False, (48, 128), gen)
    x = torch.randn(1, 128, generator=gen).to(dtype).to(device())
    residual = torch.randn(1, 48, generator=gen).to(dtype).to(device())
    out = residual.clone()
    config = GemvConfig(block_n=16, split_k=split_k, half2=half2)
    y = gemv(x, to_layout(qw), config, out=out, accumulate=True)
    assert y.data_ptr() == out.data_ptr()
    ref = residual.double() + reference_linear(x, qw, dtype=torch.float64)
    assert rel_err(y, ref) < (1e-2 if dtype == torch.bfloat16 else 2e-3)
    with pytest.raises(ValueError, match="out="):
        gemv(x, to_layout(qw), config, accumulate=True)
