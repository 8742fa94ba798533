"""GEMV for batch 1: ``y (1, out) = x (1, in) W^T`` on the interleaved layout, fp32 accumulation.

Each program owns BLOCK_N outputs and a 1/SPLIT_K slice of the inputs. Per BLOCK_K step it streams the
``(BLOCK_K * b / 32, BLOCK_N)`` word tile of every plane (coalesced along the outputs), turns each field
into a float with one AND/OR and one subtraction (``_unpack.plane_dot``), and keeps a ``(words, BLOCK_N)``
float32 accumulator: per word ``acc += scale * sum_j q_j x_j + offset * sum_j x_j`` (the dequantization
costs two multiply-adds per word, not per weight). The accumulator is reduced once at the end.
SPLIT_K > 1 adds the partial results atomically into a zeroed output.

Float16 activations on 2, 3, 4 or 8-bit weights run ``gemv_h2.py`` instead (packed f16x2 arithmetic, about
half the instructions per weight); this kernel serves bfloat16, the nested format and 5/6 bits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from bitalloc.kernels._pdl import pdl_launch
from bitalloc.kernels._unpack import load_group, plane_dot, plane_dot3
from bitalloc.kernels.gemv_h2 import HALF2_R, gemv_h2_kernel
from bitalloc.kernels.layout import KernelLayout
from bitalloc.kernels.row_norm import RowNorm, row_block

FP32_MAX_BLOCK_N = 64  # the float32-path kernel spills beyond (configs tuned for the f16x2 kernel go wider)
# l2_slice only for weights that L2 (50 MB on H100/H200) holds beside what else is in flight: on the H200 the
# slice prefetch took 0.85-1.07x the time at <= 16.5 MB (median 0.95), 1.08-1.36x at >= 17 MB (BENCHMARKS.md)
L2_SLICE_MAX_BYTES = 16 << 20


@dataclass(frozen=True)
class GemvConfig:
    """Launch parameters of the GEMV kernel (block_k is rounded down to fit the input dimension)."""

    block_n: int = 64
    block_k: int = 256
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3
    half2: int = 1  # float16 activations at 2/3/4/8 bits take the f16x2 kernel (gemv_h2.py)
    prefetch: int = 1  # f16x2 kernel: load the next step before this step's arithmetic
    xs_rows: int = 0  # f16x2 kernel: activation sums per thread's rows (no cross-warp sum per step)
    l2_slice: int = 0  # f16x2 kernel with PDL, weights <= 16 MiB: ask L2 for the slice before the wait


@triton.jit
def _gemv_kernel(
    x_ptr,
    a_ptr,
    b_ptr,
    s_ptr,
    m_ptr,
    y_ptr,
    N,
    K,
    stride_a,
    QOFF,
    ONES,
    NA: tl.constexpr,
    BA: tl.constexpr,
    SA: tl.constexpr,
    BB: tl.constexpr,
    SB: tl.constexpr,
    GROUP: tl.constexpr,
    HAS_MIN: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K,
    ATOMIC: tl.constexpr,
    PDL: tl.constexpr,
):
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    mask_n = offs_n < N
    WKA: tl.constexpr = BLOCK_K * BA // 32
    WPA: tl.constexpr = CHUNK * BA // 32
    MERGE3: tl.constexpr = (BA == 2) and (BB == 1) and (NA == 1)
    n_blocks = K // BLOCK_K
    kb_start = pid_k * n_blocks // SPLIT_K
    kb_end = (pid_k + 1) * n_blocks // SPLIT_K
    acc = tl.zeros((WKA, BLOCK_N), dtype=tl.float32)
    if BB > 0:
        WKB: tl.constexpr = BLOCK_K * BB // 32
        WPB: tl.constexpr = CHUNK * BB // 32
        acc_b = tl.zeros((WKB, BLOCK_N), dtype=tl.float32)
    for kb in range(kb_start, kb_end):
        k0 = kb * BLOCK_K
        rows_a = (k0 + (tl.arange(0, WKA) // WPA) * CHUNK) // GROUP  # (WKA,) group of each word
        scale, offset = load_group(s_ptr, m_ptr, rows_a, offs_n, mask_n, N, QOFF, HAS_MIN)
        if MERGE3:  # 3-bit: both planes merged into 4-bit-stride words
            dot, xsum = plane_dot3(a_ptr, b_ptr, x_ptr, offs_n, mask_n, N, k0, ONES, WKA, WPA, CHUNK)
        else:
            dot, xsum = plane_dot(a_ptr, x_ptr, offs_n, mask_n, N, k0, ONES, WKA, WPA, CHUNK, BA)
        if SA > 0:
            dot = dot * (1 << SA)
        for i in tl.static_range(1, NA):  # further stacked planes (nested format)
            d_i, _ = plane_dot(a_ptr + i * stride_a, x_ptr, offs_n, mask_n, N, k0, ONES, WKA, WPA, CHUNK, BA)
            dot += d_i * (1 << (SA - i * BA))
        acc += scale * dot + offset * xsum[:, None]
        if BB > 0 and not MERGE3:
            rows_b = (k0 + (tl.arange(0, WKB) // WPB) * CHUNK) // GROUP  # (WKB,)
            scale_b, _ = load_group(s_ptr, m_ptr, rows_b, offs_n, mask_n, N, 0.0, False)
            dot_b, _ = plane_dot(b_ptr, x_ptr, offs_n, mask_n, N, k0, ONES, WKB, WPB, CHUNK, BB)
            acc_b += scale_b * dot_b * (1 << SB)
    y = tl.sum(acc, axis=0)  # (BLOCK_N,)
    if BB > 0 and not MERGE3:
        y += tl.sum(acc_b, axis=0)
    if ATOMIC:  # split-K partial sums, or a result added to what the output holds
        tl.atomic_add(y_ptr + offs_n, y.to(y_ptr.dtype.element_ty), mask=mask_n, sem="relaxed")
    else:
        tl.store(y_ptr + offs_n, y.to(y_ptr.dtype.element_ty), mask=mask_n)


def slice_prefetch_on(config: GemvConfig, pdl: bool, weight_bytes: int) -> bool:
    """Whether the f16x2 GEMV asks L2 for each program's slice before the PDL wait: asked for, launched with
    PDL (no wait to fill otherwise) and weights that L2 holds (``L2_SLICE_MAX_BYTES``)."""
    return bool(config.l2_slice) and pdl and weight_bytes <= L2_SLICE_MAX_BYTES


def folds_norm(x: torch.Tensor, layout: KernelLayout, config: GemvConfig, norm: RowNorm) -> bool:
    """Whether ``gemv`` takes ``norm`` inside (the f16x2 kernel, a weightless norm, float16 pairs at a
    4-byte-aligned address); otherwise the standalone norm runs first."""
    return norm.unit and _half2(x, layout, config) and x.data_ptr() % 4 == 0


def _half2(x: torch.Tensor, layout: KernelLayout, config: GemvConfig) -> bool:
    """Whether the call runs the f16x2 kernel: float16 activations, one plane, its bit widths."""
    one_plane = layout.a.shape[0] == 1 and layout.bits in HALF2_R
    return bool(config.half2) and x.dtype == torch.float16 and one_plane


def gemv(
    x: torch.Tensor,
    layout: KernelLayout,
    config: GemvConfig,
    out: torch.Tensor | None = None,
    accumulate: bool = False,
    pdl: bool = False,
    norm: RowNorm | None = None,
) -> torch.Tensor:
    """``x (in,) or (1, in) -> (1, out)`` in x's dtype; the caller has checked the format and shapes.

    ``out`` (contiguous, x's dtype, ``out`` elements) receives the result when given; with ``accumulate``
    the result is added to what ``out`` holds (a fused residual add: no zeroing, no extra launch). ``pdl``:
    launched with programmatic dependent launch (``_pdl.py``; the caller checks ``pdl_supported``).
    ``norm``: ``x`` is the raw row of an RMSNorm; the f16x2 kernel folds a weightless one in
    (``row_norm.py``), other paths read the normed row that the standalone kernel writes to ``norm.dest``.
    """
    if accumulate and out is None:
        raise ValueError("gemv: accumulate=True adds into an output, pass out=")
    out_features, in_features = layout.shape
    h2 = _half2(x, layout, config)
    if norm is not None:
        norm.check(x)
        if not folds_norm(x, layout, config, norm):  # the standalone norm first
            x, norm = norm.apply(x, pdl), None
    x = x.reshape(-1).contiguous()  # (in,)
    block_k = layout.chunk
    if not h2:
        block_k = max(layout.chunk, 1 << (min(config.block_k, in_features).bit_length() - 1))
        while in_features % block_k:
            block_k //= 2
    split_k = max(1, min(config.split_k, in_features // block_k))
    y = torch.empty(out_features, dtype=x.dtype, device=x.device) if out is None else out.view(-1)
    result = y
    atomic = split_k > 1 or accumulate
    if atomic and x.dtype != torch.float16:  # bfloat16: atomics add in a float32 buffer
        y = torch.zeros_like(y, dtype=torch.float32)
    elif split_k > 1 and not accumulate:
        y.zero_()
    b = layout.b if layout.b is not None else layout.a
    mins = layout.mins if layout.mins is not None else layout.scales
    block_n = config.block_n if h2 else min(config.block_n, FP32_MAX_BLOCK_N)
    grid = (triton.cdiv(out_features, block_n), split_k)
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if h2:
        if x.data_ptr() % 4:
            x = x.clone()  # int32 pairs need 4-byte alignment
        gemv_h2_kernel[grid](
            x,
            x.view(torch.int32),
            layout.a,
            b,
            layout.scales,
            mins,
            y,
            0.0 if norm is None else norm.eps,
            out_features,
            in_features,
            layout.qoff,
            BITS=layout.bits,
            GROUP=layout.group_size,
            HAS_MIN=layout.mins is not None,
            CHUNK=layout.chunk,
            BLOCK_N=config.block_n,
            SPLIT_K=split_k,
            R=HALF2_R[layout.bits],
            PREFETCH=bool(config.prefetch),
            XS_ROWS=bool(config.xs_rows),
            ASM=not interpret,
            SELF_L2=slice_prefetch_on(config, pdl, layout.nbytes),
            ATOMIC=atomic,
            PDL=pdl,
            NORM=norm is not None,
            ROW_BLOCK=1 if norm is None else row_block(in_features),
            num_warps=config.num_warps,
            num_stages=1,
            **pdl_launch(pdl),
        )
        return result.view(1, out_features)
    _gemv_kernel[grid](
        x,
        layout.a,
        b,
        layout.scales,
        mins,
        y,
        out_features,
        in_features,
        layout.a.stride(0),
        layout.qoff,
        255,
        NA=layout.a.shape[0],
        BA=layout.bits_a,
        SA=layout.shift_a,
        BB=layout.bits_b,
        SB=layout.shift_b,
        GROUP=layout.group_size,
        HAS_MIN=layout.mins is not None,
        CHUNK=layout.chunk,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        SPLIT_K=split_k,
        ATOMIC=atomic,
        PDL=pdl,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
        **pdl_launch(pdl),
    )
    if y.data_ptr() != result.data_ptr():
        result.add_(y) if accumulate else result.copy_(y)
    return result.view(1, out_features)
