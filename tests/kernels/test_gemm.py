from __future__ import annotations

import itertools

import pytest
import torch

from bitalloc.kernels.gemm import GemmConfig, gemm
from bitalloc.kernels.layout import nested_layout, to_layout
from bitalloc.kernels.reference import reference_linear
from bitalloc.quantizers import nested
from bitalloc.quantizers.candidate import Candidate
from tests.kernels.helpers import device, random_qweight, rel_err

CASES = list(itertools.product((2, 3, 4, 5, 6, 8), (32, 128), (True, False)))


@pytest.mark.parametrize(("bits", "group", "sym"), CASES)
def test_gemm_matches_reference(bits, group, sym):
    gen = torch.Generator().manual_seed(2000 * bits + group + sym)
    shape = (40, 256)
    qw = random_qweight(bits, group, sym, shape, gen)
    layout = to_layout(qw)
    x = torch.randn(5, shape[1], generator=gen).half().to(device())  # 5 rows: partly masked block
    ref = reference_linear(x, qw, dtype=torch.float64)
    out = torch.full((5, shape[0]), float("nan"), dtype=torch.float16, device=device())  # poisoned
    y = gemm(x, layout, GemmConfig(block_m=16, block_n=16, split_k=1), out=out)
    assert y.data_ptr() == out.data_ptr()
    assert rel_err(y, ref) < 2e-3
    out2 = torch.full((5, shape[0]), float("nan"), dtype=torch.float16, device=device())
    y2 = gemm(x, layout, GemmConfig(block_m=16, block_n=32, split_k=3), out=out2)
    assert rel_err(y2, ref) < 2e-3


def test_nested_gemm_reads_top_bits():
    cand = Candidate.parse("nest-w3g64-asym")
    gen = torch.Generator().manual_seed(3)
    packed = nested.quantize_many(torch.randn(24, 128, generator=gen), [cand], None)[0]
    s = {k: v.to(device()) for k, v in packed.stored.items()}
    layout = nested_layout(s["planes"], s["scales"], s.get("mins"), cand.group_size, (24, 128))
    x = torch.randn(3, 128, generator=gen).half()
    ref = x.double() @ nested.dequantize(packed).double().T
    y = gemm(x.to(device()), layout, GemmConfig(block_m=16, block_n=16))
    assert rel_err(y.cpu(), ref) < 2e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the interpreter's bfloat16 dot is not exact")
def test_gemm_bfloat16_many_rows():
    gen = torch.Generator().manual_seed(11)
    qw = random_qweight(3, 64, False, (32, 128), gen)
    x = torch.randn(33, 128, generator=gen).bfloat16().to(device())
    y = gemm(x, to_layout(qw), GemmConfig(block_m=16, block_n=16))
    assert y.shape == (33, 32) and y.dtype == torch.bfloat16
    assert rel_err(y, reference_linear(x, qw, dtype=torch.float64)) < 1e-2
