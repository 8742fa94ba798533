"""The gated MLP's activation in one launch: ``y = silu(gate) * up`` from the fused gate/up output.

Matches ``LlamaMLP``: SiLU in float32 rounded to the input dtype, then multiplied by ``up`` in that dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from bitalloc.kernels._pdl import pdl_launch


@triton.jit
def _silu_mul_kernel(gu_ptr, y_ptr, INTER, BLOCK: tl.constexpr, PDL: tl.constexpr):
    row = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,)
    mask = offs < INTER
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
    gate = tl.load(gu_ptr + row * 2 * INTER + offs, mask=mask, other=0.0)
    up = tl.load(gu_ptr + row * 2 * INTER + INTER + offs, mask=mask, other=0.0)
    g = gate.to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(up.dtype)
    tl.store(y_ptr + row * INTER + offs, (act * up).to(y_ptr.dtype.element_ty), mask=mask)


def silu_mul(gate_up: torch.Tensor, out: torch.Tensor, block: int = 1024, pdl: bool = False) -> torch.Tensor:
    """``gate_up (rows, 2 I)`` (gate first, then up) ``-> out (rows, I)``, contiguous; ``pdl``: launched
    with programmatic dependent launch (``_pdl.py``)."""
    rows, width = gate_up.shape
    if width % 2 or out.shape != (rows, width // 2):
        raise ValueError(f"silu_mul: gate_up {tuple(gate_up.shape)} and out {tuple(out.shape)} do not match")
    inter = width // 2
    grid = (triton.cdiv(inter, block), rows)
    _silu_mul_kernel[grid](gate_up, out, inter, BLOCK=block, PDL=pdl, num_warps=4, **pdl_launch(pdl))
    return out
