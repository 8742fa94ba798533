"""RMSNorm folded into the batch-1 GEMV that reads it: ``y = W (w * x / rms(x))`` from the raw row ``x``.

A decode step is a chain of small kernels that each wait for the one before; a norm launch costs the step
about a microsecond for a few kilobytes of work. Folded in, the f16x2 GEMV (``gemv_h2.py``) multiplies each
activation pair by the norm's weight pair as it loads it (one ``mul.rn.f16x2``), and scales its result by
``1 / rms(x)`` at the end, computed from the whole row loaded once after the wait (its loads overlap the main
loop; the reduction comes after it). Split-K partial sums scale the same. Rounding differs from
``LlamaRMSNorm`` (``w * round(x / rms)``) by the order of the two products: about one float16 ulp per input.
Paths without the fold (cuBLAS, the float32 GEMV, the reference) get the normed row from the standalone
kernel (``rmsnorm.py``), written to ``dest``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from bitalloc.kernels.rmsnorm import rmsnorm

ROW_BLOCK = 4096  # rows up to this many inputs are loaded once, before the GEMV's main loop


@dataclass(frozen=True)
class RowNorm:
    """RMSNorm of a projection's input row: ``weight (in,)``, ``eps``, and ``dest (1, in)`` that receives the
    normed row where a path cannot fold it in."""

    weight: torch.Tensor
    eps: float
    dest: torch.Tensor

    def check(self, x: torch.Tensor) -> None:
        """Raise ValueError unless ``x (1, in)`` matches the weight and ``dest``."""
        width = self.weight.numel()
        if x.numel() != width or self.dest.numel() != width or not x.is_contiguous():
            raise ValueError(
                f"row norm: input {tuple(x.shape)}, weight {tuple(self.weight.shape)} and dest "
                f"{tuple(self.dest.shape)} must be contiguous rows of the same width"
            )

    def apply(self, x: torch.Tensor, pdl: bool = False) -> torch.Tensor:
        """The standalone launch: ``dest = rmsnorm(x)``; returns ``dest``."""
        self.check(x)
        width = x.numel()
        return rmsnorm(x.view(1, width), self.weight, self.eps, self.dest.view(1, width), pdl)


def row_block(in_features: int) -> int:
    """Block of the folded norm's row statistics (the whole row when it has at most ``ROW_BLOCK`` inputs)."""
    return min(ROW_BLOCK, triton.next_power_of_2(in_features))


@triton.jit
def load_row(x_ptr, K, BLOCK: tl.constexpr):
    """The row's first BLOCK inputs as float32 (issued early; ``row_rstd`` consumes them)."""
    offs = tl.arange(0, BLOCK)
    return tl.load(x_ptr + offs, mask=offs < K, other=0.0).to(tl.float32)


@triton.jit
def row_rstd(x_ptr, first, K, eps, BLOCK: tl.constexpr):
    """``1 / sqrt(mean(x^2) + eps)`` of the row from its first block ``first`` (``load_row``) and the rest."""
    ss = first * first
    offs = tl.arange(0, BLOCK)
    for k in range(BLOCK, K, BLOCK):
        v = tl.load(x_ptr + k + offs, mask=k + offs < K, other=0.0).to(tl.float32)
        ss += v * v
    return 1.0 / tl.sqrt(tl.sum(ss, axis=0) / K + eps)
