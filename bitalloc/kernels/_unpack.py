"""Triton helpers shared by the GEMV and GEMM kernels: unpack bit planes and load group parameters."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def unpack_plane(
    ptr, offs_n, mask_n, stride_n, k0, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, B: tl.constexpr
):
    """Codes of one plane of width B, rows offs_n, inputs [k0, k0 + BLOCK_K): (BLOCK_N, BLOCK_K) int32."""
    PER_WORD: tl.constexpr = 32 // B
    offs_w = k0 // PER_WORD + tl.arange(0, BLOCK_K // PER_WORD)  # (BLOCK_K/PER_WORD,)
    words = tl.load(ptr + offs_n[:, None] * stride_n + offs_w[None, :], mask=mask_n[:, None], other=0)
    shifts = tl.arange(0, PER_WORD) * B  # (PER_WORD,)
    vals = (words[:, :, None] >> shifts[None, None, :]) & (
        (1 << B) - 1
    )  # (BLOCK_N, BLOCK_K/PER_WORD, PER_WORD)
    return tl.reshape(vals, (BLOCK_N, BLOCK_K))


@triton.jit
def load_codes(
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
    """Codes of the (BLOCK_N, BLOCK_K) tile from one or two planes (B1 == 0: one plane)."""
    q = unpack_plane(p0_ptr, offs_n, mask_n, stride_p0, k0, BLOCK_N, BLOCK_K, B0)
    if B1 > 0:
        q = q | (unpack_plane(p1_ptr, offs_n, mask_n, stride_p1, k0, BLOCK_N, BLOCK_K, B1) << B0)
    return q


@triton.jit
def load_group(s_ptr, m_ptr, offs_n, mask_n, stride_s, g, BITS: tl.constexpr, SYM):
    """Scale and offset of group g for rows offs_n, float32: w = scale * q + offset."""
    scale = tl.load(s_ptr + offs_n * stride_s + g, mask=mask_n, other=0.0).to(tl.float32)
    if SYM:
        offset = -scale * (1 << (BITS - 1))
    else:
        offset = tl.load(m_ptr + offs_n * stride_s + g, mask=mask_n, other=0.0).to(tl.float32)
    return scale, offset


@triton.jit
def gather_plane(ptr, offs_n, mask_n, stride_n, offs_k, B: tl.constexpr, TRANS: tl.constexpr):
    """Codes of one plane read word by word (each word once per code it holds, no reshape).

    Returns (BLOCK_N, BLOCK_K) int32, or (BLOCK_K, BLOCK_N) when TRANS.
    """
    PER_WORD: tl.constexpr = 32 // B
    word = offs_k // PER_WORD  # (BLOCK_K,)
    shift = (offs_k % PER_WORD) * B  # (BLOCK_K,)
    if TRANS:
        words = tl.load(ptr + offs_n[None, :] * stride_n + word[:, None], mask=mask_n[None, :], other=0)
        return (words >> shift[:, None]) & ((1 << B) - 1)
    else:
        words = tl.load(ptr + offs_n[:, None] * stride_n + word[None, :], mask=mask_n[:, None], other=0)
        return (words >> shift[None, :]) & ((1 << B) - 1)


@triton.jit
def gather_codes(
    p0_ptr,
    p1_ptr,
    offs_n,
    mask_n,
    stride_p0,
    stride_p1,
    offs_k,
    B0: tl.constexpr,
    B1: tl.constexpr,
    TRANS: tl.constexpr,
):
    """Codes of a tile from one or two planes via ``gather_plane`` (B1 == 0: one plane)."""
    q = gather_plane(p0_ptr, offs_n, mask_n, stride_p0, offs_k, B0, TRANS)
    if B1 > 0:
        q = q | (gather_plane(p1_ptr, offs_n, mask_n, stride_p1, offs_k, B1, TRANS) << B0)
    return q
