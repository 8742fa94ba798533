"""A weightless RMSNorm inside the batch-1 GEMV that reads it: ``y = W x / rms(x)`` from the raw row ``x``.

A decode step is a chain of small kernels that each wait for the one before; a norm launch costs the step
about a microsecond (its load, reduction and store lie on the critical path) for a few kilobytes of work.
A norm whose weight is all ones (``models/norm_folding.py`` moves a model's norm weights into the next
linears' columns before quantization, as QuaRot does) needs no per-input work: as ``W (x / r) = (W x) / r``,
the f16x2 GEMV (``gemv_h2.py``) runs its main loop on the raw row, loads the whole row once after the PDL wait
(those loads overlap the main loop) and scales its result by ``1 / rms(x)`` at the end; split-K partial sums
scale the same. Rounding differs from ``LlamaRMSNorm`` (the normed row rounded to float16 first) by about
one float16 ulp per input. The GEMV's float16 lane sums of the raw row stay in range while every
``|x| < RAW_ROW_LIMIT``; ``LlamaDecoder.prefill`` warns when a prompt's residual stream goes above. Norms with
a weight, and paths without the fold (cuBLAS, the float32 GEMV, the reference), get the normed row from the
standalone kernel (``rmsnorm.py``), written to ``dest``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from bitalloc.kernels._half2 import pair_squares
from bitalloc.kernels.rmsnorm import rmsnorm

ROW_BLOCK = 4096  # rows up to this many inputs are loaded once, before the GEMV's main loop
# |x| below this keeps every f16x2 lane sum of the GEMV (at most 16 terms q / R x with |q / R| < 1) under
# float16's 65504; a trained model's residual stream can exceed it in a few channels ("massive activations")
RAW_ROW_LIMIT = 4000.0


@dataclass(frozen=True, eq=False)
class RowNorm:
    """RMSNorm of a projection's input row: ``weight (in,)``, ``eps``, ``dest (1, in)`` that receives the
    normed row where it cannot be folded, and ``unit``: the weight is all ones (only then may a GEMV fold it).
    Build with ``of`` (which reads the weight once, on the host)."""

    weight: torch.Tensor
    eps: float
    dest: torch.Tensor
    unit: bool

    @classmethod
    def of(cls, weight: torch.Tensor, eps: float, dest: torch.Tensor) -> RowNorm:
        """The norm of ``weight``, with ``unit`` read from it (a device sync: call it outside a capture)."""
        return cls(weight, float(eps), dest, bool((weight == 1).all()))

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
        rmsnorm(x.view(1, width), self.weight, self.eps, self.dest.view(1, width), pdl)
        return self.dest


def row_block(in_features: int) -> int:
    """Block of the folded norm's row statistics (the whole row when it has at most ``ROW_BLOCK`` inputs)."""
    return min(ROW_BLOCK, triton.next_power_of_2(in_features))


@triton.jit
def load_row(x2_ptr, K, BLOCK: tl.constexpr):
    """The row's first BLOCK inputs as BLOCK / 2 int32 pairs of float16 (issued early; half the registers
    of float32 values; ``row_rstd`` consumes them)."""
    offs = tl.arange(0, BLOCK // 2)
    return tl.load(x2_ptr + offs, mask=offs < K // 2, other=0)


@triton.jit
def row_rstd(x2_ptr, first, K, eps, BLOCK: tl.constexpr, ASM: tl.constexpr):
    """``1 / sqrt(mean(x^2) + eps)`` of the row (K even) from its first block ``first`` (``load_row``) and the
    rest, squares summed in float32."""
    ss = pair_squares(first, ASM)
    offs = tl.arange(0, BLOCK // 2)
    for k in range(BLOCK // 2, K // 2, BLOCK // 2):
        ss += pair_squares(tl.load(x2_ptr + k + offs, mask=k + offs < K // 2, other=0), ASM)
    return 1.0 / tl.sqrt(tl.sum(ss, axis=0) / K + eps)
