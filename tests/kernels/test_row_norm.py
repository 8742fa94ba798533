from __future__ import annotations

import pytest
import torch

from bitalloc.kernels.gemv import GemvConfig, gemv
from bitalloc.kernels.layout import to_layout
from bitalloc.kernels.reference import reference_linear
from bitalloc.kernels.rmsnorm import rmsnorm
from bitalloc.kernels.row_norm import RowNorm
from tests.kernels.helpers import device, random_qweight, rel_err

CONFIGS = [
    GemvConfig(block_n=16, split_k=1),
    GemvConfig(block_n=32, split_k=3),  # each split scales its partial sum
    GemvConfig(block_n=16, split_k=2, prefetch=0, xs_rows=1),
]


def _hidden(width: int, gen: torch.Generator) -> torch.Tensor:
    """A residual-stream row far from unit scale."""
    return (torch.randn(1, width, generator=gen) * 3).half().to(device())


def _poisoned(width: int) -> torch.Tensor:
    return torch.full((1, width), float("nan"), dtype=torch.float16, device=device())


def _ones(width: int) -> torch.Tensor:
    return torch.ones(width, dtype=torch.float16, device=device())


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("config", CONFIGS)
def test_weightless_norm_in_the_gemv_equals_norm_then_gemv(bits, config):
    gen = torch.Generator().manual_seed(bits * 31 + config.split_k)
    shape = (40, 384)
    qw = random_qweight(bits, 32, bits % 2 == 0, shape, gen)
    hidden = _hidden(shape[1], gen)
    normed = rmsnorm(hidden, _ones(shape[1]), 1e-5, _poisoned(shape[1]))
    ref = reference_linear(normed, qw, dtype=torch.float64)
    dest = _poisoned(shape[1])
    residual = torch.randn(1, shape[0], generator=gen).half().to(device())
    out = residual.clone()
    norm = RowNorm.of(_ones(shape[1]), 1e-5, dest)
    assert norm.unit
    gemv(hidden, to_layout(qw), config, out=out, accumulate=True, norm=norm)
    assert rel_err(out - residual, ref) < 3e-3
    assert dest.isnan().all()  # folded: the standalone norm did not run


def test_eps_counts_for_a_small_row():
    """A row of |x| ~ 1e-3 under eps 1e-2: eps dominates the mean of squares (a kernel without it would
    scale by ~1000 instead of ~10)."""
    gen = torch.Generator().manual_seed(9)
    shape = (32, 256)
    qw = random_qweight(4, 32, False, shape, gen)
    hidden = (torch.randn(1, shape[1], generator=gen) * 1e-3).half().to(device())
    normed = rmsnorm(hidden, _ones(shape[1]), 1e-2, _poisoned(shape[1]))
    norm = RowNorm.of(_ones(shape[1]), 1e-2, _poisoned(shape[1]))
    y = gemv(hidden, to_layout(qw), GemvConfig(block_n=16, split_k=2), norm=norm)
    assert rel_err(y, reference_linear(normed, qw, dtype=torch.float64)) < 3e-3


def test_a_norm_with_a_weight_runs_standalone_first():
    """A weight that is not all ones cannot be folded: the standalone norm fills ``dest`` and the GEMV reads
    it (the f16x2 kernel too)."""
    gen = torch.Generator().manual_seed(3)
    shape = (24, 256)
    qw = random_qweight(4, 64, False, shape, gen)
    hidden = _hidden(shape[1], gen)
    weight = (torch.rand(shape[1], generator=gen) + 0.5).half().to(device())
    normed = rmsnorm(hidden, weight, 1e-6, _poisoned(shape[1]))
    dest = _poisoned(shape[1])
    norm = RowNorm.of(weight, 1e-6, dest)
    assert not norm.unit
    y = gemv(hidden, to_layout(qw), GemvConfig(block_n=16, split_k=2), norm=norm)
    assert torch.equal(dest, normed)
    assert rel_err(y, reference_linear(normed, qw, dtype=torch.float64)) < 3e-3


def test_a_row_longer_than_one_block_and_the_float32_path():
    """4224 inputs: the norm's statistics take two blocks; the float32 kernel (no fold) reads the standalone
    norm's row in ``dest``."""
    gen = torch.Generator().manual_seed(5)
    shape = (16, 4224)
    qw = random_qweight(4, 128, False, shape, gen)
    hidden = _hidden(shape[1], gen)
    normed = rmsnorm(hidden, _ones(shape[1]), 1e-6, _poisoned(shape[1]))
    ref = reference_linear(normed, qw, dtype=torch.float64)
    folded = gemv(
        hidden,
        to_layout(qw),
        GemvConfig(block_n=16, split_k=4),
        norm=RowNorm.of(_ones(shape[1]), 1e-6, _poisoned(shape[1])),
    )
    assert rel_err(folded, ref) < 3e-3
    dest = _poisoned(shape[1])
    norm = RowNorm.of(_ones(shape[1]), 1e-6, dest)
    plain = gemv(hidden, to_layout(qw), GemvConfig(block_n=16, half2=0), norm=norm)
    assert rel_err(plain, ref) < 2e-3
    assert torch.equal(dest, normed)


def test_row_norm_rejects_mismatched_rows():
    x = torch.zeros(1, 64, dtype=torch.float16, device=device())
    norm = RowNorm.of(_ones(32), 1e-5, x)
    with pytest.raises(ValueError, match="same width"):
        norm.apply(x)
