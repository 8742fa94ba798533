"""The GEMV's last program normalises (rmsnorm) or activates (silu_mul) its finished output."""

from __future__ import annotations

import pytest
import torch

from bitalloc.kernels.gemv import GemvConfig, InputNorm, gemv
from bitalloc.kernels.gemv_epilogue import Epilogue
from bitalloc.kernels.layout import to_layout
from bitalloc.kernels.reference import reference_linear
from tests.kernels.helpers import device, random_qweight, rel_err


def llama_rmsnorm(y: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm's rounding order on a finished float16 row."""
    yf = y.float()
    return weight * (yf * torch.rsqrt(yf.pow(2).mean(-1, keepdim=True) + eps)).to(weight.dtype)


def silu_mul_of(y: torch.Tensor) -> torch.Tensor:
    gate, up = y.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate.float()).to(up.dtype) * up


@pytest.mark.parametrize(
    ("bits", "split_k", "accumulate"), [(4, 1, True), (3, 3, True), (2, 2, False), (8, 4, True)]
)
def test_rmsnorm_epilogue_normalises_the_finished_row(bits, split_k, accumulate):
    """48 outputs in blocks of 16 (3 x split_k programs, one ticket): the norm sees every program's adds."""
    gen = torch.Generator().manual_seed(7 * bits + split_k)
    qw = random_qweight(bits, 32, bits == 8, (48, 128), gen)
    x = torch.randn(1, 128, generator=gen).half().to(device())
    residual = torch.randn(1, 48, generator=gen).half().to(device())
    weight = (torch.rand(48, generator=gen) + 0.5).half().to(device())
    tickets = torch.zeros(4, dtype=torch.int32, device=device())
    for _ in range(2):  # the tickets are reset for the next call
        out = residual.clone()
        normed = torch.full_like(residual, float("nan"))  # poisoned: every element must be written
        epilogue = Epilogue("rmsnorm", normed, tickets, weight, 1e-5)
        config = GemvConfig(block_n=16, split_k=split_k)
        y = gemv(x, to_layout(qw), config, out=out, accumulate=accumulate, epilogue=epilogue)
        ref = reference_linear(x, qw, dtype=torch.float64) + (residual.double() if accumulate else 0)
        assert rel_err(y, ref) < 2e-3
        assert rel_err(normed, llama_rmsnorm(y, weight, 1e-5)) < 2e-3
        assert not tickets.any()


@pytest.mark.parametrize(("block_n", "split_k"), [(16, 1), (16, 3), (32, 2)])
def test_silu_mul_epilogue_activates_each_block_pair(block_n, split_k):
    """gate/up of 64 each: group g waits for gate block g and up block g (2 x split_k tickets)."""
    gen = torch.Generator().manual_seed(block_n + split_k)
    qw = random_qweight(3, 32, False, (128, 64), gen)
    x = torch.randn(1, 64, generator=gen).half().to(device())
    tickets = torch.zeros(8, dtype=torch.int32, device=device())
    for _ in range(2):
        out = torch.zeros(1, 128, dtype=torch.float16, device=device())
        act = torch.full((1, 64), float("nan"), dtype=torch.float16, device=device())
        config = GemvConfig(block_n=block_n, split_k=split_k)
        y = gemv(
            x, to_layout(qw), config, out=out, accumulate=True, epilogue=Epilogue("silu_mul", act, tickets)
        )
        assert rel_err(y, reference_linear(x, qw, dtype=torch.float64)) < 2e-3
        assert rel_err(act, silu_mul_of(y)) < 2e-3
        assert not tickets.any()


def test_epilogues_that_cannot_run_are_refused_by_name():
    gen = torch.Generator().manual_seed(3)
    qw = random_qweight(4, 32, False, (96, 64), gen)
    layout = to_layout(qw)
    x = torch.randn(1, 64, generator=gen).half().to(device())
    out = torch.zeros(1, 96, dtype=torch.float16, device=device())
    tickets = torch.zeros(8, dtype=torch.int32, device=device())
    act = torch.zeros(1, 48, dtype=torch.float16, device=device())
    with pytest.raises(ValueError, match="multiple of the block"):  # 48 gate rows in blocks of 32
        gemv(x, layout, GemvConfig(block_n=32), out=out, epilogue=Epilogue("silu_mul", act, tickets))
    with pytest.raises(ValueError, match="weight of 96"):
        gemv(x, layout, GemvConfig(block_n=32), out=out, epilogue=Epilogue("rmsnorm", out.clone(), tickets))
    with pytest.raises(ValueError, match="f16x2"):
        normed = torch.zeros(1, 96, dtype=torch.bfloat16, device=device())
        epilogue = Epilogue("rmsnorm", normed, tickets, torch.ones(96, dtype=torch.bfloat16, device=device()))
        gemv(x.bfloat16(), layout, GemvConfig(block_n=32), out=normed.clone(), epilogue=epilogue)
    with pytest.raises(ValueError, match="unknown epilogue"):
        gemv(x, layout, GemvConfig(block_n=32), out=out, epilogue=Epilogue("gelu", act, tickets))


@pytest.mark.parametrize(
    ("bits", "split_k", "xs_rows", "prefetch"), [(4, 1, 0, 1), (3, 2, 1, 1), (2, 1, 1, 0), (8, 3, 0, 0)]
)
def test_input_norm_equals_rmsnorm_then_gemv(bits, split_k, xs_rows, prefetch):
    """The GEMV reads the raw residual row and normalises it itself (every program its own rstd)."""
    gen = torch.Generator().manual_seed(11 * bits + split_k)
    qw = random_qweight(bits, 32, bits == 2, (40, 256), gen)
    hidden = (torch.randn(1, 256, generator=gen) * 8).half().to(device())  # far from unit RMS
    weight = (torch.rand(256, generator=gen) + 0.5).half().to(device())
    config = GemvConfig(block_n=16, split_k=split_k, xs_rows=xs_rows, prefetch=prefetch)
    out = torch.full((1, 40), float("nan"), dtype=torch.float16, device=device())
    y = gemv(hidden, to_layout(qw), config, out=out, norm=InputNorm(weight, 1e-5))
    ref = reference_linear(llama_rmsnorm(hidden, weight, 1e-5), qw, dtype=torch.float64)
    assert rel_err(y, ref) < 3e-3
    assert rel_err(y, reference_linear(hidden, qw, dtype=torch.float64)) > 0.5  # the norm was applied
    with pytest.raises(ValueError, match="vector of 256"):
        gemv(hidden, to_layout(qw), config, norm=InputNorm(weight[:128], 1e-5))
