from __future__ import annotations

import pytest
import torch

from bitalloc.kernels.gemv import GemvConfig, gemv
from bitalloc.kernels.layout import to_layout
from bitalloc.kernels.prologue import Prologue
from bitalloc.kernels.reference import reference_linear
from bitalloc.kernels.rmsnorm import rmsnorm
from bitalloc.kernels.silu_mul import silu_mul
from tests.kernels.helpers import device, random_qweight, rel_err

CONFIGS = [  # split-K 3 over 12 chunks of 32 / 6 of 64: every program's slice, unevenly
    GemvConfig(block_n=16, split_k=1),
    GemvConfig(block_n=32, split_k=3),
    GemvConfig(block_n=16, split_k=5, prefetch=0, xs_rows=1),
    GemvConfig(block_n=16, split_k=2, half2=0),  # float32 kernel: the standalone launch fills x
]


def _poisoned(width: int) -> torch.Tensor:
    return torch.full((1, width), float("nan"), dtype=torch.float16, device=device())


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("config", CONFIGS)
def test_rmsnorm_prologue_equals_norm_then_gemv(bits, config):
    gen = torch.Generator().manual_seed(bits * 31 + config.split_k)
    shape = (40, 384)
    qw = random_qweight(bits, 32, False, shape, gen)
    hidden = (torch.randn(1, shape[1], generator=gen) * 3).half().to(device())
    weight = (torch.rand(shape[1], generator=gen) + 0.5).half().to(device())
    normed = rmsnorm(hidden, weight, 1e-5, _poisoned(shape[1]))
    ref = reference_linear(normed, qw, dtype=torch.float64)
    x = _poisoned(shape[1])  # the prologue must write every input the GEMV reads
    y = gemv(x, to_layout(qw), config, prologue=Prologue("rmsnorm", hidden, weight, 1e-5))
    assert rel_err(y, ref) < 2e-3
    assert (x.float() - normed.float()).abs().max() <= 2e-3 * normed.float().abs().max()


@pytest.mark.parametrize("config", CONFIGS)
def test_silu_mul_prologue_adds_into_the_residual(config):
    gen = torch.Generator().manual_seed(config.split_k)
    shape = (24, 256)
    qw = random_qweight(4, 64, True, shape, gen)
    gate_up = (torch.randn(1, 2 * shape[1], generator=gen) * 2).half().to(device())
    act = silu_mul(gate_up, _poisoned(shape[1]))
    residual = torch.randn(1, shape[0], generator=gen).half().to(device())
    expected = residual.double() + reference_linear(act, qw, dtype=torch.float64)
    x = _poisoned(shape[1])
    out = residual.clone()
    gemv(x, to_layout(qw), config, out=out, accumulate=True, prologue=Prologue("silu_mul", gate_up))
    assert rel_err(out, expected) < 2e-3
    assert torch.equal(x, act)  # same arithmetic as the standalone kernel, element by element


def test_prologue_rejects_mismatched_rows():
    x = torch.zeros(1, 64, dtype=torch.float16, device=device())
    with pytest.raises(ValueError, match="weight"):
        Prologue("rmsnorm", x)
    with pytest.raises(ValueError, match="128 and 64"):
        Prologue("silu_mul", x).check(x)
    with pytest.raises(ValueError, match="kind"):
        Prologue("gelu", x)
