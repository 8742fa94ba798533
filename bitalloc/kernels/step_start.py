"""A decode step's first launch: the token's embedding row into the residual stream, and the per-layer
projection outputs that the GEMVs add into cleared, in one launch (in place of a memset and a gather).

It is an ordinary launch on purpose: it waits for the whole previous step, which is what lets the step's
kernels read the position and the cached keys and values before their PDL wait (``_pdl.py``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

CLEAR_BLOCK = 4096  # scratch elements per program


@triton.jit
def _step_start_kernel(
    embed_ptr, token_ptr, hidden_ptr, scratch_ptr, H, S, BLOCK: tl.constexpr, H_BLOCK: tl.constexpr
):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,)
    tl.store(scratch_ptr + offs, tl.zeros((BLOCK,), scratch_ptr.dtype.element_ty), mask=offs < S)
    if pid == 0:
        row = embed_ptr + tl.load(token_ptr) * H
        for h in range(0, H, H_BLOCK):
            cols = h + tl.arange(0, H_BLOCK)  # (H_BLOCK,)
            tl.store(hidden_ptr + cols, tl.load(row + cols, mask=cols < H), mask=cols < H)


def start_step(embed: torch.Tensor, token: torch.Tensor, hidden: torch.Tensor, scratch: torch.Tensor) -> None:
    """``hidden (1, H) = embed (V, H)[token]`` (``token``: one int64 id on the device) and ``scratch`` (any
    contiguous shape) zeroed."""
    width = embed.shape[1]
    contiguous = embed.is_contiguous() and hidden.is_contiguous() and scratch.is_contiguous()
    if hidden.numel() != width or token.numel() != 1 or not contiguous or embed.dtype != hidden.dtype:
        raise ValueError(
            f"start_step: embed {tuple(embed.shape)}, token {tuple(token.shape)} and hidden "
            f"{tuple(hidden.shape)} must be a table, one id and one row of one dtype ({embed.dtype}, "
            f"{hidden.dtype}); embed, hidden and scratch contiguous"
        )
    size = scratch.numel()
    grid = (max(1, triton.cdiv(size, CLEAR_BLOCK)),)
    _step_start_kernel[grid](
        embed,
        token,
        hidden,
        scratch,
        width,
        size,
        BLOCK=CLEAR_BLOCK,
        H_BLOCK=min(4096, triton.next_power_of_2(width)),
    )
