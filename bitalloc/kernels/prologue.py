"""The kernel before a batch-1 GEMV, folded into it: RMSNorm (``rmsnorm.py``) or SiLU-and-multiply
(``silu_mul.py``) of the GEMV's input, computed by each program for its own slice of the inputs.

A decode step is a chain of small kernels that each wait for the one before; a norm or activation launch
costs the step about a microsecond for a few kilobytes of work. With a prologue the GEMV reads the source row
(the residual stream, or the gate/up output), writes its slice of the transformed row into ``dest`` (the
buffer the standalone kernel would have filled), waits for its own threads (a CTA barrier makes the writes
visible to them) and runs its main loop on ``dest`` as before. Programs of one input slice write the same
values to the same addresses; together the programs cover every input, so ``dest`` holds the whole
transformed row when the GEMV ends, and later kernels of the step may read it. The arithmetic and rounding
are the standalone kernels' (float32 statistics, rounded to float16 before the weight's multiply).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from bitalloc.kernels.rmsnorm import rmsnorm
from bitalloc.kernels.silu_mul import silu_mul

NONE, RMSNORM, SILU_MUL = 0, 1, 2  # the kernels' PROLOGUE values
BLOCK = 1024  # elements per prologue step
ROW_BLOCK = 4096  # RMSNorm rows up to this many elements are loaded once (16 float32 per thread at 8 warps)


@dataclass(frozen=True)
class Prologue:
    """What a GEMV computes into its input row ``x (1, in)`` from ``source`` before its main loop: ``kind``
    ``"rmsnorm"`` (``source (1, in)``, ``weight (in,)``, ``eps``) or ``"silu_mul"`` (``source (1, 2 in)``:
    gate then up). Rows are contiguous float16."""

    kind: str
    source: torch.Tensor
    weight: torch.Tensor | None = None
    eps: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("rmsnorm", "silu_mul"):
            raise ValueError(f"prologue kind must be 'rmsnorm' or 'silu_mul', got {self.kind!r}")
        if self.kind == "rmsnorm" and self.weight is None:
            raise ValueError("an rmsnorm prologue needs the norm's weight")

    def check(self, x: torch.Tensor) -> None:
        """Raise ValueError unless ``x`` can receive this prologue's row."""
        width = x.numel()
        expected = width if self.kind == "rmsnorm" else 2 * width
        shapes_ok = self.source.numel() == expected and (self.weight is None or self.weight.numel() == width)
        if not (shapes_ok and self.source.is_contiguous() and x.is_contiguous()):
            raise ValueError(
                f"{self.kind} prologue: source {tuple(self.source.shape)} and input {tuple(x.shape)} must be "
                f"contiguous rows of {expected} and {width} elements"
            )

    @property
    def code(self) -> int:
        """The kernels' PROLOGUE constant."""
        return RMSNORM if self.kind == "rmsnorm" else SILU_MUL

    def kernel_args(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """``(source, weight, eps)`` kernel arguments (the source stands in for an absent weight)."""
        return self.source, self.source if self.weight is None else self.weight, float(self.eps)

    def apply(self, x: torch.Tensor, pdl: bool = False) -> torch.Tensor:
        """Fill ``x`` with the standalone kernel (for GEMV paths without a prologue)."""
        self.check(x)
        width = x.numel()
        if self.kind == "rmsnorm":
            return rmsnorm(self.source.view(1, width), self.weight, self.eps, x.view(1, width), pdl)
        return silu_mul(self.source.view(1, 2 * width), x.view(1, width), pdl=pdl)


@triton.jit
def run_prologue(src_ptr, w_ptr, x_ptr, eps, K, k_lo, k_hi, PROLOGUE: tl.constexpr, BLOCK: tl.constexpr):
    """Write inputs ``k_lo .. k_hi - 1`` of the transformed row to ``x_ptr`` (from ``src_ptr``), then a CTA
    barrier: every thread of the program reads them after."""
    offs = tl.arange(0, BLOCK)  # (BLOCK,)
    if PROLOGUE == 1 and BLOCK >= K:  # RMSNorm of a row in one block: one load, the slice stored
        v = tl.load(src_ptr + offs, mask=offs < K, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + offs, mask=offs < K, other=0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(v * v, axis=0) / K + eps)
        y = w * (v * rstd).to(w.dtype)
        tl.store(x_ptr + offs, y.to(x_ptr.dtype.element_ty), mask=(offs >= k_lo) & (offs < k_hi))
    elif PROLOGUE == 1:  # RMSNorm: the whole row's mean square, then this slice
        ss = tl.zeros((BLOCK,), dtype=tl.float32)
        for k in range(0, K, BLOCK):
            v = tl.load(src_ptr + k + offs, mask=k + offs < K, other=0.0).to(tl.float32)
            ss += v * v
        rstd = 1.0 / tl.sqrt(tl.sum(ss, axis=0) / K + eps)
        for k in range(k_lo, k_hi, BLOCK):
            mask = k + offs < k_hi
            v = tl.load(src_ptr + k + offs, mask=mask, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + k + offs, mask=mask, other=0.0)
            y = w * (v * rstd).to(w.dtype)
            tl.store(x_ptr + k + offs, y.to(x_ptr.dtype.element_ty), mask=mask)
    else:  # SiLU(gate) * up
        for k in range(k_lo, k_hi, BLOCK):
            mask = k + offs < k_hi
            gate = tl.load(src_ptr + k + offs, mask=mask, other=0.0)
            up = tl.load(src_ptr + K + k + offs, mask=mask, other=0.0)
            g = gate.to(tl.float32)
            act = (g / (1.0 + tl.exp(-g))).to(up.dtype)
            tl.store(x_ptr + k + offs, (act * up).to(x_ptr.dtype.element_ty), mask=mask)
    tl.debug_barrier()


def prologue_block(in_features: int, kind: str) -> int:
    """Prologue step size for an input row of ``in_features``: RMSNorm rows up to ``ROW_BLOCK`` in one."""
    limit = ROW_BLOCK if kind == "rmsnorm" else BLOCK
    return min(limit, triton.next_power_of_2(in_features))
