from __future__ import annotations

import pytest
import torch

from bitalloc.kernels.argmax import argmax_row
from bitalloc.kernels.step_start import start_step
from tests.kernels.helpers import device


@pytest.mark.parametrize(("width", "scratch_shape"), [(64, (3, 100)), (4608, (2, 9000))])
def test_start_step_gathers_the_row_and_clears_the_scratch(width, scratch_shape):
    """Rows wider than one block (4608) and a scratch that ends inside a program's block."""
    gen = torch.Generator().manual_seed(width)
    embed = torch.randn(50, width, generator=gen).half().to(device())
    token = torch.tensor([37], device=device())
    hidden = torch.full((1, width), float("nan"), dtype=torch.float16, device=device())
    scratch = torch.full(scratch_shape, float("nan"), dtype=torch.float16, device=device())
    after = torch.full((5,), 7.0, dtype=torch.float16, device=device())
    buffer = torch.cat([scratch.view(-1), after])  # the scratch, then elements it must not touch
    start_step(embed, token, hidden, buffer[: scratch.numel()].view(scratch_shape))
    assert torch.equal(hidden[0], embed[37])
    assert not buffer[: scratch.numel()].any() and torch.equal(buffer[scratch.numel() :], after)


def test_start_step_rejects_a_wrong_row():
    embed = torch.zeros(4, 8, dtype=torch.float16)
    with pytest.raises(ValueError, match="one row of one dtype"):
        start_step(embed, torch.zeros(1, dtype=torch.long), torch.zeros(1, 9, dtype=torch.float16), embed)


def test_argmax_advances_the_position_once():
    logits = torch.tensor([[0.5, 3.0, -1.0]], dtype=torch.float16, device=device())
    out = torch.zeros(1, dtype=torch.long, device=device())
    pos = torch.tensor([41], dtype=torch.int32, device=device())
    argmax_row(logits, out, advance=pos)
    assert out.item() == 1 and pos.item() == 42
    argmax_row(logits, out)
    assert pos.item() == 42
    with pytest.raises(ValueError, match="int32 position"):
        argmax_row(logits, out, advance=torch.zeros(1, dtype=torch.long, device=device()))
