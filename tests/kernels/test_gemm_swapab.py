from __future__ import annotations

import itertools

import pytest
import torch

from bitalloc.kernels.gemm_swapab import SwapABConfig, step_chunks, swapab, swapab_supports
from bitalloc.kernels.layout import nested_layout, to_layout
from bitalloc.kernels.reference import reference_linear
from bitalloc.quantizers import nested
from bitalloc.quantizers.candidate import Candidate
from tests.kernels.helpers import device, random_qweight, rel_err

CASES = list(itertools.product((2, 3, 4, 8), (32, 128), (True, False)))


def _poisoned(rows: int, cols: int) -> torch.Tensor:
    return torch.full((rows, cols), float("nan"), dtype=torch.float16, device=device())


@pytest.mark.parametrize(("bits", "group", "sym"), CASES)
def test_swapab_matches_reference(bits, group, sym):
    gen = torch.Generator().manual_seed(3000 * bits + group + sym)
    shape = (40, 256)  # 40 outputs: the last block is partly masked
    qw = random_qweight(bits, group, sym, shape, gen)
    layout = to_layout(qw)
    x = torch.randn(5, shape[1], generator=gen).half().to(device())  # 5 of 16 rows
    assert swapab_supports(x, layout)
    ref = reference_linear(x, qw, dtype=torch.float64)
    for config in (
        SwapABConfig(block_out=32, block_k=32, split_k=1),  # one chunk per step
        SwapABConfig(block_out=16, block_k=256, split_k=1),  # 2 chunks per step at group 128, 8 at group 32
        SwapABConfig(block_out=32, block_k=64, split_k=3),  # split-K zeroes the poisoned output
    ):
        out = _poisoned(5, shape[0])
        y = swapab(x, layout, config, out=out)
        assert y.data_ptr() == out.data_ptr()
        assert rel_err(y, ref) < 2e-3, config


def test_swapab_many_rows_and_auto_split():
    gen = torch.Generator().manual_seed(5)
    qw = random_qweight(2, 64, False, (48, 192), gen)  # in = 192: chunk 64, 3 chunks
    layout = to_layout(qw)
    assert layout.chunk == 64 and step_chunks(layout, 256) == 1  # 3 chunks: a step of 2 does not divide
    x = torch.randn(20, 192, generator=gen).half().to(device())  # two row blocks of 16
    y = swapab(x, layout, SwapABConfig(block_out=16, split_k=0))
    assert y.shape == (20, 48) and y.dtype == torch.float16
    assert rel_err(y, reference_linear(x, qw, dtype=torch.float64)) < 2e-3


def test_swapab_runs_gemm_for_formats_it_does_not_handle():
    gen = torch.Generator().manual_seed(6)
    qw5 = random_qweight(5, 32, True, (24, 128), gen)
    x = torch.randn(3, 128, generator=gen).half().to(device())
    assert not swapab_supports(x, to_layout(qw5))
    y = swapab(x, to_layout(qw5), SwapABConfig(split_k=2))
    assert rel_err(y, reference_linear(x, qw5, dtype=torch.float64)) < 2e-3
    x2 = torch.randn(3, 128, generator=gen).bfloat16().to(device())
    assert not swapab_supports(x2, to_layout(random_qweight(4, 32, True, (24, 128), gen)))
    cand = Candidate.parse("nest-w3g64-asym")
    packed = nested.quantize_many(torch.randn(24, 128, generator=gen), [cand], None)[0]
    s = {k: v.to(device()) for k, v in packed.stored.items()}
    layout = nested_layout(s["planes"], s["scales"], s.get("mins"), cand.group_size, (24, 128))
    assert not swapab_supports(x, layout)
    ref = x.cpu().double() @ nested.dequantize(packed).double().T
    assert rel_err(swapab(x, layout, SwapABConfig()).cpu(), ref) < 2e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the interpreter's bfloat16 dot is not exact")
def test_swapab_bfloat16_takes_gemm():
    gen = torch.Generator().manual_seed(11)
    qw = random_qweight(4, 64, False, (32, 128), gen)
    x = torch.randn(9, 128, generator=gen).bfloat16().to(device())
    y = swapab(x, to_layout(qw), SwapABConfig())
    assert y.dtype == torch.bfloat16
    assert rel_err(y, reference_linear(x, qw, dtype=torch.float64)) < 1e-2
