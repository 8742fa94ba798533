"""Column sums of the squared round-to-nearest error, ``s[b, j] = Σ_rows (RTN(W_b) - W_b)²_j``, one pass.

What the closed-form scoring (``sensitivity/estimate.py``) needs per format: the torch path allocates about
ten full-size temporaries per format; this kernel reads each weight once per format and keeps nothing else.
One program per (weight, group of columns, split of the rows) walks its rows in ``BLOCK_R`` tiles: it fits
each row's grid exactly as ``quantizers/grid.py`` does (float16-rounded scale and minimum, zero scales
replaced by 1; the symmetric scale from the signed value of largest magnitude), rounds half to even and
adds the squared error of every column into its split's partial sums, which are added afterwards (no
atomics: deterministic).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bitalloc.errors import InvalidInput
from bitalloc.quantizers.grid import check_float16_range

TARGET_PROGRAMS = 1024  # split the rows until about this many programs run (132 SMs on an H100/H200)


@triton.jit
def _round_half_even(x):
    r = tl.floor(x + 0.5)
    tie = (r - x) == 0.5
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    return tl.where(tie & odd, r - 1.0, r)


@triton.jit
def _rtn_column_error_kernel(
    w_ptr,
    out_ptr,
    n_batch,
    rows,
    cols,
    rows_per_split,
    maxq,
    GROUP: tl.constexpr,
    SYM: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    b = tl.program_id(0)
    g = tl.program_id(1)
    split = tl.program_id(2)
    offs_c = g * GROUP + tl.arange(0, GROUP)  # (GROUP,)
    base = w_ptr + b.to(tl.int64) * rows * cols
    acc = tl.zeros((GROUP,), dtype=tl.float32)
    r_end = tl.minimum(rows, (split + 1) * rows_per_split)
    for r0 in range(split * rows_per_split, r_end, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)  # (BLOCK_R,)
        valid = offs_r[:, None] < r_end  # (BLOCK_R, 1)
        w = tl.load(
            base + offs_r[:, None] * cols + offs_c[None, :], mask=valid, other=0.0
        )  # (BLOCK_R, GROUP)
        hi = tl.max(w, axis=1)  # (BLOCK_R,)
        lo = tl.min(w, axis=1)
        if SYM:
            half = (maxq + 1.0) * 0.5
            extreme = tl.where(hi >= -lo, hi, lo)  # signed value of largest magnitude
            scale = tl.div_rn(-extreme, half).to(tl.float16).to(tl.float32)
            offset = tl.zeros_like(scale)
            zero = half
        else:
            scale = tl.div_rn(hi - lo, maxq).to(tl.float16).to(tl.float32)
            offset = lo.to(tl.float16).to(tl.float32)
            zero = 0.0
        scale = tl.where(scale == 0.0, 1.0, scale)
        q = _round_half_even(tl.div_rn(w - offset[:, None], scale[:, None])) + zero
        q = tl.minimum(tl.maximum(q, 0.0), maxq)
        err = (q - zero) * scale[:, None] + offset[:, None] - w
        acc += tl.sum(tl.where(valid, err * err, 0.0), axis=0)
    tl.store(out_ptr + (split.to(tl.int64) * n_batch + b) * cols + offs_c, acc)


def supports(group_size: int) -> bool:
    """Whether the kernel takes this group size (a power of two, at least 16)."""
    return group_size >= 16 and group_size & (group_size - 1) == 0


def rtn_column_errors(
    weights: torch.Tensor, bits: int, symmetric: bool, group_size: int, *, check_range: bool = True
) -> torch.Tensor:
    """``s[b, j] = Σ_rows δ²`` of RTN at (bits, symmetric, group_size): (batch, out, in) float32 ->
    (batch, in) float32. ``check_range=False`` skips the float16-range check (a full read and a device
    sync) for callers that checked the weights once for many formats."""
    if weights.dim() != 3 or weights.dtype != torch.float32:
        raise InvalidInput(
            f"weights must be (batch, out, in) float32, got {tuple(weights.shape)} {weights.dtype}"
        )
    n_batch, rows, cols = weights.shape
    if not supports(group_size) or cols % group_size:
        raise InvalidInput(f"group size {group_size} must be a power of two >= 16 dividing {cols}")
    if check_range:
        check_float16_range(weights)
    w = weights.contiguous()
    block_r = max(8, 4096 // group_size)
    programs = n_batch * (cols // group_size)
    splits = max(1, min(triton.cdiv(TARGET_PROGRAMS, programs), triton.cdiv(rows, 4 * block_r)))
    rows_per_split = triton.cdiv(triton.cdiv(rows, splits), block_r) * block_r
    splits = triton.cdiv(rows, rows_per_split)
    partial = torch.empty(splits, n_batch, cols, device=w.device, dtype=torch.float32)
    grid = (n_batch, cols // group_size, splits)
    _rtn_column_error_kernel[grid](
        w,
        partial,
        n_batch,
        rows,
        cols,
        rows_per_split,
        float(2**bits - 1),
        GROUP=group_size,
        SYM=symmetric,
        BLOCK_R=block_r,
        num_warps=4,
    )
    return partial.sum(dim=0)
