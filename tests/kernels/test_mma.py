"""GPU tests of the tensor-core kernel (``mma.py``) against the torch reference; skipped on CPU (Gluon has no
interpreter: ``test_fragment_layout.py`` checks its mapping and PTX on the CPU)."""

from __future__ import annotations

import itertools

import pytest
import torch

from bitalloc.kernels.fragment_layout import to_fragment_layout
from bitalloc.kernels.reference import reference_linear
from tests.kernels.helpers import random_qweight, rel_err

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize(
    ("bits", "group", "sym", "batch"),
    list(itertools.product((2, 4, 8), (32, 64, 128), (True, False), (1, 5, 16)))
    + list(itertools.product((3,), (64, 128), (True, False), (1, 5, 16))),
)
def test_mma_matches_reference(bits, group, sym, batch):
    from bitalloc.kernels.mma import MmaConfig, mma_matmul

    gen = torch.Generator().manual_seed(bits * 100 + group + 7 * sym + batch)
    shape = (96, 4 * group)  # 6 tiles: fewer than one program of 8 tiles, split-K over 4 groups
    qw = random_qweight(bits, group, sym, shape, gen)
    layout = to_fragment_layout(qw)
    x = torch.randn(batch, shape[1], generator=gen).half().cuda()
    ref = reference_linear(x, qw, dtype=torch.float64)
    for config in (
        MmaConfig(1, 2, 1),
        MmaConfig(1, 1, 3),
        MmaConfig(2, 4, 0),
        MmaConfig(1, 4, 2, wgmma=True),
    ):
        out = torch.full((batch, shape[0]), float("nan"), dtype=torch.float16, device="cuda")
        y = mma_matmul(x, layout, config, out=out)
        assert y.data_ptr() == out.data_ptr()
        assert rel_err(y, ref) < 2e-3, config


@pytest.mark.parametrize(
    ("shape", "bits"), [((4096, 4096), 4), ((14336, 4096), 2), ((4096, 14336), 8), ((8192, 4096), 3)]
)
def test_mma_on_large_shapes(shape, bits):
    from bitalloc.kernels.mma import MmaConfig, mma_matmul

    gen = torch.Generator().manual_seed(shape[0] + bits)
    qw = random_qweight(bits, 128, False, shape, gen)
    layout = to_fragment_layout(qw)
    for batch in (1, 16):
        x = torch.randn(batch, shape[1], generator=gen).half().cuda()
        y = mma_matmul(x, layout, MmaConfig(wgmma=batch > 8))
        assert rel_err(y, reference_linear(x, qw, dtype=torch.float64)) < 2e-3
