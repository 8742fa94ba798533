"""RMSNorm of a few rows in one launch: ``y = w * (x / rms(x))`` with Llama's rounding order.

Matches ``LlamaRMSNorm``: the mean of squares and the normalisation in float32, the normalised row rounded
to the input dtype, then multiplied by the weight in that dtype. One program per row.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from bitalloc.kernels._pdl import pdl_launch


@triton.jit
def _rmsnorm_kernel(x_ptr, w_ptr, y_ptr, H, eps, BLOCK: tl.constexpr, PDL: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)  # (BLOCK,)
    mask = offs < H
    if PDL:
        gdc_launch_dependents()
    w = tl.load(w_ptr + offs, mask=mask, other=0.0)
    if PDL:
        gdc_wait()
    x = tl.load(x_ptr + row * H + offs, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / H + eps)
    y = w * (x * rstd).to(w.dtype)
    tl.store(y_ptr + row * H + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def rmsnorm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, out: torch.Tensor, pdl: bool = False
) -> torch.Tensor:
    """``x (rows, H) -> out (rows, H)``, both contiguous in the weight's dtype; ``pdl``: launched with
    programmatic dependent launch (``_pdl.py``)."""
    rows, hidden = x.shape
    if weight.shape != (hidden,) or out.shape != x.shape:
        raise ValueError(f"rmsnorm: x {tuple(x.shape)}, weight {tuple(weight.shape)}, out {tuple(out.shape)}")
    block = triton.next_power_of_2(hidden)
    warps = min(16, max(1, block // 256))
    _rmsnorm_kernel[(rows,)](
        x, weight, out, hidden, eps, BLOCK=block, PDL=pdl, num_warps=warps, **pdl_launch(pdl)
    )
    return out
