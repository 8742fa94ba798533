"""GEMV for batch 1: ``y (1, out) = x (1, in) W^T``, codes dequantized in registers, optional split-K.

Each program owns BLOCK_N output rows and a 1/SPLIT_K slice of the input dimension. Per BLOCK_K step
and each group slice of it it forms ``d = sum_k q_k x_k`` on the raw codes and adds
``scale * d + offset * sum_k x_k``: the dequantization costs two multiply-adds per row and group, not per
weight. SPLIT_K > 1 accumulates float32 partial sums with atomics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from bitalloc.kernels._unpack import gather_codes, load_codes, load_group
from bitalloc.kernels.layout import KernelLayout


@dataclass(frozen=True)
class GemvConfig:
    """Launch parameters of the GEMV kernel."""

    block_n: int = 32
    block_k: int = 128
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 2
    unpack: int = 2  # 0: load words and reshape; 1: gather each code's word; 2: shift-peel (block_k <= group)


@triton.jit
def _peel_step(
    x_ptr,
    p0_ptr,
    p1_ptr,
    offs_n,
    mask_n,
    stride_p0,
    stride_p1,
    k0,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    B0: tl.constexpr,
    B1: tl.constexpr,
):
    """``(sum_k q_k x_k per row, sum_k x_k)`` over [k0, k0 + BLOCK_K) without reshaping any tile.

    Word w of plane 0 holds codes k0 + w * PW0 + j; step j of the unrolled loop takes code j of every
    word at once, its plane-1 bits from word (w * PW0 + j) // PW1 at the matching shift.
    """
    PW0: tl.constexpr = 32 // B0
    W: tl.constexpr = BLOCK_K // PW0
    offs_w = tl.arange(0, W)  # (W,)
    words0 = tl.load(
        p0_ptr + offs_n[:, None] * stride_p0 + (k0 // PW0 + offs_w)[None, :], mask=mask_n[:, None], other=0
    )
    if B1 > 0:
        PW1: tl.constexpr = 32 // B1
        R: tl.constexpr = PW1 // PW0  # plane-0 words per plane-1 word
        words1 = tl.load(
            p1_ptr + offs_n[:, None] * stride_p1 + (k0 // PW1 + offs_w // R)[None, :],
            mask=mask_n[:, None],
            other=0,
        )
        base1 = (offs_w % R) * PW0  # (W,) code index inside the plane-1 word at j = 0
    d2 = tl.zeros((BLOCK_N, W), dtype=tl.float32)
    xs = tl.zeros((W,), dtype=tl.float32)
    for j in tl.static_range(PW0):
        x = tl.load(x_ptr + k0 + offs_w * PW0 + j).to(tl.float32)  # (W,)
        q = (words0 >> (j * B0)) & ((1 << B0) - 1)  # (BLOCK_N, W)
        if B1 > 0:
            q = q | (((words1 >> ((base1 + j) * B1)[None, :]) & ((1 << B1) - 1)) << B0)
        # exact int -> float without the quarter-rate I2F: 2**23 + q as float bits, minus 2**23
        qf = (q | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
        d2 += qf * x[None, :]
        xs += x
    return tl.sum(d2, axis=1), tl.sum(xs, axis=0)


@triton.jit
def _gemv_kernel(
    x_ptr,
    p0_ptr,
    p1_ptr,
    s_ptr,
    m_ptr,
    y_ptr,
    N,
    K,
    stride_p0,
    stride_p1,
    stride_s,
    BITS: tl.constexpr,
    B0: tl.constexpr,
    B1: tl.constexpr,
    GROUP,
    SYM,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K,
    GK: tl.constexpr,
    NG: tl.constexpr,
    UNPACK: tl.constexpr,
):
    # GK = min(BLOCK_K, GROUP) inputs per group slice, NG = BLOCK_K // GK group slices per step
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    mask_n = offs_n < N
    n_blocks = K // BLOCK_K
    kb_start = pid_k * n_blocks // SPLIT_K
    kb_end = (pid_k + 1) * n_blocks // SPLIT_K
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for kb in range(kb_start, kb_end):
        k0 = kb * BLOCK_K
        if UNPACK == 2:  # words loaded once, codes peeled off by an unrolled shift loop; BLOCK_K <= GROUP
            d, xsum = _peel_step(
                x_ptr, p0_ptr, p1_ptr, offs_n, mask_n, stride_p0, stride_p1, k0, BLOCK_N, BLOCK_K, B0, B1
            )
            scale, offset = load_group(s_ptr, m_ptr, offs_n, mask_n, stride_s, k0 // GROUP, BITS, SYM)
            acc += scale * d + offset * xsum
        elif UNPACK == 1:  # one group per step: BLOCK_K <= GROUP
            offs_k = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_ptr + offs_k).to(tl.float32)  # (BLOCK_K,)
            q = gather_codes(p0_ptr, p1_ptr, offs_n, mask_n, stride_p0, stride_p1, offs_k, B0, B1, False)
            d = tl.sum(q.to(tl.float32) * x[None, :], axis=1)  # (BLOCK_N,)
            scale, offset = load_group(s_ptr, m_ptr, offs_n, mask_n, stride_s, k0 // GROUP, BITS, SYM)
            acc += scale * d + offset * tl.sum(x, axis=0)
        else:
            x = tl.load(x_ptr + k0 + tl.arange(0, BLOCK_K)).to(tl.float32)  # (BLOCK_K,)
            x = tl.reshape(x, (NG, GK))
            q = load_codes(p0_ptr, p1_ptr, offs_n, mask_n, stride_p0, stride_p1, k0, BLOCK_N, BLOCK_K, B0, B1)
            q = tl.reshape(q, (BLOCK_N, NG, GK))
            d = tl.sum(q.to(tl.float32) * x[None, :, :], axis=2)  # (BLOCK_N, NG)
            g = k0 // GROUP + tl.arange(0, NG)  # (NG,)
            scale, offset = load_group(
                s_ptr, m_ptr, offs_n[:, None], mask_n[:, None], stride_s, g[None, :], BITS, SYM
            )
            acc += tl.sum(scale * d + offset * tl.sum(x, axis=1)[None, :], axis=1)
    if SPLIT_K == 1:
        tl.store(y_ptr + offs_n, acc.to(y_ptr.dtype.element_ty), mask=mask_n)
    else:
        tl.atomic_add(y_ptr + offs_n, acc, mask=mask_n)


def gemv(
    x: torch.Tensor, layout: KernelLayout, config: GemvConfig, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``x (in,) or (1, in) -> (1, out)`` in x's dtype; the caller has checked the format and shapes.

    ``out`` (used when split_k is 1: contiguous, x's dtype, ``out`` elements) receives the result.
    """
    out_features, in_features = layout.shape
    x = x.reshape(-1).contiguous()  # (in,)
    block_k = 1 << (min(config.block_k, in_features).bit_length() - 1)  # power of two
    while in_features % block_k:
        block_k //= 2
    if config.unpack in (1, 2):
        block_k = min(block_k, layout.group_size)
    group_k = min(block_k, layout.group_size)
    split_k = max(1, min(config.split_k, in_features // block_k))
    if split_k == 1:
        y = torch.empty(out_features, dtype=x.dtype, device=x.device) if out is None else out.view(-1)
    else:
        y = torch.zeros(out_features, dtype=torch.float32, device=x.device)
    p0 = layout.planes[0]
    p1 = layout.planes[1] if len(layout.planes) > 1 else p0
    widths = layout.plane_bits
    mins = layout.mins if layout.mins is not None else layout.scales
    grid = (triton.cdiv(out_features, config.block_n), split_k)
    _gemv_kernel[grid](
        x,
        p0,
        p1,
        layout.scales,
        mins,
        y,
        out_features,
        in_features,
        p0.stride(0),
        p1.stride(0),
        layout.scales.stride(0),
        BITS=layout.bits,
        B0=widths[0],
        B1=widths[1] if len(widths) > 1 else 0,
        GROUP=layout.group_size,
        SYM=int(layout.symmetric),
        BLOCK_N=config.block_n,
        BLOCK_K=block_k,
        SPLIT_K=split_k,
        GK=group_k,
        NG=block_k // group_k,
        UNPACK=config.unpack,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return y.to(x.dtype).view(1, out_features)
