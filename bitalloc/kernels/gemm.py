"""GEMM for batch 2-256: ``y (M, out) = x (M, in) W^T`` on the tensor cores, optional split-K.

Each BLOCK_K step (BLOCK_K divides the group size) multiplies the activations by the raw codes, exact
in float16/bfloat16 since codes are below 256, and folds the group's scale and offset into the float32
accumulator: ``acc += (x q^T) * scale + rowsum(x) * offset``. SPLIT_K > 1 adds float32 partials
with atomics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from bitalloc.kernels._unpack import gather_codes, load_codes, load_group
from bitalloc.kernels.layout import KernelLayout


@dataclass(frozen=True)
class GemmConfig:
    """Launch parameters of the GEMM kernel."""

    block_m: int = 16
    block_n: int = 64
    block_k: int = 64
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3
    unpack: int = 1  # 0: load words once and reshape; 1: gather each code's word as a (k, n) tile


@triton.jit
def _to_float(q, dtype: tl.constexpr):
    """Codes (< 256) to float16/bfloat16 exactly with integer ops and one subtraction, not I2F."""
    if dtype == tl.float16:
        return ((q.to(tl.int16) | 0x6400).to(tl.float16, bitcast=True) - 1024.0).to(tl.float16)  # 1024 + q
    else:
        return q.to(dtype)


@triton.jit
def _gemm_kernel(
    x_ptr,
    p0_ptr,
    p1_ptr,
    s_ptr,
    m_ptr,
    y_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_ym,
    stride_p0,
    stride_p1,
    stride_s,
    BITS: tl.constexpr,
    B0: tl.constexpr,
    B1: tl.constexpr,
    GROUP,
    SYM,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K,
    UNPACK: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    offs_k = tl.arange(0, BLOCK_K)  # (BLOCK_K,)
    mask_m = offs_m < M
    mask_n = offs_n < N
    n_blocks = K // BLOCK_K
    kb_start = pid_k * n_blocks // SPLIT_K
    kb_end = (pid_k + 1) * n_blocks // SPLIT_K
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(kb_start, kb_end):
        k0 = kb * BLOCK_K
        x = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + (k0 + offs_k)[None, :], mask=mask_m[:, None], other=0.0
        )
        if UNPACK == 1:
            qt = gather_codes(p0_ptr, p1_ptr, offs_n, mask_n, stride_p0, stride_p1, k0 + offs_k, B0, B1, True)
            d = tl.dot(x, _to_float(qt, x.dtype))  # (BLOCK_M, BLOCK_N) float32
        else:
            q = load_codes(p0_ptr, p1_ptr, offs_n, mask_n, stride_p0, stride_p1, k0, BLOCK_N, BLOCK_K, B0, B1)
            d = tl.dot(x, tl.trans(_to_float(q, x.dtype)))  # (BLOCK_M, BLOCK_N) float32
        scale, offset = load_group(s_ptr, m_ptr, offs_n, mask_n, stride_s, k0 // GROUP, BITS, SYM)
        xsum = tl.sum(x.to(tl.float32), axis=1)  # (BLOCK_M,)
        acc += d * scale[None, :] + xsum[:, None] * offset[None, :]
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    if SPLIT_K == 1:
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(y_ptrs, acc, mask=mask)


def gemm(
    x: torch.Tensor, layout: KernelLayout, config: GemmConfig, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``x (M, in) -> (M, out)`` in x's dtype (float16 or bfloat16); the caller has checked the format.

    ``out`` (used when split_k is 1: contiguous ``(M, out)`` in x's dtype) receives the result.
    """
    out_features, in_features = layout.shape
    x = x.contiguous()
    rows = x.shape[0]
    block_k = min(config.block_k, layout.group_size)
    split_k = max(1, min(config.split_k, in_features // block_k))
    if split_k == 1:
        y = torch.empty(rows, out_features, dtype=x.dtype, device=x.device) if out is None else out
    else:
        y = torch.zeros(rows, out_features, dtype=torch.float32, device=x.device)
    p0 = layout.planes[0]
    p1 = layout.planes[1] if len(layout.planes) > 1 else p0
    widths = layout.plane_bits
    mins = layout.mins if layout.mins is not None else layout.scales
    grid = (triton.cdiv(rows, config.block_m), triton.cdiv(out_features, config.block_n), split_k)
    _gemm_kernel[grid](
        x,
        p0,
        p1,
        layout.scales,
        mins,
        y,
        rows,
        out_features,
        in_features,
        x.stride(0),
        y.stride(0),
        p0.stride(0),
        p1.stride(0),
        layout.scales.stride(0),
        BITS=layout.bits,
        B0=widths[0],
        B1=widths[1] if len(widths) > 1 else 0,
        GROUP=layout.group_size,
        SYM=int(layout.symmetric),
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        BLOCK_K=block_k,
        SPLIT_K=split_k,
        UNPACK=config.unpack,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return y.to(x.dtype)
