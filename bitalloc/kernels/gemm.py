"""GEMM for batch 2-256: ``y (M, out) = x (M, in) W^T`` on the tensor cores, optional split-K.

Each K step is one interleave chunk (``layout.chunk`` inputs, inside one group). The chunk's words are
unpacked by shifts into a ``(chunk, BLOCK_N)`` code tile (rows in the layout's order; the activations are
loaded contiguously and permuted to that order in registers), converted exactly to
float16/bfloat16 (codes are below 256) and multiplied on the tensor cores; the group's scale and offset
are folded into the float32 accumulator: ``acc += (x q) * scale + rowsum(x) * offset``.
SPLIT_K > 1 adds the partial results atomically into a zeroed output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from bitalloc.kernels._unpack import load_group, plane_tile
from bitalloc.kernels.layout import KernelLayout


@dataclass(frozen=True)
class GemmConfig:
    """Launch parameters of the GEMM kernel (the K step is the layout's chunk)."""

    block_m: int = 16
    block_n: int = 64
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3


@triton.jit
def _to_float(q, dtype: tl.constexpr):
    """Codes (< 256) to float16 exactly without the quarter-rate I2F: 0x6400 | q is 1024 + q; bf16 casts."""
    if dtype == tl.float16:
        return (q | 0x6400).to(tl.int16).to(tl.float16, bitcast=True) - 1024.0
    else:
        return q.to(dtype)


@triton.jit
def _gemm_kernel(
    x_ptr,
    a_ptr,
    b_ptr,
    s_ptr,
    m_ptr,
    y_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_ym,
    stride_a,
    QOFF,
    NA: tl.constexpr,
    BA: tl.constexpr,
    SA: tl.constexpr,
    BB: tl.constexpr,
    SB: tl.constexpr,
    GROUP: tl.constexpr,
    HAS_MIN: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SPLIT_K,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    offs_k = tl.arange(0, CHUNK)  # (CHUNK,)
    mask_m = offs_m < M
    mask_n = offs_n < N
    n_blocks = K // CHUNK
    kb_start = pid_k * n_blocks // SPLIT_K
    kb_end = (pid_k + 1) * n_blocks // SPLIT_K
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(kb_start, kb_end):
        k0 = kb * CHUNK
        x = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + (k0 + offs_k)[None, :], mask=mask_m[:, None], other=0.0
        )  # (BLOCK_M, CHUNK) natural order, contiguous loads
        x = tl.reshape(tl.permute(tl.reshape(x, (BLOCK_M, CHUNK // 2, 2)), (0, 2, 1)), (BLOCK_M, CHUNK))
        # column c of x now holds input chunk_input(c): the order of plane_tile's rows
        q = plane_tile(a_ptr, offs_n, mask_n, N, k0, CHUNK, BLOCK_N, BA) << SA  # (CHUNK, BLOCK_N)
        for i in tl.static_range(1, NA):  # further stacked planes (nested format)
            q = q | (
                plane_tile(a_ptr + i * stride_a, offs_n, mask_n, N, k0, CHUNK, BLOCK_N, BA) << (SA - i * BA)
            )
        if BB > 0:
            q = q | (plane_tile(b_ptr, offs_n, mask_n, N, k0, CHUNK, BLOCK_N, BB) << SB)
        d = tl.dot(x, _to_float(q, x.dtype))  # (BLOCK_M, BLOCK_N) float32, codes < 256 exact
        g = tl.full((1,), k0 // GROUP, tl.int32)
        scale, offset = load_group(s_ptr, m_ptr, g, offs_n, mask_n, N, QOFF, HAS_MIN)  # (1, BLOCK_N)
        xsum = tl.sum(x.to(tl.float32), axis=1)  # (BLOCK_M,)
        acc += d * scale + xsum[:, None] * offset
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    if SPLIT_K == 1:
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask, sem="relaxed")


def gemm(
    x: torch.Tensor, layout: KernelLayout, config: GemmConfig, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``x (M, in) -> (M, out)`` in x's dtype (float16 or bfloat16); the caller has checked the format.

    ``out`` (contiguous ``(M, out)`` in x's dtype) receives the result when given.
    """
    out_features, in_features = layout.shape
    x = x.contiguous()
    rows = x.shape[0]
    split_k = max(1, min(config.split_k, in_features // layout.chunk))
    y = torch.empty(rows, out_features, dtype=x.dtype, device=x.device) if out is None else out
    result = y
    if split_k > 1:  # atomics add into zeros: float16 directly, bfloat16 through a float32 buffer
        y = y.zero_() if x.dtype == torch.float16 else torch.zeros_like(y, dtype=torch.float32)
    b = layout.b if layout.b is not None else layout.a
    mins = layout.mins if layout.mins is not None else layout.scales
    grid = (triton.cdiv(rows, config.block_m), triton.cdiv(out_features, config.block_n), split_k)
    _gemm_kernel[grid](
        x,
        layout.a,
        b,
        layout.scales,
        mins,
        y,
        rows,
        out_features,
        in_features,
        x.stride(0),
        y.stride(0),
        layout.a.stride(0),
        layout.qoff,
        NA=layout.a.shape[0],
        BA=layout.bits_a,
        SA=layout.shift_a,
        BB=layout.bits_b,
        SB=layout.shift_b,
        GROUP=layout.group_size,
        HAS_MIN=layout.mins is not None,
        CHUNK=layout.chunk,
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        SPLIT_K=split_k,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    if y.data_ptr() != result.data_ptr():
        result.copy_(y)
    return result
