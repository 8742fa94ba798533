"""Greedy next token: the index of the largest logit of one row, in one program (first index on ties).

Blocks of up to 32768 logits; within a block ``tl.argmax`` keeps the first maximum and a later block wins only
when strictly larger, so the result is torch's ``argmax`` for finite logits (NaN logits are not ranked).
With ``advance`` the same program then adds one to a decoder's position (the step's last write, no launch).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from bitalloc.kernels._pdl import pdl_launch

MAX_BLOCK = 32768


@triton.jit
def _argmax_kernel(x_ptr, out_ptr, pos_ptr, N, BLOCK: tl.constexpr, ADVANCE: tl.constexpr, PDL: tl.constexpr):
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
    best = tl.max(tl.full((1,), float("-inf"), tl.float32), axis=0)
    best_i = tl.sum(tl.zeros((1,), tl.int32), axis=0)
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)  # (BLOCK,)
        v = tl.load(x_ptr + offs, mask=offs < N, other=float("-inf")).to(tl.float32)
        top = tl.max(v, axis=0)
        top_i = tl.argmax(v, axis=0, tie_break_left=True) + start
        take = top > best
        best_i = tl.where(take, top_i, best_i)
        best = tl.where(take, top, best)
    tl.store(out_ptr, best_i.to(out_ptr.dtype.element_ty))
    if ADVANCE:
        tl.store(pos_ptr, tl.load(pos_ptr) + 1)


def argmax_row(
    logits: torch.Tensor, out: torch.Tensor, pdl: bool = False, advance: torch.Tensor | None = None
) -> torch.Tensor:
    """``out (1,)`` (int64) = argmax of ``logits (1, V)`` or ``(V,)``; ``pdl``: see ``_pdl.py``; ``advance``
    (a one-element int32 position), when given, is incremented after."""
    if logits.numel() != logits.shape[-1] or out.numel() != 1:
        raise ValueError(
            f"argmax_row takes one row of logits and a one-element output, got {tuple(logits.shape)}"
        )
    n = logits.shape[-1]
    block = min(triton.next_power_of_2(n), MAX_BLOCK)
    if advance is not None and (advance.numel() != 1 or advance.dtype != torch.int32):
        raise ValueError(
            f"argmax_row advances a one-element int32 position, got {advance.dtype} {advance.shape}"
        )
    pos = out if advance is None else advance
    _argmax_kernel[(1,)](
        logits,
        out,
        pos,
        n,
        BLOCK=block,
        ADVANCE=advance is not None,
        PDL=pdl,
        num_warps=16,
        **pdl_launch(pdl),
    )
    return out
